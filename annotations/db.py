"""Engines and schema migration for SQLite (embedded default, WAL) and PostgreSQL (psycopg 3).

SQLAlchemy and Alembic are imported by the functions that use them: settings only need the URL.
Alembic (~0.2 s to import, more to load its scripts) runs only when a schema is behind: a schema
at ``HEAD_REVISION`` is left alone, and an empty database gets the models' tables and that
revision at once (Alembic's "create_all, then stamp head" recipe; a test checks that this schema
equals the migrated one).
"""

from __future__ import annotations

import contextlib
import functools
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterator
    from pathlib import Path

    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = "annotations:migrations"  # Alembic finds the scripts through the installed package
HEAD_REVISION = "0009"  # the newest file in migrations/versions (a test checks it is Alembic's head)
SCHEMA_LOCK = 0x6C616D656C6C61  # PostgreSQL advisory lock held while a schema is created or migrated


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'lamella.sqlite').resolve()}"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; ``postgresql://`` URLs use psycopg 3, SQLite runs in WAL mode."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    # Strict JSON only: a non-finite number is refused here rather than stored as a bare NaN that
    # browsers' JSON parsers reject.
    strict = {"json_serializer": functools.partial(json.dumps, allow_nan=False)}
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False}, **strict)

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode (REFERENCE.md)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA cache_size=-65536")  # KiB: 64 MiB of pages per connection, as needed
            cursor.close()

        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10, **strict)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; concurrent callers take turns)."""
    with engine.connect() as connection:
        if schema_revision(connection) == HEAD_REVISION:
            return
    with engine.begin() as connection:
        _lock_schema(connection)
        revision = schema_revision(connection)  # another process may have migrated meanwhile
        if revision == HEAD_REVISION:
            return
        if revision is None and not _has_tables(connection):
            _create_at_head(connection)
        else:
            upgrade_with_alembic(connection)


def upgrade_with_alembic(connection: Connection, revision: str = "head") -> None:
    """Run the migrations from the schema's revision to ``revision`` (the newest), in the caller's transaction."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def schema_revision(connection: Connection) -> str | None:
    """The Alembic revision the schema is at (None: not under Alembic)."""
    from sqlalchemy import inspect, text

    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _lock_schema(connection: Connection) -> None:
    """Serialise schema changes: SQLite's write lock, or a PostgreSQL advisory lock (both until commit)."""
    from sqlalchemy import text

    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # pysqlite would begin only at the first DML
    elif connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})


def _has_tables(connection: Connection) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(connection).get_table_names())


def _create_at_head(connection: Connection) -> None:
    """The models' tables and Alembic's version row, in the caller's transaction."""
    from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table

    from annotations.models import Base

    Base.metadata.create_all(connection)
    version = Table("alembic_version", MetaData(), Column("version_num", String(32), nullable=False),
                    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))  # as Alembic makes it
    version.create(connection)
    connection.execute(version.insert().values(version_num=HEAD_REVISION))


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    from sqlalchemy.orm import sessionmaker

    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def writing(sessions: sessionmaker[Session], turns: threading.Lock | None = None) -> Iterator[Session]:
    """One write transaction; on SQLite it takes the database's write lock at once (a read followed by a write
    in a deferred transaction would fail, not wait, when another writer got in between).

    ``turns``: on SQLite, the threads of a process take turns on this lock first. SQLite's busy handler has a
    waiting writer sleep and retry (up to 100 ms a time), so with many threads one could lose again and again
    for seconds; with it, at most one thread per process waits that way.
    """
    bind = sessions.kw.get("bind")
    sqlite = bind is not None and bind.dialect.name == "sqlite"
    with turns if sqlite and turns is not None else contextlib.nullcontext(), sessions.begin() as session:
        connection = session.connection()
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        yield session
