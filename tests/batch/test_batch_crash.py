"""``kill -9`` of a batch driver at random points, then ``batch resume``: the output ends complete and
duplicate-free, checked record by record (SQLite, and PostgreSQL under .ci/run)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import questions
from fake_research_model import answer_for

from deepscout.batch.batch_api import batch_status, list_batch_jobs
from deepscout.batch.output_files import owner_of
from deepscout.settings import Settings

DRIVER = Path(__file__).resolve().parent / "batch_driver.py"
RECORDS = 30
TRIALS = 3


def _driver(settings: Settings, *arguments: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(DRIVER), str(settings.home), settings.resolved_database_url, *arguments]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _complete_lines(out: Path) -> list[dict]:
    """The whole lines of results.jsonl (a kill may leave a torn last line; nothing else may be wrong)."""
    path = out / "results.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")
    whole = lines[:-1]  # text after the last newline is a torn line (or empty)
    return [json.loads(line) for line in whole]


def _kill_after(process: subprocess.Popen[str], out: Path, lines: int, extra_s: float) -> None:
    """SIGKILL ``process`` once ``out`` holds ``lines`` results and ``extra_s`` more have passed (or when
    it ends by itself)."""
    deadline = time.monotonic() + 60
    while process.poll() is None and len(_complete_lines(out)) < lines and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(extra_s)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _check_invariants(settings: Settings, out: Path) -> None:
    """After a kill: every whole line is a stored, finished record, and no record has two lines."""
    lines = _complete_lines(out)
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)), f"duplicate lines after a kill: {sorted(ids)}"
    for line in lines:
        assert line["answer"] == answer_for(f"Q{line['id'][1:]}")


def _batch_id(settings: Settings, out: Path) -> str | None:
    owner = owner_of(out)
    if owner is not None:
        return owner
    jobs = [view for view in list_batch_jobs(settings=settings) if view.out_dir == str(out.resolve())]
    return jobs[0].id if jobs else None


def test_sigkill_at_random_points_then_resume_answers_each_record_once(batch_settings, write_jsonl, tmp_path):
    rng = random.Random(1234)
    source = write_jsonl(questions(RECORDS))
    for trial in range(TRIALS):
        out = tmp_path / f"out{trial}"
        kills = 0
        _kill_after(
            _driver(batch_settings, "run", str(source), str(out), "4"),
            out,
            rng.randint(0, 25),
            rng.random() * 0.2,
        )
        kills += 1
        while True:
            _check_invariants(batch_settings, out)
            batch_id = _batch_id(batch_settings, out)
            if batch_id is None:  # killed before the job was stored: start it again
                process = _driver(batch_settings, "run", str(source), str(out), "4")
            else:
                process = _driver(batch_settings, "resume", batch_id, str(rng.randint(1, 6)))
            if kills < 2 and rng.random() < 0.7:  # kill the resumed driver too, most of the time
                done = len(_complete_lines(out))
                _kill_after(process, out, rng.randint(done, RECORDS - 1), rng.random() * 0.2)
                kills += 1
                continue
            stdout, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr[-2000:]
            assert stdout.strip().endswith("succeeded")
            break
        lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        assert [line["id"] for line in lines] == [f"r{n}" for n in range(RECORDS)], f"trial {trial}"
        for n, line in enumerate(lines):
            assert line["status"] == "succeeded" and line["answer"] == answer_for(f"Q{n}"), line
            assert line["question"] == f"What is Q{n} about?" and line["metadata"] == {"n": n}
        view = batch_status(_batch_id(batch_settings, out) or "", settings=batch_settings)
        assert view.status == "succeeded" and view.counts == {"succeeded": RECORDS}
        assert (out / "summary.md").read_text().count("What is Q") == RECORDS
