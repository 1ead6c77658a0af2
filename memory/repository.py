"""Reading and writing runs, sources and the search cache: keyword-only functions taking a Session.

The caller owns the transaction. Wrap writes in ``deepscout.memory.db.write_session(session_factory)``
(short transactions: never hold one across a model call or a network fetch); reads can use a plain
``session_factory()`` session. Functions flush so that generated ids are set on the returned objects.

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
    ``add_tool_call(s, *, run_id, name, arguments, step_id=None, call_id=None, output=None, status="ok",
    error=None, source_ids=None, started_at=None, finished_at=None)``;
    ``finish_run(s, *, run_id, status, error=None, usage=None)`` (status: succeeded|failed|interrupted);
    ``save_answer(s, *, run_id, text, citations, meta=None)`` (replaces an earlier answer of the run);
    ``get_run(s, *, run_id)``, ``get_answer(s, *, run_id)``, ``list_runs(s, *, status=None, limit=50)``.

Sources (corpus documents and web pages share one table; see docs/architecture.md)
    ``upsert_source(s, *, key, kind, title, text, ...)`` → Source, inserted or updated by ``key``;
    ``upsert_page(s, *, url, final_url, title, text, http_status, ...)`` → the page under
    ``web:<final_url>``; ``find_page(s, *, url)`` → the stored page requested as, or redirected to, ``url``;
    ``get_source(s, *, source_id)``, ``get_sources(s, *, source_ids)`` (in the order asked),
    ``get_source_by_key(s, *, key)``; ``corpus_source_key``, ``web_source_key``, ``content_hash``,
    ``clean_text``/``clean_json`` (text and meta are stored without NUL characters or lone surrogates).

Web search cache (keyed by normalised query, backend, region and time limit; the reader applies the TTL)
    ``search_cache_get(s, *, query, backend, region=None, timelimit=None, max_age, now=None)`` → the cached
    results or None when absent or older than ``max_age``;
    ``search_cache_put(s, *, query, backend, region=None, timelimit=None, results)`` (replaces).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deepscout.errors import DeepscoutError
from deepscout.memory.tables import (
    RUN_STATUSES,
    SOURCE_KINDS,
    Answer,
    Message,
    Run,
    SearchCacheEntry,
    Source,
    Step,
    Thread,
    ToolCall,
    utcnow,
)

MESSAGE_ROLES = ("system", "user", "assistant", "tool")
T = TypeVar("T")
_SURROGATE = re.compile("[\ud800-\udfff]")


class RecordNotFoundError(DeepscoutError, LookupError):
    """A run, step or thread named by id does not exist."""


# --- threads and messages ---------------------------------------------------------------------------


def create_thread(session: Session, *, thread_id: str | None = None, title: str | None = None) -> Thread:
    thread = Thread(title=title) if thread_id is None else Thread(id=thread_id, title=title)
    session.add(thread)
    session.flush()
    return thread


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
    _require(session, Thread, thread_id)
    message = Message(thread_id=thread_id, role=role, content=content, run_id=run_id, meta=meta or {})
    session.add(message)
    thread = session.get(Thread, thread_id)
    if thread is not None:
        thread.updated_at = utcnow()
    session.flush()
    return message


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
    session.add(run)
    session.flush()
    return run


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
    session.add(step)
    session.flush()
    return step


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
    step.finished_at = utcnow()
    session.flush()
    return step


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
    session.add(call)
    session.flush()
    return call


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
    run.finished_at = utcnow()
    session.flush()
    return run


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
    answer = session.scalar(select(Answer).where(Answer.run_id == run_id))
    if answer is None:
        answer = Answer(run_id=run_id, text=text, citations=citations, meta=meta or {})
        session.add(answer)
    else:
        answer.text, answer.citations, answer.meta = text, citations, meta or {}
        answer.created_at = utcnow()
    session.flush()
    return answer


def get_answer(session: Session, *, run_id: str) -> Answer | None:
    return session.scalar(select(Answer).where(Answer.run_id == run_id))


# --- sources ----------------------------------------------------------------------------------------


def corpus_source_key(collection: str, doc_id: str) -> str:
    return f"corpus:{collection}:{doc_id}"


def web_source_key(final_url: str) -> str:
    return f"web:{final_url}"


def clean_text(value: str) -> str:
    """Text every database accepts: NUL characters dropped (PostgreSQL refuses them), lone surrogates
    (possible in JSON input) replaced by U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return _SURROGATE.sub("\ufffd", value)


