"""The server's chat threads and research jobs: thread owners, jobs with their status, and their events.

Revision ID: 0003_server
Revises: 0002_evals
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_server"
down_revision: str | None = "0002_evals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")


def upgrade() -> None:
    op.add_column("threads", sa.Column("owner", sa.String(64)))
    op.create_index("ix_threads_owner", "threads", ["owner"])
    op.create_table(
        "research_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "thread_id", sa.String(64), sa.ForeignKey("threads.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="SET NULL")),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("options", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP),
        sa.CheckConstraint(f"status IN {JOB_STATUSES!r}", name="ck_research_jobs_status"),
    )
    op.create_index("ix_research_jobs_thread_id", "research_jobs", ["thread_id"])
    op.create_index("ix_research_jobs_created_at", "research_jobs", ["created_at"])
    op.create_table(
        "research_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "job_id", sa.String(64), sa.ForeignKey("research_jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.UniqueConstraint("job_id", "seq", name="uq_research_events_job_seq"),
    )


def downgrade() -> None:
    op.drop_table("research_events")
    op.drop_index("ix_research_jobs_created_at", table_name="research_jobs")
    op.drop_index("ix_research_jobs_thread_id", table_name="research_jobs")
    op.drop_table("research_jobs")
    op.drop_index("ix_threads_owner", table_name="threads")
    with op.batch_alter_table("threads") as batch:
        batch.drop_column("owner")
