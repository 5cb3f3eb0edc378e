"""serving API: model activation history, idempotent outcomes, request source and context

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:50:00
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=60), nullable=False),
        sa.Column("activated_at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=80), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_activations_activated_at", "model_activations", ["activated_at"])
    # Earlier activations are in the audit log: carry them over, oldest first.
    conn = op.get_bind()
    audit = sa.table("audit_log", sa.column("at", sa.DateTime), sa.column("actor", sa.String),
                     sa.column("action", sa.String), sa.column("details", sa.JSON), sa.column("id", sa.Integer))
    rows = conn.execute(sa.select(audit.c.at, audit.c.actor, audit.c.details)
                        .where(audit.c.action == "model_activate").order_by(audit.c.id)).all()
    history = [{"version": str((d or {}).get("version", "?"))[:60], "activated_at": at, "actor": actor}
               for at, actor, d in rows]
    if history:
        table = sa.table("model_activations", sa.column("version", sa.String),
                         sa.column("activated_at", sa.DateTime), sa.column("actor", sa.String))
        conn.execute(sa.insert(table), history)

    # Feedback is idempotent: one outcome of each kind per impression. Drop older duplicates first.
    conn.execute(sa.text(
        "DELETE FROM outcomes WHERE id NOT IN "
        "(SELECT min_id FROM (SELECT MIN(id) AS min_id FROM outcomes GROUP BY impression_id, kind) AS keep)"))
    op.create_index("uq_outcomes_impression_kind", "outcomes", ["impression_id", "kind"], unique=True)

    with op.batch_alter_table("served_lists", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("context", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("served_lists", schema=None) as batch_op:
        batch_op.drop_column("context")
        batch_op.drop_column("source")
    op.drop_index("uq_outcomes_impression_kind", table_name="outcomes")
    op.drop_index("ix_model_activations_activated_at", table_name="model_activations")
    op.drop_table("model_activations")
