"""Eval runs, the systems' answers and the pairwise verdicts.

Revision ID: 0002_evals
Revises: 0001_baseline
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_evals"
down_revision: str | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("dataset", sa.Text(), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("manifest", JSON, nullable=False),
        sa.Column("items", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    op.create_table(
        "eval_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "eval_run_id", sa.String(64), sa.ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("eval_run_id", "item_id", "system", name="uq_eval_answers_item"),
    )
    op.create_index("ix_eval_answers_eval_run_id", "eval_answers", ["eval_run_id"])
    op.create_table(
        "eval_verdicts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "eval_run_id", sa.String(64), sa.ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("item_id", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.UniqueConstraint("eval_run_id", "item_id", name="uq_eval_verdicts_item"),
    )
    op.create_index("ix_eval_verdicts_eval_run_id", "eval_verdicts", ["eval_run_id"])


def downgrade() -> None:
    op.drop_table("eval_verdicts")
    op.drop_table("eval_answers")
    op.drop_table("eval_runs")
