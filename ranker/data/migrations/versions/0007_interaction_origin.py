"""interactions.origin: organic events apart from the outcomes of served lists

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 09:00:00

Existing rows become ``organic``, except those written as the outcome of an impression
(an outcome with the same user, item, kind and time): those become ``impression``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", sa.String(length=12), nullable=False, server_default="organic"))
    # One pass over the outcomes, each found in interactions through (user_id, created_at).
    op.execute(sa.text(
        "UPDATE interactions SET origin = 'impression' WHERE id IN ("
        "SELECT x.id FROM outcomes o JOIN impressions i ON i.id = o.impression_id "
        "JOIN interactions x ON x.user_id = i.user_id AND x.created_at = o.created_at "
        "AND x.item_id = i.item_id AND x.kind = o.kind)"))


def downgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_column("origin")
