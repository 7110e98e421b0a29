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
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = "annotations:migrations"  # Alembic finds the scripts through the installed package
HEAD_REVISION = "0010"  # the newest file in migrations/versions (a test checks it is Alembic's head)
SCHEMA_LOCK = 0x6C616D656C6C61  # PostgreSQL advisory lock held while a schema is created or migrated


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{(data_dir / 'lamella.sqlite').resolve()}"


def make_engine(url: str, checkpoint_in_background: bool = False) -> Engine:
    """An engine for ``url``; ``postgresql://`` URLs use psycopg 3, SQLite runs in WAL mode.

    ``checkpoint_in_background``: this engine's commits leave the SQLite WAL's checkpoints to a
    ``WalCheckpointer`` (which the caller starts), instead of running them inside the commit that crosses
    SQLite's threshold (1,000 pages).
    """
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
            if checkpoint_in_background:
                cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()

        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10, **strict)


class WalCheckpointer:
    """Checkpoints a SQLite database's WAL from a thread of its own, soon after this process's connections
    go back to the pool and at least every ``interval`` seconds, for an engine made with
    ``checkpoint_in_background``.

    A commit that crossed SQLite's threshold would otherwise copy the WAL into the database before it
    returns: after a bulk create of 100,000 annotations into a layer of millions, tens of thousands of
    pages (random inserts touch most of the spatial index), 0.5 to 1 s of the request. Here that copy runs
    beside the next request's parsing and checks. Checkpoints are PASSIVE: they never wait for, or block,
    readers and writers; several processes may run one each (the one that loses the race skips a turn).
    """

    def __init__(self, engine: Engine, interval: float = 5.0, pause: float = 0.2) -> None:
        from sqlalchemy import event

        self.engine = engine
        self.interval = interval
        self.pause = pause  # the least time between two checkpoints
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lamella-wal-checkpoint", daemon=True)
        event.listen(engine, "checkin", self._checked_in)

    def _checked_in(self, _connection: Any, _record: Any) -> None:
        if threading.get_ident() != self._thread.ident:  # not the checkpoint's own connection
            self._wake.set()

    def start(self) -> WalCheckpointer:
        self._thread.start()
        return self

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint: (busy, frames in the WAL, frames copied) as SQLite reports them."""
        with self.engine.connect() as connection:
            busy, frames, copied = connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
        return int(busy), int(frames), int(copied)

    def _run(self) -> None:
        import logging

        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.checkpoint()
            except Exception:  # a locked or closing database: the next turn tries again
                logging.getLogger("lamella").debug("WAL checkpoint skipped", exc_info=True)
            self._stop.wait(self.pause)

    def stop(self) -> None:
        """Stop the thread, after a last checkpoint of what this process wrote."""
        from sqlalchemy import event

        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        event.remove(self.engine, "checkin", self._checked_in)
        with contextlib.suppress(Exception):
            self.checkpoint()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; concurrent callers take turns)."""
    with engine.connect() as connection:
        if schema_revision(connection) == HEAD_REVISION:
            return
    with engine.connect() as connection, _foreign_keys_off(connection), connection.begin():
        _lock_schema(connection)
        revision = schema_revision(connection)  # another process may have migrated meanwhile
        if revision == HEAD_REVISION:
            return
        if revision is None and not _has_tables(connection):
            _create_at_head(connection)
        else:
            upgrade_with_alembic(connection)
            _check_foreign_keys(connection)


@contextlib.contextmanager
def _foreign_keys_off(connection: Connection) -> Iterator[None]:
    """SQLite: foreign keys off while the schema changes, as SQLite's procedure for rebuilding a table says (set
    outside a transaction; dropping the old copy of a table would otherwise cascade to the rows that refer to
    it). ``_check_foreign_keys`` then checks that the rebuilt tables still hold."""
    if connection.dialect.name != "sqlite":
        yield
        return
    connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    connection.commit()
    try:
        yield
    finally:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        connection.commit()


def _check_foreign_keys(connection: Connection) -> None:
    if connection.dialect.name == "sqlite":
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(f"the migration left {len(broken)} rows whose foreign keys do not hold: {broken[:5]}")


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
