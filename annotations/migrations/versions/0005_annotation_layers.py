"""Annotation layers, annotations and their append-only versions, related segment ids.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def _when(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "annotation_layers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("lower_bound", sa.JSON, nullable=False),
        sa.Column("upper_bound", sa.JSON, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("max_extent", sa.Float, nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True),
        _when("created_at"),
        _when("updated_at"),
        sa.UniqueConstraint("dataset_id", "name"),
    )
    op.create_index("ix_annotation_layers_dataset_id", "annotation_layers", ["dataset_id"])
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("layer_id", sa.Integer, sa.ForeignKey("annotation_layers.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("created_by", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True),
        _when("created_at"),
    )
    op.create_index("ix_annotations_layer_id", "annotations", ["layer_id"])
    op.create_table(
        "annotation_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("annotation_id", sa.Integer, sa.ForeignKey("annotations.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("layer_id", sa.Integer, sa.ForeignKey("annotation_layers.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("geometry", sa.JSON, nullable=False),
        sa.Column("label", sa.String(64), nullable=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("properties", sa.JSON, nullable=False),
        sa.Column("segments", sa.JSON, nullable=False),
        sa.Column("author_id", sa.Integer, sa.ForeignKey("accounts.id", ondelete="SET NULL"), nullable=True),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("cell", sa.BigInteger, nullable=False),
        sa.Column("sample_key", sa.Float, nullable=False),
        *[sa.Column(name, sa.Float, nullable=False) for name in ("x0", "y0", "z0", "x1", "y1", "z1", "extent")],
        _when("valid_from"),
        _when("valid_to", nullable=True),
    )
    op.create_index("ix_annotation_versions_current_cell", "annotation_versions", ["layer_id", "valid_to", "cell"])
    op.create_index("ix_annotation_versions_annotation", "annotation_versions", ["annotation_id", "valid_from"])
    op.create_index("ix_annotation_versions_layer_time", "annotation_versions", ["layer_id", "valid_from"])
    op.create_table(
        "annotation_segments",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("annotation_versions.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("relationship", sa.Integer, primary_key=True),
        sa.Column("segment_id", sa.BigInteger, primary_key=True),
        sa.Column("layer_id", sa.Integer, sa.ForeignKey("annotation_layers.id", ondelete="CASCADE"),
                  nullable=False),
    )
    op.create_index("ix_annotation_segments_lookup", "annotation_segments", ["layer_id", "relationship", "segment_id"])


def downgrade() -> None:
    for table in ("annotation_segments", "annotation_versions", "annotations", "annotation_layers"):
        op.drop_table(table)
