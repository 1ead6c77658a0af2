"""Reading and writing runs and threads: keyword-only functions taking a Session.

The caller owns the transaction. Wrap writes in ``deepscout.memory.db.write_session(session_factory)``
(short transactions: never hold one across a model call or a network fetch); reads can use a plain
``session_factory()`` session. Functions flush so that generated ids are set on the returned objects.
Sources, fetched pages and the web search cache are in :mod:`deepscout.memory.source_records`.

Threads and messages
    ``create_thread(s, *, thread_id=None, title=None)``,
    ``get_or_create_thread(s, *, thread_id, title=None)``,
    ``add_message(s, *, thread_id, role, content, run_id=None, meta=None)``,
    ``list_messages(s, *, thread_id)``

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
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deepscout.errors import DeepscoutError
from deepscout.memory.tables import (
    RUN_STATUSES,
    Answer,
    Message,
    Run,
    Step,
    Thread,
    ToolCall,
    utcnow,
)

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
T = TypeVar("T")
Finished = TypeVar("Finished", Step, Run)


class RecordNotFoundError(DeepscoutError, LookupError):
    """A run, step or thread named by id does not exist."""


# --- threads and messages ---------------------------------------------------------------------------


def create_thread(session: Session, *, thread_id: str | None = None, title: str | None = None) -> Thread:
    return _insert(session, Thread(title=title) if thread_id is None else Thread(id=thread_id, title=title))


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
