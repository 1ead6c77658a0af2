"""The server's records: owned threads, research jobs and their events, restart marking, deletion and
pruning (SQLite, and PostgreSQL under .ci/run)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from deepscout.memory import repository as repo
from deepscout.memory.db import Database, write_session
from deepscout.memory.repository import JobEvent
from deepscout.memory.tables import utcnow


def _job_with_run(database: Database, owner: str) -> tuple[str, str, str]:
    with write_session(database.session_factory) as s:
        thread = repo.create_thread(s, title="chat", owner=owner)
        job = repo.create_job(s, thread_id=thread.id, question="Who wrote Dracula?", options={"max_steps": 1})
        repo.create_thread(s, thread_id=job.id)  # the agent's own checkpoint thread for the job
        run = repo.create_run(s, question=job.question, thread_id=job.id)
        repo.set_job_status(s, job_id=job.id, status="running", run_id=run.id)
        return thread.id, job.id, run.id


def test_threads_are_listed_per_owner_and_jobs_keep_their_events(database: Database) -> None:
    thread_id, job_id, _ = _job_with_run(database, "alice")
    with write_session(database.session_factory) as s:
        repo.add_events(
            s, job_id=job_id, events=[JobEvent(1, "job", {}), JobEvent(2, "answer_token", {"t": "a"})]
        )
        repo.add_events(s, job_id=job_id, events=[JobEvent(3, "done", {"answer": "a"})])
    with database.session_factory() as s:
        assert [t.id for t in repo.list_threads(s, owner="alice")] == [thread_id]
        assert repo.list_threads(s, owner="bob") == []
        assert repo.get_owned_thread(s, thread_id=thread_id, owner="bob") is None
        assert [e.seq for e in repo.list_events(s, job_id=job_id, after=1)] == [2, 3]
        assert repo.list_events(s, job_id=job_id)[2] == JobEvent(3, "done", {"answer": "a"})
        assert [job.id for job in repo.list_jobs(s, thread_id=thread_id)] == [job_id]
    with pytest.raises(ValueError, match="Unknown job status"), write_session(database.session_factory) as s:
        repo.set_job_status(s, job_id=job_id, status="paused")


def test_a_restart_marks_unfinished_jobs_and_their_runs_interrupted(database: Database) -> None:
    _, job_id, run_id = _job_with_run(database, "alice")
    with write_session(database.session_factory) as s:
        assert repo.interrupt_unfinished_jobs(s) == 1
    with database.session_factory() as s:
        job, run = repo.get_job(s, job_id=job_id), repo.get_run(s, run_id=run_id)
        assert job is not None and job.status == "interrupted" and job.finished_at is not None
        assert run is not None and run.status == "interrupted"


def test_deleting_a_thread_deletes_its_jobs_runs_and_agent_threads(database: Database) -> None:
    thread_id, job_id, run_id = _job_with_run(database, "alice")
    with write_session(database.session_factory) as s:
        repo.delete_thread(s, thread_id=thread_id)
    with database.session_factory() as s:
        assert repo.get_job(s, job_id=job_id) is None and repo.get_run(s, run_id=run_id) is None
        assert repo.list_events(s, job_id=job_id) == []
        assert repo.get_owned_thread(s, thread_id=thread_id, owner="alice") is None


def test_prune_removes_what_is_older_than_the_cut_off(database: Database) -> None:
    _, old_job, _ = _job_with_run(database, "alice")
    with write_session(database.session_factory) as s:
        repo.create_run(s, question="an old run of no thread")
    cut_off = utcnow() + timedelta(seconds=1)
    with write_session(database.session_factory) as s:
        assert repo.prune(s, before=utcnow() - timedelta(days=1)) == repo.Pruned(threads=0, runs=0)
        pruned = repo.prune(s, before=cut_off)
    assert pruned == repo.Pruned(threads=2, runs=2)
    with database.session_factory() as s:
        assert repo.get_job(s, job_id=old_job) is None and repo.list_threads(s, owner="alice") == []
        assert repo.list_runs(s) == []
