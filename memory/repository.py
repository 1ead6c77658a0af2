"""Reading and writing runs and threads: keyword-only functions taking a Session.

The caller owns the transaction. Wrap writes in ``deepscout.memory.db.write_session(session_factory)``
(short transactions: never hold one across a model call or a network fetch); reads can use a plain
``session_factory()`` session. Functions flush so that generated ids are set on the returned objects.
Sources, fetched pages and the web search cache are in :mod:`deepscout.memory.source_records`.

Threads and messages
    ``create_thread(s, *, thread_id=None, title=None, owner=None)``,
    ``get_or_create_thread(s, *, thread_id, title=None)``,
    ``add_message(s, *, thread_id, role, content, run_id=None, meta=None)``,
    ``list_messages(s, *, thread_id)``,
    ``list_threads(s, *, owner, limit=100)`` (newest first), ``get_owned_thread(s, *, thread_id, owner)``,
    ``delete_thread(s, *, thread_id)`` (with its jobs, their runs and events)

Research jobs of the server (a question asked in a chat thread) and their events
    ``create_job(s, *, thread_id, question, options=None, job_id=None)`` → ResearchJob ``queued``;
    ``get_job(s, *, job_id)``, ``list_jobs(s, *, thread_id)``,
    ``set_job_status(s, *, job_id, status, run_id=None, error=None)``;
    ``add_events(s, *, job_id, events)`` (``JobEvent`` rows), ``list_events(s, *, job_id, after=0)``;
    ``interrupt_unfinished_jobs(s)`` (after a restart: queued and running jobs become ``interrupted``);
    ``prune(s, *, before)`` deletes threads, jobs and runs last touched before ``before``.

Runs (the agent and the eval runner)
    ``create_run(s, *, question, settings=None, manifest=None, seed=None, sampling=None, thread_id=None,
    run_id=None)`` → Run with status ``running``;
    ``add_step(s, *, run_id, node, data=None, usage=None, started_at=None, finished_at=None)`` → Step
    numbered 0, 1, 2… per run; ``finish_step(s, *, step_id, data=None, usage=None)``;
    ``find_step(s, *, run_id, key)`` → the run's step whose ``data["key"]`` is ``key``, or None;
    ``add_tool_call(s, *, run_id, name, arguments, step_id=None, call_id=None, output=None, status="ok",
    error=None, source_ids=None, started_at=None, finished_at=None)``;
    ``finish_run(s, *, run_id, status, error=None, usage=None)`` (status: succeeded|failed|interrupted);
    ``save_answer(s, *, run_id, text, citations, meta=None)`` (replaces an earlier answer of the run);
    ``get_run(s, *, run_id)``, ``get_answer(s, *, run_id)``, ``list_runs(s, *, status=None, limit=50)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from deepscout.errors import DeepscoutError
from deepscout.memory.tables import (
    JOB_STATUSES,
    RUN_STATUSES,
    Answer,
    Message,
    ResearchEvent,
    ResearchJob,
    Run,
    Step,
    Thread,
    ToolCall,
    utcnow,
)

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
INTERRUPTED_BY_RESTART = "the server stopped during the run; resume it to continue"
T = TypeVar("T")
Finished = TypeVar("Finished", Step, Run)


class RecordNotFoundError(DeepscoutError, LookupError):
    """A run, step or thread named by id does not exist."""


# --- threads and messages ---------------------------------------------------------------------------


def create_thread(
    session: Session, *, thread_id: str | None = None, title: str | None = None, owner: str | None = None
) -> Thread:
    thread = Thread(title=title, owner=owner)
    if thread_id is not None:
        thread.id = thread_id
    return _insert(session, thread)


def get_or_create_thread(session: Session, *, thread_id: str, title: str | None = None) -> Thread:
    thread = session.get(Thread, thread_id)
    return thread if thread is not None else create_thread(session, thread_id=thread_id, title=title)


def add_message(
    session: Session,
    *,
    thread_id: str,
    role: str,
    content: str,
    run_id: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Message:
    if role not in MESSAGE_ROLES:
        raise ValueError(f"Unknown message role {role!r}; expected one of {', '.join(MESSAGE_ROLES)}")
    thread = _require(session, Thread, thread_id)
    thread.updated_at = utcnow()
    return _insert(
        session, Message(thread_id=thread_id, role=role, content=content, run_id=run_id, meta=meta or {})
    )


def list_messages(session: Session, *, thread_id: str) -> list[Message]:
    return list(session.scalars(select(Message).where(Message.thread_id == thread_id).order_by(Message.id)))


def list_threads(session: Session, *, owner: str, limit: int = 100) -> list[Thread]:
    query = select(Thread).where(Thread.owner == owner).order_by(Thread.updated_at.desc(), Thread.id)
    return list(session.scalars(query.limit(limit)))


def get_owned_thread(session: Session, *, thread_id: str, owner: str) -> Thread | None:
    """The thread if it exists and belongs to ``owner``; None otherwise (the same answer for both)."""
    thread = session.get(Thread, thread_id)
    return thread if thread is not None and thread.owner == owner else None


def delete_thread(session: Session, *, thread_id: str) -> None:
    """Delete the thread, its messages and jobs, and the runs (and their agent threads) of its jobs."""
    job_ids = list(session.scalars(select(ResearchJob.id).where(ResearchJob.thread_id == thread_id)))
    _delete_runs_and_threads(session, run_threads=job_ids, threads=[thread_id])


def _delete_runs_and_threads(session: Session, *, run_threads: list[str], threads: list[str]) -> None:
    """Delete the runs whose agent thread is in ``run_threads``, then those threads and ``threads``."""
    session.execute(delete(Run).where(Run.thread_id.in_(run_threads)))
    session.execute(delete(Thread).where(Thread.id.in_([*run_threads, *threads])))
    session.flush()
    session.expire_all()


# --- research jobs of the server and their events --------------------------------------------------


@dataclass(frozen=True)
class JobEvent:
    """One event of a job as stored: its number (the SSE id), type and payload."""

    seq: int
    type: str
    data: dict[str, Any]


def create_job(
    session: Session,
    *,
    thread_id: str,
    question: str,
    options: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> ResearchJob:
    _require(session, Thread, thread_id).updated_at = utcnow()
    job = ResearchJob(thread_id=thread_id, question=question, options=options or {}, status="queued")
    if job_id is not None:
        job.id = job_id
    return _insert(session, job)


def get_job(session: Session, *, job_id: str) -> ResearchJob | None:
    return session.get(ResearchJob, job_id)


def list_jobs(session: Session, *, thread_id: str) -> list[ResearchJob]:
    query = select(ResearchJob).where(ResearchJob.thread_id == thread_id)
    return list(session.scalars(query.order_by(ResearchJob.created_at, ResearchJob.id)))


def set_job_status(
    session: Session, *, job_id: str, status: str, run_id: str | None = None, error: str | None = None
) -> ResearchJob:
    """Move the job to ``status``; a final status (not queued or running) stamps ``finished_at``."""
    if status not in JOB_STATUSES:
        raise ValueError(f"Unknown job status {status!r}; expected one of {', '.join(JOB_STATUSES)}")
    job = _require(session, ResearchJob, job_id)
    job.status, job.error = status, error
    if run_id is not None:
        job.run_id = run_id
    job.finished_at = None if status in ("queued", "running") else utcnow()
    session.flush()
    return job


def add_events(session: Session, *, job_id: str, events: Sequence[JobEvent]) -> None:
    session.add_all(
        ResearchEvent(job_id=job_id, seq=event.seq, type=event.type, data=event.data) for event in events
    )
    session.flush()


def list_events(session: Session, *, job_id: str, after: int = 0) -> list[JobEvent]:
    query = select(ResearchEvent).where(ResearchEvent.job_id == job_id, ResearchEvent.seq > after)
    rows = session.scalars(query.order_by(ResearchEvent.seq))
    return [JobEvent(seq=row.seq, type=row.type, data=row.data) for row in rows]


def interrupt_unfinished_jobs(session: Session) -> int:
    """Mark queued and running jobs (and their runs) ``interrupted``, as a restarted server finds them;
    return how many jobs were marked."""
    query = select(ResearchJob).where(ResearchJob.status.in_(("queued", "running")))
    unfinished = list(session.scalars(query))
    for job in unfinished:
        set_job_status(session, job_id=job.id, status="interrupted", error=INTERRUPTED_BY_RESTART)
    run_ids = [job.run_id for job in unfinished if job.run_id]
    session.execute(
        update(Run)
        .where(Run.id.in_(run_ids), Run.status == "running")
        .values(status="interrupted", finished_at=utcnow())
    )
    session.flush()
    return len(unfinished)


@dataclass(frozen=True)
class Pruned:
    threads: int
    runs: int


def prune(session: Session, *, before: datetime) -> Pruned:
    """Delete the threads last updated before ``before`` (with their jobs and the jobs' runs) and the
    runs created before it that belong to no chat job still kept."""
    threads = list(session.scalars(select(Thread.id).where(Thread.updated_at < before)))
    job_ids = list(session.scalars(select(ResearchJob.id).where(ResearchJob.thread_id.in_(threads))))
    kept_runs = select(ResearchJob.run_id).where(ResearchJob.run_id.is_not(None))
    old_runs = select(Run.id).where(Run.created_at < before, Run.id.not_in(kept_runs))
    run_ids = set(session.scalars(old_runs)) | set(
        session.scalars(select(Run.id).where(Run.thread_id.in_(job_ids)))
    )
    session.execute(delete(Run).where(Run.id.in_(list(run_ids))))
    _delete_runs_and_threads(session, run_threads=job_ids, threads=threads)
    return Pruned(threads=len(threads), runs=len(run_ids))


# --- runs, steps, tool calls, answers ---------------------------------------------------------------


def create_run(
    session: Session,
    *,
    question: str,
    settings: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
    seed: int | None = None,
    sampling: dict[str, Any] | None = None,
    thread_id: str | None = None,
    run_id: str | None = None,
) -> Run:
    run = Run(
        question=question,
        status="running",
        settings=settings or {},
        manifest=manifest or {},
        seed=seed,
        sampling=sampling or {},
        usage={},
        thread_id=thread_id,
    )
    if run_id is not None:
        run.id = run_id
    return _insert(session, run)


def get_run(session: Session, *, run_id: str) -> Run | None:
    return session.get(Run, run_id)


def list_runs(session: Session, *, status: str | None = None, limit: int = 50) -> list[Run]:
    query = select(Run).order_by(Run.created_at.desc(), Run.id).limit(limit)
    if status is not None:
        query = query.where(Run.status == status)
    return list(session.scalars(query))


def add_step(
    session: Session,
    *,
    run_id: str,
    node: str,
    data: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> Step:
    """Append a step to the run; steps are numbered 0, 1, 2… in the order they are added.

    The run's row is locked (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite writers are serialised anyway)
    so that concurrent writers never take the same number.
    """
    if session.scalar(select(Run.id).where(Run.id == run_id).with_for_update()) is None:
        raise RecordNotFoundError(f"No run with id {run_id!r}")
    next_index = session.scalar(
        select(func.coalesce(func.max(Step.index) + 1, 0)).where(Step.run_id == run_id)
    )
    step = Step(
        run_id=run_id,
        index=int(next_index or 0),
        node=node,
        data=data or {},
        usage=usage or {},
        started_at=started_at or utcnow(),
        finished_at=finished_at,
    )
    return _insert(session, step)


def finish_step(
    session: Session,
    *,
    step_id: int,
    data: dict[str, Any] | None = None,
    usage: dict[str, Any] | None = None,
) -> Step:
    """Stamp the step finished now, merging ``data`` and ``usage`` into what it already holds."""
    step = _require(session, Step, step_id)
    if data:
        step.data = {**step.data, **data}
    if usage:
        step.usage = {**step.usage, **usage}
    return _stamp_finished(session, step)


def add_tool_call(
    session: Session,
    *,
    run_id: str,
    name: str,
    arguments: dict[str, Any],
    step_id: int | None = None,
    call_id: str | None = None,
    output: str | None = None,
    status: str = "ok",
    error: str | None = None,
    source_ids: Sequence[int] | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> ToolCall:
    if status not in ("ok", "error"):
        raise ValueError(f"Tool call status must be 'ok' or 'error', not {status!r}")
    _require(session, Run, run_id)
    call = ToolCall(
        run_id=run_id,
        step_id=step_id,
        call_id=call_id,
        name=name,
        arguments=arguments,
        output=output,
        status=status,
        error=error,
        source_ids=list(source_ids or []),
        started_at=started_at or utcnow(),
        finished_at=finished_at or utcnow(),
    )
    return _insert(session, call)


def finish_run(
    session: Session,
    *,
    run_id: str,
    status: str,
    error: str | None = None,
    usage: dict[str, Any] | None = None,
) -> Run:
    if status not in RUN_STATUSES or status == "running":
        raise ValueError(f"A run finishes as succeeded, failed or interrupted, not {status!r}")
    run = _require(session, Run, run_id)
    run.status = status
    run.error = error
    if usage is not None:
        run.usage = usage
    return _stamp_finished(session, run)


def save_answer(
    session: Session,
    *,
    run_id: str,
    text: str,
    citations: list[Any],
    meta: dict[str, Any] | None = None,
) -> Answer:
    """Store the run's answer; a run has one answer, so a second call replaces the first."""
    _require(session, Run, run_id)
    answer = get_answer(session, run_id=run_id)
    if answer is None:
        return _insert(session, Answer(run_id=run_id, text=text, citations=citations, meta=meta or {}))
    answer.text, answer.citations, answer.meta = text, citations, meta or {}
    answer.created_at = utcnow()
    session.flush()
    return answer


def get_answer(session: Session, *, run_id: str) -> Answer | None:
    return session.scalar(select(Answer).where(Answer.run_id == run_id))


def _insert(session: Session, row: T) -> T:
    """Add ``row`` and flush, so that its generated id is set."""
    session.add(row)
    session.flush()
    return row


def _stamp_finished(session: Session, row: Finished) -> Finished:
    """Set the step's or run's ``finished_at`` to now and flush."""
    row.finished_at = utcnow()
    session.flush()
    return row


def _require(session: Session, model: type[T], ident: object) -> T:
    found = session.get(model, ident)
    if found is None:
        raise RecordNotFoundError(f"No {model.__name__.lower()} with id {ident!r}")
    return found


def find_step(session: Session, *, run_id: str, key: str) -> Step | None:
    """The run's step stored with ``data["key"] == key`` (the agent's key for a node's work), or None."""
    steps = session.scalars(select(Step).where(Step.run_id == run_id).order_by(Step.index))
    return next((step for step in steps if (step.data or {}).get("key") == key), None)
