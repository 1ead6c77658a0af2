"""The harness end to end on the embedded default model: two HotpotQA questions, agent vs RAG, the
pairwise judge in both orders, and the report rendered from what was stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deepscout.agent.options import Budgets
from deepscout.evals.report import write_report
from deepscout.evals.runner import EvalOptions, run_eval
from deepscout.evals.store import load_run
from deepscout.memory.db import open_database

pytestmark = pytest.mark.slow


def test_two_hotpotqa_questions_on_smollm2(
    hotpotqa_dir: Path, settings: Any, smollm2_chat_model: Any, tmp_path: Path
) -> None:
    options = EvalOptions(
        dataset=hotpotqa_dir,
        model="smollm2",
        judge="smollm2",
        limit=2,
        budgets=Budgets(max_steps=1, max_tool_calls=6, wall_time_s=90),
        answer_max_tokens=64,
    )
    outcome = run_eval(options, settings=settings, chat=smollm2_chat_model)
    assert outcome.items == 2 and outcome.answered == 4 and outcome.judged == 2

    db = open_database(settings)
    with db.session_factory() as session:
        run, items, answers, verdicts = load_run(session, run_id=outcome.run_id[:8])
        manifest = dict(run.manifest)
    db.dispose()
    assert manifest["config"]["model"] == "smollm2" and manifest["git_revision"]
    assert {(a.item_id, a.system) for a in answers} == {(i.id, s) for i in items for s in ("agent", "rag")}
    rag = [a for a in answers if a.system == "rag"]
    agent = [a for a in answers if a.system == "agent"]
    assert all(a.usage.tool_calls == 1 and a.usage.prompt_tokens > 0 and a.sources for a in rag)
    assert all(a.usage.tool_calls >= 1 and a.usage.prompt_tokens > 0 for a in agent)
    assert all(a.usage.computed_tokens <= a.usage.prompt_tokens for a in answers)
    assert {v.outcome for v in verdicts} <= {"win", "loss", "tie"} and len(verdicts) == 2

    files = write_report(
        out_dir=tmp_path / "report", manifest=manifest, items=items, answers=answers, verdicts=verdicts
    )
    page = files.html.read_text()
    assert items[0].question in page and "Cost per question" in page
