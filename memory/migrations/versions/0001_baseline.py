"""Baseline: threads, messages, runs, steps, tool calls, answers, sources (+ full-text index),
corpus collections and the web search cache.

Revision ID: 0001_baseline
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_baseline"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
# PostgreSQL: a tsvector holds at most 1 MB, so only the first 256 Ki characters of a text are indexed.
PG_INDEXED_CHARS = 262144


def upgrade() -> None:
    op.create_table(
        "threads",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("title", sa.Text()),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("thread_id", sa.String(64), sa.ForeignKey("threads.id", ondelete="SET NULL")),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("manifest", JSON, nullable=False),
        sa.Column("seed", sa.Integer()),
        sa.Column("sampling", JSON, nullable=False),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'failed', 'interrupted')", name="ck_runs_status"
        ),
    )
    op.create_index("ix_runs_thread_id", "runs", ["thread_id"])
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "thread_id", sa.String(64), sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="SET NULL")),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_messages_thread_id", "messages", ["thread_id"])
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
        sa.UniqueConstraint("run_id", "index", name="uq_steps_run_index"),
    )
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step_id", sa.Integer(), sa.ForeignKey("steps.id", ondelete="SET NULL")),
        sa.Column("call_id", sa.String(128)),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("arguments", JSON, nullable=False),
        sa.Column("output", sa.Text()),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("source_ids", JSON, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
        sa.CheckConstraint("status IN ('ok', 'error')", name="ck_tool_calls_status"),
    )
    op.create_index("ix_tool_calls_run_id", "tool_calls", ["run_id"])
    op.create_table(
        "answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "run_id",
            sa.String(64),
            sa.ForeignKey("runs.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("citations", JSON, nullable=False),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "corpus_collections",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("description", sa.Text()),
        sa.Column("document_count", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.Text(), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("collection", sa.String(128)),
        sa.Column("doc_id", sa.Text()),
        sa.Column("url", sa.Text()),
        sa.Column("final_url", sa.Text()),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("http_status", sa.Integer()),
        sa.Column("content_type", sa.String(255)),
        sa.Column("author", sa.Text()),
        sa.Column("published", sa.String(64)),
        sa.Column("fetched_at", TIMESTAMP),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("kind IN ('corpus', 'web')", name="ck_sources_kind"),
    )
    op.create_index("ix_sources_collection", "sources", ["collection"])
    op.create_index("ix_sources_url", "sources", ["url"])
    op.create_index("ix_sources_final_url", "sources", ["final_url"])
    op.create_table(
        "search_cache",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("backend", sa.String(64), nullable=False),
        sa.Column("region", sa.String(32)),
        sa.Column("timelimit", sa.String(16)),
        sa.Column("results", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
    )

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _create_sqlite_fts()
    elif dialect == "postgresql":
        _create_postgresql_fts()


def _create_sqlite_fts() -> None:
    # External-content FTS5 index over sources(title, text): Porter stemming measured best on HotpotQA
    # (benchmarks/corpus_retrieval.py); diacritics folded so "Alû" matches "Alu".
    op.execute(
        "CREATE VIRTUAL TABLE sources_fts USING fts5(title, text, content='sources', content_rowid='id', "
        "tokenize='porter unicode61 remove_diacritics 2')"
    )
    op.execute(
        "CREATE TRIGGER sources_fts_insert AFTER INSERT ON sources BEGIN "
        "INSERT INTO sources_fts(rowid, title, text) VALUES (new.id, new.title, new.text); END"
    )
    unindex_old = (
        "INSERT INTO sources_fts(sources_fts, rowid, title, text) "
        "VALUES ('delete', old.id, old.title, old.text);"
    )
    op.execute(f"CREATE TRIGGER sources_fts_delete AFTER DELETE ON sources BEGIN {unindex_old} END")
    op.execute(
        f"CREATE TRIGGER sources_fts_update AFTER UPDATE OF title, text ON sources BEGIN {unindex_old} "
        "INSERT INTO sources_fts(rowid, title, text) VALUES (new.id, new.title, new.text); END"
    )


def _create_postgresql_fts() -> None:
    op.execute(
        "ALTER TABLE sources ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ("
        "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') || "
        f"setweight(to_tsvector('english'::regconfig, left(coalesce(text, ''), {PG_INDEXED_CHARS})), 'B')"
        ") STORED"
    )
    op.execute("CREATE INDEX ix_sources_search_vector ON sources USING gin (search_vector)")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for trigger in ("sources_fts_insert", "sources_fts_delete", "sources_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS sources_fts")
    for table in (
        "search_cache",
        "sources",
        "corpus_collections",
        "answers",
        "tool_calls",
        "steps",
        "messages",
        "runs",
        "threads",
    ):
        op.drop_table(table)
