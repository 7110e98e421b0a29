"""Shared views: frozen copies of a viewer state behind a short link.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "shared_views",
        sa.Column("code", sa.String(32), primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_shared_views_dataset_id", "shared_views", ["dataset_id"])


def downgrade() -> None:
    op.drop_table("shared_views")
