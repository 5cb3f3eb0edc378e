"""indexes the hot queries need at scale (the xlarge world: 10M interactions, 8.6M impressions)

Revision ID: 0009_scale_indexes
Revises: 0008
Create Date: 2026-12-16 09:00:00

Measured on the xlarge world on PostgreSQL (docs/scaling.md, "PostgreSQL at 10M interactions"):

* ``ix_impressions_item``: deleting an item (the simulator's rollback of an unfinished day deletes
  the items it added) runs the foreign key's ``ON DELETE CASCADE`` on ``impressions.item_id``, which
  had no index: a scan of every impression per item deleted (about 2 s each).
* ``ix_impressions_ranker_served``: a partial index on ``served_at`` of the impressions that are
  ranker training data (``model_version`` neither ``trending`` nor ``legacy``, as
  ``ranker.rank.dataset.NOT_RANKER_DATA`` says). The dataset builder's first and last such
  impression walked ``ix_impressions_served`` through every legacy impression first (7 to 14 s).

Both are plain B-tree indexes; SQLite builds them too (it uses the partial one only for queries
that spell the same literals).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_scale_indexes"
down_revision = "0008"
branch_labels = None
depends_on = None

#: The partial index's condition: impressions that are ranker data (NOT_RANKER_DATA is excluded).
RANKER_DATA = sa.text("model_version NOT IN ('trending', 'legacy')")


def upgrade() -> None:
    with op.batch_alter_table("impressions", schema=None) as batch_op:
        batch_op.create_index("ix_impressions_item", ["item_id"], unique=False)
        batch_op.create_index("ix_impressions_ranker_served", ["served_at"], unique=False,
                              sqlite_where=RANKER_DATA, postgresql_where=RANKER_DATA)


def downgrade() -> None:
    with op.batch_alter_table("impressions", schema=None) as batch_op:
        batch_op.drop_index("ix_impressions_ranker_served")
        batch_op.drop_index("ix_impressions_item")
