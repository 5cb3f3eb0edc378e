"""daily_user_metrics and daily_metrics: the served-traffic log rolled up per day

Revision ID: 0010_daily_rollups
Revises: 0009_scale_indexes
Create Date: 2026-12-16 12:00:00

The dashboard's metric pages read these instead of scanning ``impressions``, ``outcomes``
and ``interactions`` on every render. ``ranker.data.rollups.refresh`` fills them (the first
refresh after this migration rolls up the whole log); until then readers fall back to the
live log. Works on SQLite and PostgreSQL alike.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_daily_rollups"
down_revision = "0009_scale_indexes"
branch_labels = None
depends_on = None

KEYS = ("day", "flow", "source", "arm")


def _key_columns() -> list[sa.Column]:
    return [sa.Column("day", sa.Date(), nullable=False), sa.Column("flow", sa.String(length=40), nullable=False),
            sa.Column("source", sa.String(length=20), nullable=False),
            sa.Column("arm", sa.String(length=20), nullable=False)]


def _sum_columns() -> list[sa.Column]:
    counts = ("impressions", "clicks", "feedback", "lists", "trending_lists", "served_lists")
    sums = ("ild_sum", "coverage_sum", "entropy_sum", "age_sum")
    return ([sa.Column(c, sa.Integer(), nullable=False) for c in counts]
            + [sa.Column(c, sa.Float(), nullable=False) for c in sums])


def upgrade() -> None:
    op.create_table(
        "daily_user_metrics",
        *_key_columns(),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("cohort", sa.String(length=12), nullable=False),
        *_sum_columns(),
        sa.PrimaryKeyConstraint(*KEYS, "user_id", "cohort"),
    )
    op.create_table("daily_metrics", *_key_columns(), *_sum_columns(), sa.PrimaryKeyConstraint(*KEYS))
    _forget_state()


def _forget_state() -> None:
    """Drop the rollups' watermark (ranker.keys.ROLLUPS): empty tables must not be read as rolled up."""
    op.execute(sa.text("DELETE FROM settings WHERE key = 'rollups'"))


def downgrade() -> None:
    _forget_state()
    op.drop_table("daily_metrics")
    op.drop_table("daily_user_metrics")
