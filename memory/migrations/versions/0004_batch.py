"""Batch research jobs: the batch (input, output folder, options, driver lease) and its records, each
beside the research job that holds its question, status, run and checkpoint thread.

Revision ID: 0004_batch
Revises: 0003_server
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_batch"
down_revision: str | None = "0003_server"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")


def upgrade() -> None:
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "thread_id", sa.String(64), sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("input_path", sa.Text(), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("out_dir", sa.Text(), nullable=False, unique=True),
        sa.Column("options", JSON, nullable=False),
        sa.Column("problems", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("driver", sa.String(255)),
        sa.Column("heartbeat_at", TIMESTAMP),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
        sa.CheckConstraint(f"status IN {JOB_STATUSES!r}", name="ck_batch_jobs_status"),
    )
    op.create_index("ix_batch_jobs_thread_id", "batch_jobs", ["thread_id"])
    op.create_table(
        "batch_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "batch_id", sa.String(64), sa.ForeignKey("batch_jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "job_id",
            sa.String(64),
            sa.ForeignKey("research_jobs.id", ondelete="CASCADE"),
            nullable=False,
            unique=True,
        ),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("meta", JSON, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", JSON),
        sa.Column("finished_seq", sa.Integer()),
        sa.UniqueConstraint("batch_id", "key", name="uq_batch_records_key"),
    )
    op.create_index("ix_batch_records_batch_id", "batch_records", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_batch_records_batch_id", table_name="batch_records")
    op.drop_table("batch_records")
    op.drop_index("ix_batch_jobs_thread_id", table_name="batch_jobs")
    op.drop_table("batch_jobs")
