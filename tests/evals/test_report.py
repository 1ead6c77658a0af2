from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepscout.evals.datasets import EvalItem
from deepscout.evals.records import AnswerCost, SourceRef, SystemAnswer, Verdict
from deepscout.evals.report import write_report
from deepscout.evals.summary import judge_calibration, pairwise_rows, system_scores


def _items() -> list[EvalItem]:
    return [
        EvalItem(
            "q1", "Who directed 2001?", ("Stanley Kubrick",), {"difficulty": "easy"}, ("2001", "Kubrick")
        ),
        EvalItem("q2", "Capital of France?", ("Paris",), {"difficulty": "hard"}, ("France",)),
    ]


def _answers() -> list[SystemAnswer]:
    return [
        SystemAnswer(
            "q1",
            "agent",
            "Stanley Kubrick [1]",
            (SourceRef(1, "2001", "2001: A Space Odyssey"),),
            ("2001", "Kubrick"),
            AnswerCost(tool_calls=4, prompt_tokens=900, computed_tokens=300, output_tokens=20, latency_s=3.0),
        ),
        SystemAnswer("q1", "rag", "Arthur C. Clarke [1]", (), ("2001",), AnswerCost(1, 700, 700, 15, 1.0)),
        SystemAnswer("q2", "agent", "Lyon", (), (), AnswerCost(2, 500, 200, 10, 2.0)),
        SystemAnswer("q2", "rag", "Paris", (), ("France",), AnswerCost(1, 600, 600, 10, 1.0)),
    ]


def _verdicts() -> list[Verdict]:
    return [
        Verdict("q1", "agent", "rag", "win", False, "A is right", "B is right"),
        Verdict("q2", "agent", "rag", "tie", True, "A", "A"),
    ]


def test_summaries_follow_the_records() -> None:
    rows = {r.category: r for r in pairwise_rows(_items(), _verdicts())}
    assert rows["all"].n == 2 and rows["all"].win.estimate == 0.5 and rows["all"].tie.estimate == 0.5
    assert rows["easy / objective"].win.estimate == 1.0
    scores = {s.system: s for s in system_scores(_items(), _answers())}
    assert scores["agent"].exact_match.estimate == 0.5
    assert scores["rag"].exact_match.estimate == 0.5
    assert scores["agent"].evidence_recall.estimate == pytest.approx(0.5)  # 2/2 on q1, 0/1 on q2
    assert scores["rag"].evidence_recall.estimate == pytest.approx(0.75)
    calibration = judge_calibration(_items(), _answers(), _verdicts())
    assert calibration.order_flip_rate == 0.5
    assert calibration.decisive_items == 2  # q1: only agent right; q2: only rag right
    assert calibration.agreement_with_objective == 0.5  # q1 agrees (win), q2 was a tie


def test_report_writes_markdown_html_charts_and_summary(tmp_path: Path) -> None:
    files = write_report(
        out_dir=tmp_path, manifest={"run_id": "abc"}, items=_items(), answers=_answers(), verdicts=_verdicts()
    )
    markdown = files.markdown.read_text()
    assert "| all | 2 | 50.0%" in markdown
    assert "Stanley Kubrick [1]" in markdown and "orders disagreed" in markdown
    page = files.html.read_text()
    assert page.count("data:image/png;base64,") == 2  # self-contained: charts inlined
    assert "<table>" in page and "Capital of France?" in page
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in files.charts)
    summary = json.loads(files.summary_json.read_text())
    assert summary["judge"]["order_flip_rate"] == 0.5
    assert {c["system"] for c in summary["cost"]} == {"agent", "rag"}
