"""The Ray executor on a local Ray cluster the test starts and stops: a small job completes, and one
where a worker process is killed mid-job completes too, each record answered once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from conftest import questions
from fake_research_model import answer_for, fake_registry

from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.batch.batch_api import BatchOutcome, run_batch
from deepscout.batch.batch_options import BatchOptions

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

OPTIONS = BatchOptions(
    research=ResearchOptions(budgets=Budgets(max_steps=1), min_grounding=0.0),
    executor="ray",
    ray_workers=2,
    concurrency=4,
    retry_delay_s=0.0,
)


@pytest.fixture(scope="module")
def ray_cluster():
    import fake_research_model

    ray.cloudpickle.register_pickle_by_value(fake_research_model)  # the workers cannot import tests/
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _workers() -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"]) if "RecordWorker" in " ".join(p.info["cmdline"] or [])
    ]


def _check(out, count: int) -> None:
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [f"r{n}" for n in range(count)]
    for n, line in enumerate(lines):
        assert line["status"] == "succeeded" and line["answer"] == answer_for(f"Q{n}"), line


@pytest.mark.parametrize("batch_settings", ["sqlite"], indirect=True)
def test_a_small_job_runs_on_ray_workers(ray_cluster, batch_settings, write_jsonl, tmp_path) -> None:
    outcome = run_batch(
        write_jsonl(questions(8)), out_dir=tmp_path / "out", settings=batch_settings, options=OPTIONS,
        registry=fake_registry(delay_s=0.01),
    )  # fmt: skip
    assert outcome.status == "succeeded"
    _check(tmp_path / "out", 8)


@pytest.mark.parametrize("batch_settings", ["sqlite"], indirect=True)
def test_a_killed_worker_is_replaced_and_its_records_answered_once(
    ray_cluster, batch_settings, write_jsonl, tmp_path
) -> None:
    results: list[BatchOutcome] = []
    job = threading.Thread(
        target=lambda: results.append(
            run_batch(
                write_jsonl(questions(16)),
                out_dir=tmp_path / "out",
                settings=batch_settings,
                options=OPTIONS,
                registry=fake_registry(delay_s=0.05),
            )
        )
    )
    job.start()
    out = tmp_path / "out" / "results.jsonl"
    deadline = time.monotonic() + 120
    while (not out.exists() or len(out.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    victims = _workers()
    assert victims, "no Ray worker process found"
    os.kill(victims[0].pid, signal.SIGKILL)
    job.join(timeout=300)
    assert results and results[0].status == "succeeded"
    _check(tmp_path / "out", 16)
    assert any(line["attempts"] > 1 for line in map(json.loads, out.read_text().splitlines()))
