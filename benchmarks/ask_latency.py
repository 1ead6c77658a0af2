"""Latency of ``deepscout ask`` on the embedded default (SmolLM2-135M) over the HotpotQA corpus.

For the first N HotpotQA questions (one model loaded once, as ``deepscout ask`` would per process), the
agent runs with a short budget over the 994-passage HotpotQA corpus in a temporary home. Reported per
question: time to first answer token (run start → first streamed token of the answer), total time,
model tokens prefilled vs reused from the session cache per agent step, and peak RSS of the process.

    python benchmarks/ask_latency.py [--n 5] [--max-steps 2] [--wall-time 240]

Prints a table and writes benchmarks/results/ask_latency.json.
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

from deepscout.agent.api import research
from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.ingest import read_hotpotqa
from deepscout.model_runtime.chat import load_chat_model
from deepscout.model_runtime.chat.backends.smollm2 import fetch_smollm2
from deepscout.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ask_latency.json"
HOTPOTQA = Path(os.environ.get("DEEPSCOUT_HOTPOTQA_DIR", REPO.parent / "shared" / "data" / "hotpotqa"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_question(
    question: str, settings: Settings, model: Any, database: Any, budgets: Budgets
) -> dict[str, Any]:
    started = time.monotonic()
    first_answer_token: list[float] = []

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "answer_token" and not first_answer_token:
            first_answer_token.append(time.monotonic() - started)

    result = research(
        question,
        settings=settings,
        options=ResearchOptions(budgets=budgets),
        model=model,
        database=database,
        on_event=on_event,
    )
    total = time.monotonic() - started
    steps = [
        {
            "node": step["node"],
            "round": step["step"],
            "seconds": step["seconds"],
            "prompt_tokens": step["prompt_tokens"],
            "prefilled": step["computed_tokens"],
            "reused": step["reused_tokens"],
            "written": step["output_tokens"],
            "first_token_s": step["first_token_s"],
        }
        for step in result.trace
        if step["prompt_tokens"]
    ]
    return {
        "question": question,
        "answer": result.answer,
        "status": result.status,
        "stop_reason": result.stop_reason,
        "citations": [c.n for c in result.citations],
        "sources": [s["title"] for s in result.sources],
        "ttft_answer_s": round(first_answer_token[0], 3) if first_answer_token else None,
        "total_s": round(total, 3),
        "steps": steps,
        "prefilled": sum(s["prefilled"] for s in steps),
        "reused": sum(s["reused"] for s in steps),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=2)
    parser.add_argument("--wall-time", type=float, default=240.0)
    args = parser.parse_args()

    shared = Settings()
    fetch_smollm2(shared, quiet=True)
    questions = json.loads((HOTPOTQA / "hotpotqa_train.json").read_text())[: args.n]
    with tempfile.TemporaryDirectory(prefix="deepscout-bench-") as home:
        settings = Settings(home=Path(home), cache_dir=shared.cache_dir)
        database = open_database(settings)
        CorpusIndex(database.session_factory).add(
            read_hotpotqa(HOTPOTQA / "hotpotqa_train_corpus.json"), collection="hotpotqa"
        )
        loaded = time.monotonic()
        model = load_chat_model("smollm2", settings=settings)
        load_s = time.monotonic() - loaded
        budgets = Budgets(max_steps=args.max_steps, wall_time_s=args.wall_time)
        rows = [run_question(q["question"], settings, model, database, budgets) for q in questions]
        database.dispose()

    print(f"model load {load_s:.1f} s; budgets: {args.max_steps} rounds, {args.wall_time:.0f} s wall time")
    print(
        f"{'#':>2} {'TTFT s':>7} {'total s':>8} {'prefilled':>9} {'reused':>7} {'RSS MiB':>8}  stop / status"
    )
    for i, row in enumerate(rows, 1):
        ttft = "-" if row["ttft_answer_s"] is None else f"{row['ttft_answer_s']:.1f}"
        print(
            f"{i:>2} {ttft:>7} {row['total_s']:>8.1f} {row['prefilled']:>9} {row['reused']:>7} "
            f"{row['peak_rss_mib']:>8.0f}  {row['stop_reason']} / {row['status']}"
        )
    print("\nper step: node(round) prompt tokens = prefilled + reused, seconds")
    for i, row in enumerate(rows, 1):
        cells = [
            f"{s['node']}({s['round']}) {s['prompt_tokens']}={s['prefilled']}+{s['reused']} "
            f"{s['seconds']:.1f}s"
            for s in row["steps"]
        ]
        print(f"{i:>2} " + " | ".join(cells))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "load_average": os.getloadavg(),
                },
                "model": "smollm2",
                "model_load_s": round(load_s, 2),
                "budgets": budgets.model_dump(),
                "questions": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
