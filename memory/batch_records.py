"""Reading and writing batch jobs and their records: keyword-only functions taking a Session.

A batch is a :class:`BatchJob` with a thread of its own; each record is a :class:`ResearchJob` of that
thread — the same job record the server keeps for a chat question: question, options, status, run and
the agent's checkpoint thread (the job id) — plus a :class:`BatchRecord` with what only a batch needs
(input line, key, metadata, attempts, and the output line once finished). The caller owns the transaction
(``deepscout.memory.db.write_session`` for writes).

Batches
    ``create_batch(s, *, input_path, input_hash, out_dir, options, problems, records)`` → BatchJob
    ``queued`` with one queued research job per :class:`NewRecord`;
    ``get_batch(s, *, batch_id)``, ``batch_for_out_dir(s, *, out_dir)``, ``list_batches(s, *, limit=50)``
    (newest first), ``status_counts(s, *, batch_id)`` (record status → count);
    ``take_lease(s, *, batch_id, driver, may_replace)``, ``renew_lease(s, *, batch_id, driver)``,
    ``release_lease(s, *, batch_id, driver, status, error=None)``.

Records
    ``requeue_unfinished(s, *, batch_id, retry_failed=False)`` (records in flight when a driver stopped,
    and optionally failed ones, become ``queued``); ``pending_records(s, *, batch_id)`` (queued or
    interrupted, by input line); ``start_record(s, *, record_id)`` (running, one more attempt);
    ``finish_record(s, *, record_id, status, result, run_id=None, error=None)`` (False if it had finished
    already: a record's output is stored once); ``finished_results(s, *, batch_id, by_line=False)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from deepscout.memory.repository import RecordNotFoundError, create_thread
from deepscout.memory.tables import BatchJob, BatchRecord, ResearchJob, utcnow

FINAL_STATUSES = ("succeeded", "failed")
PENDING_STATUSES = ("queued", "interrupted")


@dataclass(frozen=True)
class NewRecord:
    """A validated input record to store."""

    line: int
    key: str
    question: str
    options: dict[str, Any]
    meta: dict[str, Any]


@dataclass(frozen=True)
class PendingRecord:
    """A record still to answer, as a driver hands it to an executor."""

    record_id: int
    job_id: str
    """Its research job, which is also the agent's checkpoint thread (a retry resumes it)."""
    line: int
    key: str
    question: str
    options: dict[str, Any]
    meta: dict[str, Any]
    attempts: int


def create_batch(
    session: Session,
    *,
    input_path: str,
    input_hash: str,
    out_dir: str,
    options: dict[str, Any],
    problems: list[dict[str, Any]],
    records: Sequence[NewRecord],
) -> BatchJob:
    thread = create_thread(session, title=f"batch: {input_path}"[:200])
    batch = BatchJob(
        thread_id=thread.id,
        input_path=input_path,
        input_hash=input_hash,
        out_dir=out_dir,
        options=options,
        problems=problems,
        status="queued",
    )
    session.add(batch)
    session.flush()
    jobs = [
        ResearchJob(thread_id=thread.id, question=record.question, options=record.options, status="queued")
        for record in records
    ]
    session.add_all(jobs)
    session.flush()
    session.add_all(
        BatchRecord(batch_id=batch.id, job_id=job.id, line=record.line, key=record.key, meta=record.meta)
        for job, record in zip(jobs, records, strict=True)
    )
    session.flush()
    return batch


def get_batch(session: Session, *, batch_id: str) -> BatchJob | None:
    return session.get(BatchJob, batch_id)


def batch_for_out_dir(session: Session, *, out_dir: str) -> BatchJob | None:
    return session.scalar(select(BatchJob).where(BatchJob.out_dir == out_dir))


def list_batches(session: Session, *, limit: int = 50) -> list[BatchJob]:
    query = select(BatchJob).order_by(BatchJob.created_at.desc(), BatchJob.id).limit(limit)
    return list(session.scalars(query))


def status_counts(session: Session, *, batch_id: str) -> dict[str, int]:
    query = (
        select(ResearchJob.status, func.count())
        .join(BatchRecord, BatchRecord.job_id == ResearchJob.id)
        .where(BatchRecord.batch_id == batch_id)
        .group_by(ResearchJob.status)
    )
    return {status: int(count) for status, count in session.execute(query)}


def _locked_batch(session: Session, batch_id: str) -> BatchJob:
    batch = session.scalar(select(BatchJob).where(BatchJob.id == batch_id).with_for_update())
    if batch is None:
        raise RecordNotFoundError(f"No batch job with id {batch_id!r}")
    return batch


