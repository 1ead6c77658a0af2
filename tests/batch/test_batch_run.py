"""A batch job end to end on the fake model: every record answered once, with its metadata, settings,
usage and wall time; bad and duplicate records reported by line; transient errors retried; a folder of
another job refused; status and list (SQLite, and PostgreSQL under .ci/run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import questions
from fake_research_model import answer_for, fake_registry
from typer.testing import CliRunner

from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.batch.batch_api import batch_status, list_batch_jobs, resume_batch, run_batch
from deepscout.batch.batch_errors import BatchInputError, OutputFolderError
from deepscout.batch.batch_options import BatchOptions
from deepscout.batch.batch_progress import BatchProgress
from deepscout.settings import Settings

OPTIONS = BatchOptions(
    research=ResearchOptions(budgets=Budgets(max_steps=1), min_grounding=0.0),
    concurrency=4,
    retry_delay_s=0.0,
)


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_30_record_job_completes_with_one_answer_per_record(
    batch_settings: Settings, write_jsonl, tmp_path
):
    rows = questions(30)
    rows[5]["settings"] = {"budgets": {"max_documents": 2}, "hits_per_query": 3}
    seen: list[BatchProgress] = []
    outcome = run_batch(
        write_jsonl(rows),
        out_dir=tmp_path / "out",
        settings=batch_settings,
        options=OPTIONS,
        registry=fake_registry(delay_s=0.002),
        progress=seen.append,
    )
    assert outcome.status == "succeeded" and outcome.problems == []
    lines = _lines(tmp_path / "out")
    assert [line["id"] for line in lines] == [f"r{n}" for n in range(30)]  # input order, once each
    for n, line in enumerate(lines):
        assert line["status"] == "succeeded" and line["answer"] == answer_for(f"Q{n}")
        assert line["metadata"] == {"n": n} and line["line"] == n + 1
        assert line["usage"]["prompt_tokens"] > 0 and line["wall_s"] > 0 and line["attempts"] == 1
    assert lines[5]["settings"] == {"hits_per_query": 3, "budgets": {"max_documents": 2}}
    assert lines[4]["settings"] == {}
    assert outcome.totals is not None and outcome.totals.succeeded == 30
    assert outcome.totals.tokens["prompt_tokens"] == sum(line["usage"]["prompt_tokens"] for line in lines)
    assert seen[-1].done == 30 and seen[-1].failed == 0 and seen[-1].per_hour > 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| 30 | 30 | 0 | 0 |" in summary and "What is Q7 about?" in summary
    assert "<table>" in (tmp_path / "out" / "summary.html").read_text()
    view = batch_status(outcome.batch_id, settings=batch_settings)
    assert view.status == "succeeded" and view.counts == {"succeeded": 30}
    assert [v.id for v in list_batch_jobs(settings=batch_settings)] == [outcome.batch_id]


def test_bad_and_duplicate_records_are_reported_by_line_and_skipped(batch_settings, write_jsonl, tmp_path):
    rows = [
        {"id": "a", "question": "What is Q1 about?"},
        {"question": "   "},
        '{"question": "broken',
        {"question": 42},
        {"question": "x" * 5000},
        {"question": "What is Q2 about?", "colour": "red"},
        {"question": "What is Q3 about?", "settings": {"max_steps": 99}},
        {"question": "What is Q4 about?", "settings": {"model": "smollm2"}},
        "[1, 2]",
        {"id": "a", "question": "What is Q5 about?"},
        {"question": "What is Q6 about?", "metadata": "not an object"},
        {"question": "What is Q7 about?"},
        "",
        {"question": "What  is Q7 about?"},
        {"question": "What is Q8 about?", "id": True},
    ]
    outcome = run_batch(
        write_jsonl(rows), out_dir=tmp_path / "out", settings=batch_settings, options=OPTIONS,
        registry=fake_registry(),
    )  # fmt: skip
    reasons = {problem.line: problem.reason for problem in outcome.problems}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15]
    assert reasons[2] == "empty question" and reasons[3].startswith("malformed JSON")
    assert "must be a string" in reasons[4] and "longer than 4000" in reasons[5]
    assert "unknown fields ['colour']" in reasons[6] and reasons[7].startswith("settings.")
    assert "may not set model" in reasons[8] and "expected a JSON object" in reasons[9]
    assert reasons[10] == "duplicate of line 1 (a)" and "metadata must be an object" in reasons[11]
    assert reasons[14].startswith("duplicate of line 12") and "id must be" in reasons[15]
    assert [line["line"] for line in _lines(tmp_path / "out")] == [1, 12]
    assert "Skipped input records" in (tmp_path / "out" / "summary.md").read_text()


def test_csv_input_carries_extra_columns_as_metadata(batch_settings, tmp_path):
    source = tmp_path / "input.csv"
    source.write_text(
        'id,question,team,settings\nx,What is Q1 about?,blue,"{""budgets"": {""max_steps"": 2}}"\ny,,red,\n'
    )
    outcome = run_batch(
        source, out_dir=tmp_path / "out", settings=batch_settings, options=OPTIONS, registry=fake_registry()
    )
    assert [(p.line, p.reason) for p in outcome.problems] == [(3, "empty question")]
    (line,) = _lines(tmp_path / "out")
    assert line["metadata"] == {"team": "blue"} and line["settings"] == {"budgets": {"max_steps": 2}}


def test_transient_errors_are_retried_and_lasting_ones_fail_the_record_only(
    batch_settings, write_jsonl, tmp_path
):
    outcome = run_batch(
        write_jsonl(questions(3)),
        out_dir=tmp_path / "out",
        settings=batch_settings,
        options=OPTIONS.model_copy(update={"attempts": 3}),
        registry=fake_registry(fail_markers={"Q1": 2, "Q2": 50}),
    )
    lines = {line["id"]: line for line in _lines(tmp_path / "out")}
    assert lines["r0"]["attempts"] == 1 and lines["r1"]["attempts"] == 3
    assert lines["r1"]["answer"] == answer_for("Q1")
    assert lines["r2"]["status"] == "failed" and "rate limited" in lines["r2"]["error"]
    assert outcome.totals is not None and outcome.totals.failed == 1
    again = resume_batch(
        outcome.batch_id, settings=batch_settings, retry_failed=True, registry=fake_registry()
    )
    assert again.totals is not None and again.totals.failed == 0
    assert [line["id"] for line in _lines(tmp_path / "out")] == ["r0", "r1", "r2"]


def test_an_output_folder_of_another_job_is_refused(batch_settings, write_jsonl, tmp_path):
    source = write_jsonl(questions(2))
    run_batch(
        source, out_dir=tmp_path / "out", settings=batch_settings, options=OPTIONS, registry=fake_registry()
    )
    with pytest.raises(OutputFolderError, match="already holds the results of batch job"):
        run_batch(source, out_dir=tmp_path / "out", settings=batch_settings, options=OPTIONS)
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "results.jsonl").write_text("{}\n")
    with pytest.raises(OutputFolderError, match="unknown origin"):
        run_batch(source, out_dir=tmp_path / "stray", settings=batch_settings, options=OPTIONS)
    with pytest.raises(BatchInputError, match="no usable record"):
        run_batch(
            write_jsonl([{"question": ""}], "bad.jsonl"), out_dir=tmp_path / "o2", settings=batch_settings
        )


def test_the_cli_reports_status_list_and_errors_in_one_line(
    batch_settings, write_jsonl, tmp_path, monkeypatch
):
    from deepscout.cli import app

    outcome = run_batch(
        write_jsonl(questions(2)), out_dir=tmp_path / "out", settings=batch_settings, options=OPTIONS,
        registry=fake_registry(),
    )  # fmt: skip
    monkeypatch.setenv("DEEPSCOUT_HOME", str(batch_settings.home))
    monkeypatch.setenv("COLUMNS", "250")
    if batch_settings.database_url:
        monkeypatch.setenv("DEEPSCOUT_DATABASE_URL", batch_settings.database_url)
    runner = CliRunner()
    listed = runner.invoke(app, ["batch", "list"])
    assert listed.exit_code == 0 and outcome.batch_id in listed.output
    shown = runner.invoke(app, ["batch", "status", outcome.batch_id])
    assert shown.exit_code == 0 and "succeeded" in shown.output
    missing = runner.invoke(app, ["batch", "status", "nope"])
    assert missing.exit_code == 2 and "no batch job 'nope'" in missing.output
    refused = runner.invoke(
        app, ["batch", "run", str(tmp_path / "input.jsonl"), "--out", str(tmp_path / "out")]
    )
    assert refused.exit_code == 2 and "already holds the results" in refused.output
    assert "Traceback" not in refused.output
