"""Registration transforms with provenance, and each dataset's reference image.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("reference_image", sa.String(64), nullable=True))
    op.create_table(
        "image_transforms",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column(
            "reference_image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("dimensions", sa.Integer, nullable=False),
        sa.Column("matrix", sa.JSON, nullable=True),
        sa.Column("landmarks", sa.JSON, nullable=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("fit", sa.String(16), nullable=True),
        sa.Column("residuals_nm", sa.JSON, nullable=True),
        sa.Column("rms_nm", sa.Float, nullable=True),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_image_transforms_image_id", "image_transforms", ["image_id"])


def downgrade() -> None:
    op.drop_index("ix_image_transforms_image_id", "image_transforms")
    op.drop_table("image_transforms")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("reference_image")
