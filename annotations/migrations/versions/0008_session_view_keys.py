"""Viewer sessions get a view key: the public name under which a session's view layers leave out what its own
edit layers hold (``editing=<key>`` views of the precomputed annotation sources), and those annotations' ids by
layer (``held``), kept beside the state so that a cell request need not read the state. Existing sessions get a
key each and their held ids from their stored record.

Revision ID: 0008
Revises: 0007
"""

import secrets

import sqlalchemy as sa
from alembic import op

from annotations.viewer_layers import held_by_layer

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("viewer_sessions", sa.Column("view_key", sa.String(32), nullable=True))
    op.add_column("viewer_sessions", sa.Column("held", sa.JSON, nullable=True))
    sessions = sa.table("viewer_sessions", sa.column("token", sa.String), sa.column("state", sa.JSON),
                        sa.column("view_key", sa.String), sa.column("held", sa.JSON))
    connection = op.get_bind()
    for token, state in connection.execute(sa.select(sessions.c.token, sessions.c.state)).all():
        connection.execute(sa.update(sessions).where(sessions.c.token == token)
                           .values(view_key=secrets.token_hex(8), held=held_by_layer(state)))
    op.create_index("ix_viewer_sessions_view_key", "viewer_sessions", ["view_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_viewer_sessions_view_key", "viewer_sessions")
    op.drop_column("viewer_sessions", "held")
    op.drop_column("viewer_sessions", "view_key")
