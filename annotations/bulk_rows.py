"""Many rows at once, in the caller's transaction, without the ORM: SQLite's ``executemany`` of one prepared
statement, PostgreSQL's ``COPY``. For bulk writes of annotations (100,000 in one request), where building
ORM objects or SQLAlchemy's per-value processing would cost more than the database's own work.

Values are given as the driver takes them; ``stored`` turns a value into what SQLAlchemy would have bound
for a column (a time as SQLite text, a JSON document as text), so rows written here read back through the
models as any other.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
)

from annotations.gradual import SLICE


def dialect_of(connection: Connection) -> str:
    return connection.dialect.name


def stored(connection: Connection, column: Column[Any], value: Any) -> Any:
    """``value`` as SQLAlchemy binds it for ``column`` on this connection (for values shared by many rows)."""
    dialect = connection.dialect
    processor = column.type.dialect_impl(dialect).bind_processor(dialect)
    return value if processor is None else processor(value)


def copy_type(column: Column[Any]) -> str:
    """The PostgreSQL type whose binary form a binary ``COPY`` sends for ``column``. JSON goes as text: the
    binary form of ``json`` is its text (values here are already JSON texts, as ``json_text`` makes them)."""
    kind = column.type
    if isinstance(kind, SmallInteger):
        return "int2"
    if isinstance(kind, BigInteger):
        return "int8"
    if isinstance(kind, Integer):
        return "int4"
    if isinstance(kind, Float):
        return "float8"
    if isinstance(kind, Boolean):
        return "bool"
    if isinstance(kind, DateTime):
        return "timestamptz" if kind.timezone else "timestamp"
    if isinstance(kind, LargeBinary):
        return "bytea"
    if isinstance(kind, JSON | String):
        return "text"
    raise TypeError(f"no binary COPY type for column {column.name} ({kind})")


def json_text(value: Any) -> str:
    """A JSON column's stored text. Only for values already checked finite (orjson writes NaN as null)."""
    return orjson.dumps(value).decode()


def sql(connection: Connection, statement: str) -> str:
    """``statement`` with ``?`` placeholders in the driver's own style."""
    return statement if dialect_of(connection) == "sqlite" else statement.replace("?", "%s")


def execute_many(connection: Connection, statement: str, rows: Sequence[Sequence[Any]]) -> None:
    """One statement (``?`` placeholders) for each row, through the driver."""
    if rows:
        connection.exec_driver_sql(sql(connection, statement), list(rows))  # type: ignore[arg-type]


def insert_rows(connection: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Insert ``rows`` (values in ``columns`` order, as the driver takes them) into ``table``."""
    names = ", ".join(columns)
    if dialect_of(connection) == "postgresql":
        raw = connection.connection.driver_connection
        assert raw is not None
        # Binary: numbers and times go as their bytes, not as text PostgreSQL parses again.
        with raw.cursor() as cursor, cursor.copy(  # type: ignore[attr-defined]
                f"COPY {table.name} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([copy_type(table.c[name]) for name in columns])
            for row in rows:
                copy.write_row(row)
        return
    marks = ", ".join("?" for _ in columns)
    statement = f"INSERT INTO {table.name} ({names}) VALUES ({marks})"
    rows = iter(rows)
    while part := list(itertools.islice(rows, SLICE)):  # a slice at a time: see ``annotations.gradual``
        connection.exec_driver_sql(statement, part)  # type: ignore[arg-type]
        time.sleep(0)


def new_ids(connection: Connection, tables: Sequence[Table], count: int) -> list[list[int]]:
    """``count`` unused primary keys of each of ``tables`` (their integer ``id``), for rows inserted with explicit
    ids.

    SQLite: the ones after the largest (the caller holds the database's write lock, so no one else takes
    them). PostgreSQL: drawn from each column's sequence, as a default would, in one statement.
    """
    if count == 0:
        return [[] for _ in tables]
    if dialect_of(connection) == "postgresql":
        raw = connection.connection.driver_connection
        assert raw is not None
        with raw.cursor(binary=True) as cursor:  # type: ignore[attr-defined]
            cursor.execute("SELECT " + ", ".join(f"pg_get_serial_sequence('{t.name}', 'id')" for t in tables))
            sequences = cursor.fetchone()  # named once: looked up per row, it costs ten times the draw
            draws = ", ".join(f"array_agg(nextval('{name}'))" for name in sequences)
            cursor.execute(f"SELECT {draws} FROM generate_series(1, %s)", (count,))
            return [list(ids) for ids in cursor.fetchone()]
    out = []
    for table in tables:
        start = connection.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {table.name}").scalar() or 0
        out.append(list(range(start + 1, start + 1 + count)))
    return out
