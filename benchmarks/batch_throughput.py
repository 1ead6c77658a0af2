"""Batch throughput: questions/hour and tokens/s for 1, 2, 4 and 8 concurrent agent sessions sharing one
embedded model (SmolLM2 unless ``--model``), over the HotpotQA corpus in a temporary home.

Each level runs a batch job (``deepscout.batch.batch_api.run_batch``, local executor) of the SAME
``--questions`` questions at its concurrency, with the agent's default step budget and a wall-time budget
(``--wall-time-s``) long enough that no run is cut short, so every level does the same work (greedy
decoding: the same prompt and output tokens). The model is loaded once; its KV sessions are cleared
before each level, so no level reuses another's cache. Reported per
level: wall time, questions/hour, throughput relative to one session, prompt tokens prefilled (computed)
and reused from a cache (the prefix-reuse ratio), output tokens/s, failed records (must be 0) and, for an
embedded HF model, the seconds its thread spent in prefill forwards, in decode forwards, and the rest of
the wall time (agent, tools, grammar, sampling, waiting). Other people's work on a shared machine shows
as the process's CPU seconds falling short of the cores × wall time, and in the load averages recorded.

The ceiling of a level of N sessions is what Amdahl's law allows from the one-session breakdown (per
question: prefill P, decode D, other O): prefill is compute-bound on all cores, so N questions still
need N·P; decode batches perfectly (N rows for the time of one) and the other work overlaps fully, so
N questions take at least max(N·P + D, P + D + O) and the speed-up is at most N·(P + D + O) / that.

    python benchmarks/batch_throughput.py [--sessions 1 2 4 8] [--questions 8] [--max-steps 3]
        [--wall-time-s 3600]

Prints a table and writes benchmarks/results/batch_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
from deepscout.model_runtime.chat.backends.embedded_hf import EmbeddedHFChatModel
from deepscout.model_runtime.chat.backends.hf_batch import ForwardTimes
from deepscout.model_runtime.chat.backends.smollm2 import fetch_smollm2
from deepscout.process import configure_process
from deepscout.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "batch_throughput.json"
HOTPOTQA = Path(os.environ.get("DEEPSCOUT_HOTPOTQA_DIR", REPO.parent / "shared" / "data" / "hotpotqa"))
DEFAULT_MAX_STEPS = Budgets.model_fields["max_steps"].default


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def level(
    settings: Settings, model: ChatModel, sessions: int, questions: list[str], budgets: Budgets, folder: Path
) -> dict[str, Any]:
    source = folder / f"questions-{sessions}.jsonl"
    source.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    options = BatchOptions(research=ResearchOptions(budgets=budgets), concurrency=sessions)
    generator = model.generator if isinstance(model, EmbeddedHFChatModel) else None
    if generator is not None:
        generator.pool.clear()
    before = generator.forward_times() if generator is not None else ForwardTimes()
    load_before, cpu_before = os.getloadavg()[0], cpu_seconds()
    started = time.perf_counter()
    outcome = run_batch(
        source, out_dir=folder / f"out-{sessions}", settings=settings, options=options, model=model
    )
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    spent = generator.forward_times().minus(before) if generator is not None else ForwardTimes()
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
        "prefill_s": round(spent.prefill_seconds, 2),
        "decode_s": round(spent.decode_seconds, 2),
        "other_s": round(wall - spent.prefill_seconds - spent.decode_seconds, 2),
        "decode_steps": spent.decode_steps,
        "rows_per_step": round(spent.decode_tokens / max(spent.decode_steps, 1), 2),
        "cpu_s": round(cpu, 1),
        "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "failed": totals.failed,
    }


TABLE = [
    ("sessions", "sessions", 8),
    ("wall s", "wall_s", 7),
    ("q/hour", "questions_per_hour", 7),
    ("x1", "speedup", 5),
    ("ceil", "ceiling", 5),
    ("prompt tok", "prompt_tokens", 10),
    ("out tok", "output_tokens", 7),
    ("reuse", "reuse_ratio", 5),
    ("prefill s", "prefill_s", 9),
    ("decode s", "decode_s", 8),
    ("other s", "other_s", 7),
    ("rows/step", "rows_per_step", 9),
    ("cpu s", "cpu_s", 6),
    ("failed", "failed", 6),
]
"""The printed columns: title, key of a level's row, width."""


def ceiling(base: dict[str, Any], sessions: int) -> float:
    """The most ``sessions`` can speed up over ``base`` (one session) by Amdahl's law; see the docstring."""
    per_question = {key: base[key] / base["questions"] for key in ("prefill_s", "decode_s", "other_s")}
    alone = sum(per_question.values())
    together = max(sessions * per_question["prefill_s"] + per_question["decode_s"], alone)
    return round(sessions * alone / together, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--questions", type=int, default=8, help="Questions of every level (the same ones).")
    parser.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS)
    parser.add_argument("--wall-time-s", type=float, default=3600.0, help="Wall-time budget of each run.")
    parser.add_argument("--model", default=None, help="Chat model spec (default: Settings.model).")
    args = parser.parse_args()
    configure_process()
    shared = Settings()
    spec = args.model or shared.model
    if spec == "smollm2":
        fetch_smollm2(shared, quiet=True)
    items = json.loads((HOTPOTQA / "hotpotqa_train.json").read_text())
    questions = [item["question"] for item in items[: args.questions]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="deepscout-batch-throughput-") as home:
        settings = Settings(home=Path(home), cache_dir=shared.cache_dir, model=spec)
        database = open_database(settings)
        CorpusIndex(database.session_factory).add(
            read_hotpotqa(HOTPOTQA / "hotpotqa_train_corpus.json"), collection="hotpotqa"
        )
        database.dispose()
        model = load_chat_model(spec, settings=settings)
        budgets = Budgets(max_steps=args.max_steps, wall_time_s=args.wall_time_s)
        for sessions in args.sessions:
            rows.append(level(settings, model, sessions, questions, budgets, Path(home)))
    base = rows[0]
    for row in rows:
        row["speedup"] = round(row["questions_per_hour"] / (base["questions_per_hour"] or 1e-9), 2)
        row["ceiling"] = ceiling(base, row["sessions"]) if base["sessions"] == 1 else None
    print(f"{len(questions)} questions per level, max_steps {args.max_steps}")
    print(" ".join(f"{title:>{width}}" for title, _, width in TABLE))
    for row in rows:
        print(" ".join(f"{'-' if row[key] is None else row[key]:>{width}}" for _, key, width in TABLE))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "model": spec,
                "questions_per_level": len(questions),
                "max_steps": args.max_steps,
                "wall_time_s": args.wall_time_s,
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
