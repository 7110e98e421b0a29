"""Segmentations know the image they label.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("labels_of", sa.Integer, nullable=True))
        batch.create_foreign_key("fk_images_labels_of", "images", ["labels_of"], ["id"], ondelete="CASCADE")


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint("fk_images_labels_of", type_="foreignkey")
        batch.drop_column("labels_of")
