"""experiments: a record per A/B experiment (arms, allocation, owner, window on the serve clock)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 06:30:00
"""
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("allocation", sa.Float(), nullable=False),
        sa.Column("salt", sa.String(length=80), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("owner", sa.String(length=80), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    # An experiment an operator saved before this table existed becomes its first record,
    # starting at its first served list. A database that never saved one has no experiment:
    # nobody started it.
    conn = op.get_bind()
    settings = sa.table("settings", sa.column("key", sa.String), sa.column("value", sa.JSON))
    saved = conn.execute(sa.select(settings.c.value).where(settings.c.key == "experiment")).scalar()
    raw = (saved or {}).get("v") if isinstance(saved, dict) else None
    if not raw or not raw.get("running", True):
        return
    served = sa.table("served_lists", sa.column("served_at", sa.DateTime))
    first = conn.execute(sa.select(sa.func.min(served.c.served_at))).scalar()
    started = first if isinstance(first, datetime) else datetime.fromisoformat(str(first)) if first else None
    if started is None:
        started = datetime.fromisoformat(raw["started_at"]) if raw.get("started_at") else datetime.utcnow()
    salt = str(raw.get("salt") or "ranker-ab-1")[:80]
    record = sa.table("experiments", sa.column("name", sa.String), sa.column("arms", sa.JSON),
                      sa.column("allocation", sa.Float), sa.column("salt", sa.String),
                      sa.column("started_at", sa.DateTime), sa.column("owner", sa.String))
    new_id = conn.execute(sa.insert(record).values(
        name=salt, arms=["control", "treatment"], allocation=float(raw.get("rollout", 50.0)), salt=salt,
        started_at=started, owner="migration").returning(sa.literal_column("id"))).scalar()
    raw = {**raw, "id": new_id, "name": salt, "started_at": started.isoformat()}
    conn.execute(sa.update(settings).where(settings.c.key == "experiment").values(value={"v": raw}))


def downgrade() -> None:
    op.drop_table("experiments")
