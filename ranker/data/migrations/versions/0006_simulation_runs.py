"""simulation_runs: a record per run of simulated traffic, so a crashed run is resumed or discarded

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 09:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "simulation_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("unfinished", sa.Boolean(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("requests_per_day", sa.Integer(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("start_clock", sa.DateTime(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("request", sa.Integer(), nullable=False),
        sa.Column("items_day", sa.Integer(), nullable=True),
        sa.Column("new_items", sa.Integer(), nullable=False),
        sa.Column("lease", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_started", sa.String(length=40), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    # One unfinished run at a time: NULLs (finished or discarded runs) do not collide.
    op.create_index("uq_simulation_runs_unfinished", "simulation_runs", ["unfinished"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_simulation_runs_unfinished", table_name="simulation_runs")
    op.drop_table("simulation_runs")
