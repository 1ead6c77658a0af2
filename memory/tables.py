"""The database tables, as SQLAlchemy 2.0 ``Mapped`` classes.

The schema itself is created by the Alembic migrations in ``deepscout.memory.migrations`` (never by
``metadata.create_all``), so these classes and the baseline revision are kept in step by a test that
compares them. Full-text indexes are dialect-specific and live only in the migration: SQLite gets an
FTS5 table ``sources_fts`` kept in sync by triggers, PostgreSQL a generated ``tsvector`` column with a
GIN index.

Identifiers: threads and runs have string ids (UUID hex, chosen by the caller or generated) so that they
can be named before they are stored (LangGraph thread ids, eval run ids); everything else has an integer id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

JSONType = JSON().with_variant(JSONB(), "postgresql")
SOURCE_KINDS = ("corpus", "web")
RUN_STATUSES = ("running", "succeeded", "failed", "interrupted")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive; it is read back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        datetime: UTCDateTime(),
    }


class Thread(Base):
    """A conversation: the messages of one chat, across the runs it started."""

    __tablename__ = "threads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    title: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    """Who may see the thread (the server's digest of an API token); None: not a chat thread."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    messages: Mapped[list[Message]] = relationship(
        back_populates="thread", cascade="all, delete-orphan", order_by="Message.id"
    )


class Message(Base):
    """One chat message of a thread (user, assistant or system)."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    thread: Mapped[Thread] = relationship(back_populates="messages")


class Run(Base):
    """One research run: the question, everything needed to reproduce it, its outcome and its cost."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(f"status IN {RUN_STATUSES!r}", name="ck_runs_status"),
        Index("ix_runs_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    thread_id: Mapped[str | None] = mapped_column(ForeignKey("threads.id", ondelete="SET NULL"), index=True)
    question: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="running")
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int | None] = mapped_column(Integer)
    sampling: Mapped[dict[str, Any]] = mapped_column(default=dict)
    usage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

    steps: Mapped[list[Step]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="Step.index"
    )
    tool_calls: Mapped[list[ToolCall]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="ToolCall.id"
    )
    answer: Mapped[Answer | None] = relationship(back_populates="run", cascade="all, delete-orphan")


class Step(Base):
    """One node execution of the agent graph (plan, act, read, reflect, answer) with its token counts."""

    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("run_id", "index", name="uq_steps_run_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    usage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

    run: Mapped[Run] = relationship(back_populates="steps")


class ToolCall(Base):
    """One tool invocation: arguments, output (as given to the model), outcome and the sources it touched."""

    __tablename__ = "tool_calls"
    __table_args__ = (
        CheckConstraint("status IN ('ok', 'error')", name="ck_tool_calls_status"),
        Index("ix_tool_calls_run_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step_id: Mapped[int | None] = mapped_column(ForeignKey("steps.id", ondelete="SET NULL"))
    call_id: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(128))
    arguments: Mapped[dict[str, Any]] = mapped_column(default=dict)
    output: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8), default="ok")
    error: Mapped[str | None] = mapped_column(Text)
    source_ids: Mapped[list[Any]] = mapped_column(default=list)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()

    run: Mapped[Run] = relationship(back_populates="tool_calls")


class Answer(Base):
    """The final answer of a run, with its resolved citations (``[n]`` → source)."""

    __tablename__ = "answers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), unique=True)
    text: Mapped[str] = mapped_column(Text)
    citations: Mapped[list[Any]] = mapped_column(default=list)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    run: Mapped[Run] = relationship(back_populates="answer")