def clean_json(value: Any) -> Any:
    """``value`` with :func:`clean_text` applied to every string in it (keys included)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def content_hash(title: str, text: str) -> str:
    """SHA-256 over title and text: what decides whether a stored document changed."""
    digest = hashlib.sha256()
    digest.update(title.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def upsert_source(
    session: Session,
    *,
    key: str,
    kind: str,
    title: str,
    text: str,
    collection: str | None = None,
    doc_id: str | None = None,
    url: str | None = None,
    final_url: str | None = None,
    http_status: int | None = None,
    content_type: str | None = None,
    author: str | None = None,
    published: str | None = None,
    fetched_at: datetime | None = None,
    meta: dict[str, Any] | None = None,
) -> Source:
    """Insert the source, or update the one with the same ``key`` (its id stays the same)."""
    if kind not in SOURCE_KINDS:
        raise ValueError(f"Source kind must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}")
    title, text = clean_text(title), clean_text(text)
    fields: dict[str, Any] = {
        "kind": kind,
        "title": title,
        "text": text,
        "content_hash": content_hash(title, text),
        "collection": collection,
        "doc_id": doc_id,
        "url": url,
        "final_url": final_url,
        "http_status": http_status,
        "content_type": content_type,
        "author": author,
        "published": published,
        "fetched_at": fetched_at,
        "meta": clean_json(meta or {}),
    }
    source = get_source_by_key(session, key=key)
    if source is None:
        try:
            with session.begin_nested():
                source = Source(key=key, **fields)
                session.add(source)
            return source
        except IntegrityError:  # another writer inserted the same key in between (PostgreSQL)
            source = get_source_by_key(session, key=key)
            if source is None:
                raise
    for name, value in fields.items():
        setattr(source, name, value)
    session.flush()
    return source


def upsert_page(
    session: Session,
    *,
    url: str,
    final_url: str,
    title: str,
    text: str,
    http_status: int,
    content_type: str | None = None,
    author: str | None = None,
    published: str | None = None,
    fetched_at: datetime | None = None,
    meta: dict[str, Any] | None = None,
) -> Source:
    """Store a fetched web page under ``web:<final_url>``; ``url`` is the address that was requested."""
    return upsert_source(
        session,
        key=web_source_key(final_url),
        kind="web",
        title=title,
        text=text,
        url=url,
        final_url=final_url,
        http_status=http_status,
        content_type=content_type,
        author=author,
        published=published,
        fetched_at=fetched_at or utcnow(),
        meta=meta,
    )


def find_page(session: Session, *, url: str) -> Source | None:
    """The stored web page fetched from ``url`` or redirected to it (newest first), or None."""
    query = (
        select(Source)
        .where(Source.kind == "web", (Source.final_url == url) | (Source.url == url))
        .order_by(Source.fetched_at.desc(), Source.id.desc())
        .limit(1)
    )
    return session.scalar(query)


def get_source(session: Session, *, source_id: int) -> Source | None:
    return session.get(Source, source_id)


def get_sources(session: Session, *, source_ids: Sequence[int]) -> list[Source]:
    """The sources with these ids, in the order given; unknown ids are left out."""
    by_id = {s.id: s for s in session.scalars(select(Source).where(Source.id.in_(list(source_ids))))}
    return [by_id[i] for i in source_ids if i in by_id]


def get_source_by_key(session: Session, *, key: str) -> Source | None:
    return session.scalar(select(Source).where(Source.key == key))


# --- web search cache -------------------------------------------------------------------------------


def search_cache_key(*, query: str, backend: str, region: str | None, timelimit: str | None) -> str:
    """SHA-256 over the normalised query (whitespace collapsed, case folded), backend, region, time limit."""
    normalised = " ".join(query.split()).casefold()
    payload = json.dumps([normalised, backend, region, timelimit], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def search_cache_get(
    session: Session,
    *,
    query: str,
    backend: str,
    region: str | None = None,
    timelimit: str | None = None,
    max_age: timedelta,
    now: datetime | None = None,
) -> list[Any] | None:
    """The cached results, or None when there are none younger than ``max_age``."""
    key = search_cache_key(query=query, backend=backend, region=region, timelimit=timelimit)
    entry = session.scalar(select(SearchCacheEntry).where(SearchCacheEntry.key == key))
    if entry is None or entry.created_at < (now or utcnow()) - max_age:
        return None
    return list(entry.results)


def search_cache_put(
    session: Session,
    *,
    query: str,
    backend: str,
    region: str | None = None,
    timelimit: str | None = None,
    results: list[Any],
) -> SearchCacheEntry:
    """Store (or replace) the results for this query, stamped now."""
    key = search_cache_key(query=query, backend=backend, region=region, timelimit=timelimit)
    entry = session.scalar(select(SearchCacheEntry).where(SearchCacheEntry.key == key))
    if entry is None:
        try:
            with session.begin_nested():
                entry = SearchCacheEntry(
                    key=key, query=query, backend=backend, region=region, timelimit=timelimit, results=results
                )
                session.add(entry)
            return entry
        except IntegrityError:  # a concurrent writer stored the same key first (PostgreSQL)
            entry = session.scalar(select(SearchCacheEntry).where(SearchCacheEntry.key == key))
            if entry is None:
                raise
    entry.query, entry.results, entry.created_at = query, results, utcnow()
    session.flush()
    return entry


def _require(session: Session, model: type[T], ident: object) -> T:
    found = session.get(model, ident)
    if found is None:
        raise RecordNotFoundError(f"No {model.__name__.lower()} with id {ident!r}")
    return found
