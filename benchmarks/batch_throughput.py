"""Batch throughput: questions/hour and tokens/s for 1, 2, 4 and 8 concurrent agent sessions sharing one
embedded model (SmolLM2 unless ``--model``), over the HotpotQA corpus in a temporary home.

Each level runs a batch job (``deepscout.batch.batch_api.run_batch``, local executor) of
``--per-session`` questions per session, distinct questions per level so that no level reuses another's
prompts. The model is loaded once and shared by every level. Reported per level: wall time, questions/hour,
throughput relative to one session, prompt tokens prefilled (computed) and reused from a cache (the
prefix-reuse ratio), output tokens/s, and failed records (must be 0).

    python benchmarks/batch_throughput.py [--sessions 1 2 4 8] [--per-session 2] [--max-steps 1]

Prints a table and writes benchmarks/results/batch_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.batch.batch_api import run_batch
from deepscout.batch.batch_options import BatchOptions
from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.ingest import read_hotpotqa
from deepscout.model_runtime.chat import ChatModel, load_chat_model
from deepscout.model_runtime.chat.backends.smollm2 import fetch_smollm2
from deepscout.process import configure_process
from deepscout.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "batch_throughput.json"
HOTPOTQA = Path(os.environ.get("DEEPSCOUT_HOTPOTQA_DIR", REPO.parent / "shared" / "data" / "hotpotqa"))


def level(
    settings: Settings, model: ChatModel, sessions: int, questions: list[str], max_steps: int, folder: Path
) -> dict[str, Any]:
    source = folder / f"questions-{sessions}.jsonl"
    source.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    options = BatchOptions(
        research=ResearchOptions(budgets=Budgets(max_steps=max_steps)), concurrency=sessions
    )
    started = time.perf_counter()
    outcome = run_batch(
        source, out_dir=folder / f"out-{sessions}", settings=settings, options=options, model=model
    )
    wall = time.perf_counter() - started
    totals = outcome.totals
    assert totals is not None
    tokens = totals.tokens
    return {
        "sessions": sessions,
        "questions": len(questions),
        "wall_s": round(wall, 2),
        "questions_per_hour": round(len(questions) * 3600 / wall, 1),
        "prompt_tokens": tokens["prompt_tokens"],
        "computed_tokens": tokens["computed_tokens"],
        "reused_tokens": tokens["reused_tokens"],
        "reuse_ratio": round(totals.reuse_ratio, 3),
        "output_tokens": tokens["output_tokens"],
        "prefill_tokens_per_s": round(tokens["computed_tokens"] / wall, 1),
        "output_tokens_per_s": round(tokens["output_tokens"] / wall, 2),
        "failed": totals.failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--per-session", type=int, default=2, help="Questions per session at each level.")
    parser.add_argument("--max-steps", type=int, default=1)
    parser.add_argument("--model", default=None, help="Chat model spec (default: Settings.model).")
    args = parser.parse_args()
    configure_process()
    shared = Settings()
    spec = args.model or shared.model
    if spec == "smollm2":
        fetch_smollm2(shared, quiet=True)
    questions = [item["question"] for item in json.loads((HOTPOTQA / "hotpotqa_train.json").read_text())]
    rows = []
    with tempfile.TemporaryDirectory(prefix="deepscout-batch-throughput-") as home:
        settings = Settings(home=Path(home), cache_dir=shared.cache_dir, model=spec)
        database = open_database(settings)
        CorpusIndex(database.session_factory).add(
            read_hotpotqa(HOTPOTQA / "hotpotqa_train_corpus.json"), collection="hotpotqa"
        )
        database.dispose()
        model = load_chat_model(spec, settings=settings)
        offset = 0
        for sessions in args.sessions:
            count = sessions * args.per_session
            batch = questions[offset : offset + count]
            offset += count
            rows.append(level(settings, model, sessions, batch, args.max_steps, Path(home)))
    base = rows[0]["questions_per_hour"] or 1e-9
    print(
        f"{'sessions':>8} {'questions':>9} {'wall s':>8} {'q/hour':>8} {'x1':>5} {'reuse':>6} "
        f"{'prefill tok/s':>13} {'output tok/s':>12} {'failed':>6}"
    )
    for row in rows:
        row["speedup"] = round(row["questions_per_hour"] / base, 2)
        print(
            f"{row['sessions']:>8} {row['questions']:>9} {row['wall_s']:>8} {row['questions_per_hour']:>8} "
            f"{row['speedup']:>5} {row['reuse_ratio']:>6} {row['prefill_tokens_per_s']:>13} "
            f"{row['output_tokens_per_s']:>12} {row['failed']:>6}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "model": spec,
                "max_steps": args.max_steps,
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "load_average_at_end": os.getloadavg(),
                "levels": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
