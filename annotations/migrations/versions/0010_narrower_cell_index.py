"""The versions' cell index without the start time: (layer, cell, end time). Readers of a cell range fetch each
version's row anyway (its box, geometry and times), and the random inserts of a bulk create into this index cost
in proportion to its pages, which the start time (a timestamp in every entry) more than doubled.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.drop_index("ix_annotation_versions_cell", "annotation_versions")
    op.create_index("ix_annotation_versions_cell", "annotation_versions", ["layer_id", "cell", "valid_to"])


def downgrade() -> None:
    op.drop_index("ix_annotation_versions_cell", "annotation_versions")
    op.create_index("ix_annotation_versions_cell", "annotation_versions",
                    ["layer_id", "cell", "valid_to", "valid_from"])
