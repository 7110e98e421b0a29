"""Viewer sessions get a view key: the public name under which a session's view layers leave out what its own
edit layers hold (``editing=<key>`` views of the precomputed annotation sources). Existing sessions get one each.

Revision ID: 0008
Revises: 0007
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("viewer_sessions", sa.Column("view_key", sa.String(32), nullable=True))
    sessions = sa.table("viewer_sessions", sa.column("token", sa.String), sa.column("view_key", sa.String))
    connection = op.get_bind()
    for (token,) in connection.execute(sa.select(sessions.c.token)).all():
        connection.execute(sa.update(sessions).where(sessions.c.token == token)
                           .values(view_key=secrets.token_hex(8)))
    op.create_index("ix_viewer_sessions_view_key", "viewer_sessions", ["view_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_viewer_sessions_view_key", "viewer_sessions")
    op.drop_column("viewer_sessions", "view_key")
