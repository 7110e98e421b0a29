"""Bulk creates into large layers: the versions' cell index without the start time, (layer, cell, end time), and
no foreign keys on the versions' layer and author.

Readers of a cell range fetch each version's row anyway (its box, geometry and times), and the random inserts of a
bulk create into this index cost in proportion to its pages, which the start time (a timestamp in every entry)
more than doubled. A version's layer is its annotation's, whose own key cascades a layer's deletion to it, and
accounts are disabled, never deleted: PostgreSQL checked both keys of every new version by a trigger.

SQLite cannot drop a foreign key in place: the table is copied (``annotations.db.migrate`` turns SQLite's foreign
keys off around migrations, so dropping the old copy cascades to nothing).

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"

# SQLite's foreign keys have no names: batch mode names them by this convention to find them.
NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
KEYS = (("layer_id", "annotation_layers", "CASCADE"), ("author_id", "accounts", "SET NULL"))


def upgrade() -> None:
    op.drop_index("ix_annotation_versions_cell", "annotation_versions")
    op.create_index("ix_annotation_versions_cell", "annotation_versions", ["layer_id", "cell", "valid_to"])
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("annotation_versions", naming_convention=NAMES, recreate="always") as batch:
            for column, table, _ in KEYS:
                batch.drop_constraint(f"fk_annotation_versions_{column}_{table}", type_="foreignkey")
    else:
        for column, _, _ in KEYS:
            op.drop_constraint(f"annotation_versions_{column}_fkey", "annotation_versions", type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("annotation_versions") as batch:
        for column, table, action in KEYS:
            batch.create_foreign_key(f"annotation_versions_{column}_fkey", table, [column], ["id"], ondelete=action)
    op.drop_index("ix_annotation_versions_cell", "annotation_versions")
    op.create_index("ix_annotation_versions_cell", "annotation_versions",
                    ["layer_id", "cell", "valid_to", "valid_from"])
