"""Agentic search vs the RAG baseline on HotpotQA questions, with the embedded default model as both the
systems' model and the pairwise judge (issue 6's reproduction of the DeepSeek-V4 paper's comparison, at
the scale a 2-core CPU allows).

Runs the eval harness (``deepscout.evals.runner``) on the first N questions of the shared HotpotQA set,
writes the report (Markdown + self-contained HTML + PNG charts), prints its tables (pairwise win/loss/tie
with intervals, objective scores, evidence recall, judge calibration, cost per question), then the
evidence table the agent is held to: the agent, the RAG baseline, and single-shot retrieval of the
question at top-5/10/20 (same retriever, same corpus snapshot), and writes
benchmarks/results/eval_hotpotqa.json. Everything lives in its own DEEPSCOUT_HOME under
benchmarks/results/ (the user's data is not touched); the model cache is the usual one. The runner stores
every answer and verdict as it comes, so rerunning the same command continues an interrupted run.

    python benchmarks/eval_hotpotqa.py [--limit 20] [--hotpotqa DIR] [--model smollm2] [--judge none]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deepscout.agent.options import Budgets
from deepscout.evals.evidence_table import evidence_rows, evidence_table
from deepscout.evals.report import write_report
from deepscout.evals.runner import EvalOptions, run_eval
from deepscout.evals.store import load_run
from deepscout.memory.db import open_database
from deepscout.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
RESULTS = RESULTS_DIR / "eval_hotpotqa.json"
WORK_DIR = RESULTS_DIR / "eval_hotpotqa"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=20, help="Questions (the first N of the set).")
    parser.add_argument(
        "--hotpotqa",
        type=Path,
        default=REPO.parent / "shared" / "data" / "hotpotqa",
        help="Folder with hotpotqa_train.json and its corpus.",
    )
    parser.add_argument("--model", default="smollm2", help="Chat model spec of both systems.")
    parser.add_argument(
        "--judge", default=None, help="Judge model spec (default: the same model; none: no pairwise judge)."
    )
    defaults = Budgets()
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="Agent search rounds.")
    parser.add_argument(
        "--max-documents", type=int, default=defaults.max_documents, help="Documents the agent reads."
    )
    parser.add_argument(
        "--max-tool-calls", type=int, default=defaults.max_tool_calls, help="Agent tool calls."
    )
    parser.add_argument("--wall-time", type=float, default=120.0, help="Seconds per question and system.")
    parser.add_argument("--retrieval", default="bm25", help="bm25, dense or hybrid (all systems).")
    parser.add_argument(
        "--model-queries",
        type=int,
        default=EvalOptions.model_queries,
        help="Queries the agent's model may propose per round (0: the agent forms its queries alone).",
    )
    parser.add_argument("--answer-max-tokens", type=int, default=96, help="Tokens each answer may write.")
    parser.add_argument("--top-k", type=int, default=5, help="Documents the RAG baseline reads.")
    parser.add_argument("--home", type=Path, default=WORK_DIR / "home", help="DEEPSCOUT_HOME of the run.")
    parser.add_argument("--out", type=Path, default=WORK_DIR / "report", help="Report folder.")
    return parser.parse_args()


def _progress() -> Any:
    started = time.monotonic()

    def progress(label: str, done: int, total: int) -> None:
        if label in ("Answering", "Judging") or done == total:
            elapsed = time.monotonic() - started
            print(f"[{elapsed:7.1f}s] {label}: {done}/{total}", file=sys.stderr, flush=True)

    return progress


def _machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
    }


def main() -> None:
    args = _arguments()
    settings = Settings(home=args.home)
    options = EvalOptions(
        dataset=args.hotpotqa,
        model=args.model,
        judge=None if args.judge == "none" else args.judge or args.model,
        limit=args.limit,
        retrieval=args.retrieval,
        top_k=args.top_k,
        budgets=Budgets(
            max_steps=args.max_steps,
            max_documents=args.max_documents,
            max_tool_calls=args.max_tool_calls,
            wall_time_s=args.wall_time,
        ),
        answer_max_tokens=args.answer_max_tokens,
        model_queries=args.model_queries,
    )
    machine = _machine()
    started = time.monotonic()
    outcome = run_eval(options, settings=settings, progress=_progress())
    wall_s = time.monotonic() - started

    db = open_database(settings)
    try:
        with db.session_factory() as session:
            run, items, answers, verdicts = load_run(session, run_id=outcome.run_id)
            manifest = dict(run.manifest)
    finally:
        db.dispose()
    limited = {item.id for item in items[: args.limit]}
    items = [item for item in items if item.id in limited]
    answers = [a for a in answers if a.item_id in limited]
    verdicts = [v for v in verdicts if v.item_id in limited]
    files = write_report(out_dir=args.out, manifest=manifest, items=items, answers=answers, verdicts=verdicts)
    answered = {(a.item_id, a.system) for a in answers}
    completed = sum(1 for item in items if {(item.id, "agent"), (item.id, "rag")} <= answered)

    print(
        f"\neval run {outcome.run_id}: {completed}/{len(items)} questions answered by both systems, "
        f"{len(verdicts)} judged; this invocation {outcome.answered} answers new, {outcome.skipped} "
        f"resumed, {wall_s:.0f} s"
    )
    for failure in outcome.failures:
        print(f"failed: {failure}")
    for heading, table in files.tables:
        print(f"\n## {heading}\n\n{table}")
    evidence = evidence_rows(
        settings,
        retrieval=options.retrieval,
        collection=manifest.get("config", {}).get("corpus_collection") or "eval-hotpotqa",
        items=items,
        answers=answers,
    )
    print("\n## Evidence: gold supporting documents in the model's context\n")
    print(evidence_table(evidence))
    print(f"\nreport: {files.markdown}\n        {files.html}")

    result = {
        "benchmark": "eval_hotpotqa",
        "machine": machine,
        "options": {
            "dataset": str(args.hotpotqa),
            "limit": args.limit,
            "model": options.model,
            "judge": options.judge,
            "top_k": options.top_k,
            "budgets": options.budgets.model_dump(mode="json"),
            "answer_max_tokens": options.answer_max_tokens,
            "model_queries": options.model_queries,
            "retrieval": options.retrieval,
        },
        "run_id": outcome.run_id,
        "questions": len(items),
        "questions_completed": completed,
        "judged": len(verdicts),
        "invocation": {
            "wall_s": round(wall_s, 1),
            "answers_new": outcome.answered,
            "answers_resumed": outcome.skipped,
            "failures": outcome.failures,
        },
        "summary": json.loads(files.summary_json.read_text(encoding="utf-8")),
        "evidence": [asdict(row) for row in evidence],
        "report": {"markdown": str(files.markdown), "html": str(files.html)},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