class ResearchJob(Base):
    """One question asked in a chat thread through the server: its status and the events it streamed.

    The id is also the agent's checkpoint thread, so an interrupted job resumes where it stopped.
    """

    __tablename__ = "research_jobs"
    __table_args__ = (
        CheckConstraint(f"status IN {JOB_STATUSES!r}", name="ck_research_jobs_status"),
        Index("ix_research_jobs_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    question: Mapped[str] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class ResearchEvent(Base):
    """One progress event of a research job, numbered 1, 2, 3… (the SSE event id)."""

    __tablename__ = "research_events"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_research_events_job_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("research_jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class BatchJob(Base):
    """One batch of research records (``deepscout batch``): its input, output folder, options and driver.

    Each record is a :class:`ResearchJob` of the batch's thread (``thread_id``), with a :class:`BatchRecord`
    beside it; ``driver`` and ``heartbeat_at`` are the lease of the process running the batch.
    """

    __tablename__ = "batch_jobs"
    __table_args__ = (CheckConstraint(f"status IN {JOB_STATUSES!r}", name="ck_batch_jobs_status"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    thread_id: Mapped[str] = mapped_column(ForeignKey("threads.id", ondelete="CASCADE"), index=True)
    input_path: Mapped[str] = mapped_column(Text)
    input_hash: Mapped[str] = mapped_column(String(64))
    out_dir: Mapped[str] = mapped_column(Text, unique=True)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    problems: Mapped[list[Any]] = mapped_column(default=list)
    """Input records skipped (bad or duplicate): ``{"line": n, "reason": "..."}``."""
    status: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text)
    driver: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class BatchRecord(Base):
    """One record of a batch: its research job (question, options, status, run, checkpoint thread), where
    it came from, and its output line once finished (``result``, numbered ``finished_seq`` in finishing
    order)."""

    __tablename__ = "batch_records"
    __table_args__ = (UniqueConstraint("batch_id", "key", name="uq_batch_records_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batch_jobs.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("research_jobs.id", ondelete="CASCADE"), unique=True)
    line: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(128))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    finished_seq: Mapped[int | None] = mapped_column(Integer)


class CorpusCollection(Base):
    """A named set of corpus documents, with a hash over its documents for run manifests."""

    __tablename__ = "corpus_collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    document_count: Mapped[int] = mapped_column(Integer, default=0)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Source(Base):
    """A document the agent can read and cite: a corpus document or a fetched web page, stored whole.

    ``key`` is ``corpus:<collection>:<doc_id>`` or ``web:<final url>``.
    """

    __tablename__ = "sources"
    __table_args__ = (
        CheckConstraint(f"kind IN {SOURCE_KINDS!r}", name="ck_sources_kind"),
        Index("ix_sources_collection", "collection"),
        Index("ix_sources_url", "url"),
        Index("ix_sources_final_url", "final_url"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    collection: Mapped[str | None] = mapped_column(String(128))
    doc_id: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    final_url: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    content_hash: Mapped[str] = mapped_column(String(64))
    http_status: Mapped[int | None] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(String(255))
    author: Mapped[str | None] = mapped_column(Text)
    published: Mapped[str | None] = mapped_column(String(64))
    fetched_at: Mapped[datetime | None] = mapped_column()
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SearchCacheEntry(Base):
    """Cached web search results; the reader applies the TTL (``created_at`` + max age)."""

    __tablename__ = "search_cache"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    query: Mapped[str] = mapped_column(Text)
    backend: Mapped[str] = mapped_column(String(64))
    region: Mapped[str | None] = mapped_column(String(32))
    timelimit: Mapped[str | None] = mapped_column(String(16))
    results: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalRun(Base):
    """One evaluation: its configuration-derived id, manifest and the items it covers."""

    __tablename__ = "eval_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    dataset: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    items: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EvalItemRecord:
    """The columns of a table holding records about single items of an eval run, as JSON (``payload``)."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    eval_run_id: Mapped[str] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EvalAnswer(EvalItemRecord, Base):
    """One system's answer to one eval item, with its sources and cost (``payload``)."""

    __tablename__ = "eval_answers"
    __table_args__ = (UniqueConstraint("eval_run_id", "item_id", "system", name="uq_eval_answers_item"),)

    system: Mapped[str] = mapped_column(String(64))


class EvalVerdict(EvalItemRecord, Base):
    """The pairwise judge's outcome on one item, both orders' reasons included (``payload``)."""

    __tablename__ = "eval_verdicts"
    __table_args__ = (UniqueConstraint("eval_run_id", "item_id", name="uq_eval_verdicts_item"),)

    outcome: Mapped[str] = mapped_column(String(8))


FULL_TEXT_OBJECTS = ("sources_fts", "search_vector", "ix_sources_search_vector")


def include_in_autogenerate(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic ``include_object`` hook: the dialect-specific full-text objects live only in migrations."""
    return not (name and name.startswith(FULL_TEXT_OBJECTS))