def take_lease(
    session: Session,
    *,
    batch_id: str,
    driver: str,
    may_replace: Callable[[str, datetime | None], bool],
) -> str | None:
    """Make ``driver`` the batch's driver and return None, unless another driver holds it and
    ``may_replace(holder, heartbeat_at)`` says no: then return that holder."""
    batch = _locked_batch(session, batch_id)
    holder = batch.driver
    if holder is not None and holder != driver and not may_replace(holder, batch.heartbeat_at):
        return holder
    batch.driver, batch.heartbeat_at = driver, utcnow()
    batch.status, batch.error, batch.finished_at = "running", None, None
    session.flush()
    return None


def renew_lease(session: Session, *, batch_id: str, driver: str) -> bool:
    """Stamp the driver's heartbeat; False when another driver has taken the batch over."""
    done = session.execute(
        update(BatchJob)
        .where(BatchJob.id == batch_id, BatchJob.driver == driver)
        .values(heartbeat_at=utcnow())
    )
    return bool(getattr(done, "rowcount", 0))


def release_lease(
    session: Session, *, batch_id: str, driver: str, status: str, error: str | None = None
) -> None:
    """Leave the batch in ``status`` (its driver gone), if ``driver`` still holds it."""
    batch = _locked_batch(session, batch_id)
    if batch.driver != driver:
        return
    batch.driver, batch.heartbeat_at, batch.status, batch.error = None, None, status, error
    batch.finished_at = utcnow() if status in FINAL_STATUSES else None
    session.flush()


def _record_jobs(batch_id: str) -> Any:
    return select(BatchRecord.job_id).where(BatchRecord.batch_id == batch_id)


def requeue_unfinished(session: Session, *, batch_id: str, retry_failed: bool = False) -> int:
    """Queue again the records a stopped driver left running (and the failed ones with ``retry_failed``);
    return how many."""
    statuses = ["running", *(["failed"] if retry_failed else [])]
    jobs = ResearchJob.id.in_(_record_jobs(batch_id))
    if retry_failed:
        failed = select(ResearchJob.id).where(jobs, ResearchJob.status == "failed")
        session.execute(
            update(BatchRecord)
            .where(BatchRecord.job_id.in_(failed))
            .values(result=None, finished_seq=None)
            .execution_options(synchronize_session=False)
        )
    done = session.execute(
        update(ResearchJob)
        .where(jobs, ResearchJob.status.in_(statuses))
        .values(status="queued", error=None, finished_at=None)
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return int(getattr(done, "rowcount", 0))


def pending_records(session: Session, *, batch_id: str) -> list[PendingRecord]:
    query = (
        select(BatchRecord, ResearchJob)
        .join(ResearchJob, BatchRecord.job_id == ResearchJob.id)
        .where(BatchRecord.batch_id == batch_id, ResearchJob.status.in_(PENDING_STATUSES))
        .order_by(BatchRecord.line)
    )
    return [
        PendingRecord(
            record_id=record.id,
            job_id=job.id,
            line=record.line,
            key=record.key,
            question=job.question,
            options=job.options,
            meta=record.meta,
            attempts=record.attempts,
        )
        for record, job in session.execute(query)
    ]


def _record_and_job(session: Session, record_id: int) -> tuple[BatchRecord, ResearchJob]:
    record = session.get(BatchRecord, record_id)
    if record is None:
        raise RecordNotFoundError(f"No batch record with id {record_id!r}")
    job = session.get(ResearchJob, record.job_id)
    assert job is not None  # the foreign key holds it
    return record, job


def start_record(session: Session, *, record_id: int) -> int:
    """Mark the record running and count one more attempt; return the attempt's number."""
    record, job = _record_and_job(session, record_id)
    record.attempts += 1
    job.status, job.error = "running", None
    session.flush()
    return record.attempts


def finish_record(
    session: Session,
    *,
    record_id: int,
    status: str,
    result: dict[str, Any],
    run_id: str | None = None,
    error: str | None = None,
) -> bool:
    """Store the record's output line and final ``status`` (succeeded|failed), numbered next in its batch;
    False (and nothing written) if the record had finished already."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"A record finishes as succeeded or failed, not {status!r}")
    record, job = _record_and_job(session, record_id)
    _locked_batch(session, record.batch_id)  # serialises the numbering of finished records
    session.refresh(job)
    if job.status in FINAL_STATUSES:
        return False
    last = session.scalar(
        select(func.max(BatchRecord.finished_seq)).where(BatchRecord.batch_id == record.batch_id)
    )
    record.result, record.finished_seq = result, int(last or 0) + 1
    job.status, job.error, job.finished_at = status, error, utcnow()
    if run_id is not None:
        job.run_id = run_id
    session.flush()
    return True


def finished_results(session: Session, *, batch_id: str, by_line: bool = False) -> list[dict[str, Any]]:
    """The output lines of the batch's finished records, in finishing order (or by input line)."""
    order = BatchRecord.line if by_line else BatchRecord.finished_seq
    query = (
        select(BatchRecord.result)
        .where(BatchRecord.batch_id == batch_id, BatchRecord.finished_seq.is_not(None))
        .order_by(order)
    )
    return [dict(result) for result in session.scalars(query) if result is not None]
