"""model_files and model_versions.sha256: a model store every serving replica can read

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-14 09:00:00

``model_files`` holds each version's checkpoint bytes when ``RANKER_MODEL_STORE=db``;
``model_versions.sha256`` records the hash of the bytes registered, which every replica
checks before serving them. Versions registered earlier keep a NULL hash (not checked).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_files",
        sa.Column("version", sa.String(length=60), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("sha256")
    op.drop_table("model_files")
