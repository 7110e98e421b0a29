"""The spatial index of each layer's current annotations, kept in the database: cell entries with encoded
records, per-cell counts, the per-layer cell limit, and one index on versions by cell and time (as-of reads).

Existing layers get limit 2000 (the default) and their index built from their current versions, by the
code that keeps it (``annotations.spatial_rows.rebuild``, on the tables as this revision defines them).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def _layer_id() -> sa.Column:
    return sa.Column("layer_id", sa.Integer, primary_key=True, autoincrement=False)  # derived rows: no foreign key


def upgrade() -> None:
    op.add_column("annotation_layers", sa.Column("cell_limit", sa.Integer, nullable=False, server_default="2000"))
    op.create_table(
        "annotation_cell_entries",
        _layer_id(),
        sa.Column("kind", sa.SmallInteger, primary_key=True),
        sa.Column("level", sa.SmallInteger, primary_key=True),
        sa.Column("cell", sa.BigInteger, primary_key=True),
        sa.Column("sample_key", sa.Float, primary_key=True),
        sa.Column("annotation_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "annotation_cell_counts",
        _layer_id(),
        sa.Column("kind", sa.SmallInteger, primary_key=True),
        sa.Column("level", sa.SmallInteger, primary_key=True),
        sa.Column("cell", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("max_key", sa.Float, nullable=False),
        sqlite_with_rowid=False,
    )
    op.drop_index("ix_annotation_versions_current_cell", "annotation_versions")
    op.create_index("ix_annotation_versions_cell", "annotation_versions",
                    ["layer_id", "cell", "valid_to", "valid_from"])
    # A layer's annotations in id order (listings, exports) without sorting the layer.
    op.create_index("ix_annotation_versions_layer_order", "annotation_versions", ["layer_id", "annotation_id"])

    from annotations.spatial_rows import rebuild

    connection = op.get_bind()
    for (layer_id,) in connection.execute(sa.text("SELECT id FROM annotation_layers ORDER BY id")).all():
        rebuild(connection, layer_id)


def downgrade() -> None:
    op.drop_index("ix_annotation_versions_layer_order", "annotation_versions")
    op.drop_index("ix_annotation_versions_cell", "annotation_versions")
    op.create_index("ix_annotation_versions_current_cell", "annotation_versions", ["layer_id", "valid_to", "cell"])
    op.drop_table("annotation_cell_counts")
    op.drop_table("annotation_cell_entries")
    op.drop_column("annotation_layers", "cell_limit")
