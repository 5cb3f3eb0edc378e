"""indexes for worlds at scale (about 10M interactions, 100k items, 200k users)

Revision ID: 0009_scale_indexes
Revises: 0008
Create Date: 2026-12-16 09:00:00

``impressions`` had no index on its user: per-user reads of the impressions log (the
both-arms exclusion of the online analysis, a user's served items) scanned the table.
Works on SQLite and PostgreSQL alike (plain B-tree indexes). docs/scaling.md shows the
query plans before and after.
"""

from alembic import op

revision = "0009_scale_indexes"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("impressions", schema=None) as batch_op:
        batch_op.create_index("ix_impressions_user_time", ["user_id", "served_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("impressions", schema=None) as batch_op:
        batch_op.drop_index("ix_impressions_user_time")
