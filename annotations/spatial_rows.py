"""The spatial index of each layer's ``current`` precomputed source, stored: ``annotation_cell_entries`` (one
row per annotation and cell that serves it, with its encoded record) and ``annotation_cell_counts``.

Reading a cell is one range of the entries' primary key, (layer, type, level, cell), whose records are sent
as stored. Writes run in the writer's transaction, beside the versions they follow: ``place`` (new or moved
annotations; ``annotations.spatial_index`` decides where), ``remove``, ``replace_record`` (new content in the
same place), ``reencode`` (a layer's properties changed) and ``rebuild`` (from the current versions).
Statements go to the driver directly (``annotations.bulk_rows``): cells are read on every pan and zoom.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Connection, select

from annotations.annotation_encoding import Entry, Layout
from annotations.bulk_rows import dialect_of, execute_many, insert_rows, sql
from annotations.cells import LevelPlan
from annotations.gradual import array, release
from annotations.layer_specs import ANNOTATION_TYPES, LayerSpec
from annotations.models import AnnotationCellCount, AnnotationCellEntry, AnnotationLayer, AnnotationVersion
from annotations.spatial_index import Batch, CellCount, Changes, Incumbent, cells_of, place, refill

KIND = {kind: code for code, kind in enumerate(ANNOTATION_TYPES)}  # the entries' ``kind`` column
ENTRIES = AnnotationCellEntry.__table__
COUNTS = AnnotationCellCount.__table__
ENTRY_COLUMNS = ("layer_id", "kind", "level", "cell", "sample_key", "annotation_id", "record")
IN_LIST = 500  # cells named in one statement
REBUILD_BATCH = 50_000


def _raw(connection: Connection) -> Any:
    """The driver's connection (in the same transaction) for statements run many times."""
    return connection.connection.driver_connection


@dataclass(frozen=True, slots=True)
class LayerFacts:
    """What serving a stored cell needs of its layer row (JSON columns as their stored text)."""

    id: int
    dataset_id: int
    generation: int
    spec: str
    lower_bound: str
    upper_bound: str
    cell_limit: int
    max_extent: float


_FACTS = ("l.id, l.dataset_id, l.generation, CAST(l.spec AS TEXT), CAST(l.lower_bound AS TEXT), "
          "CAST(l.upper_bound AS TEXT), l.cell_limit, l.max_extent")


def layer_facts(connection: Connection, layer_id: int) -> LayerFacts | None:
    cursor = _raw(connection).cursor()
    try:
        cursor.execute(sql(connection, f"SELECT {_FACTS} FROM annotation_layers AS l WHERE l.id = ?"), (layer_id,))
        row = cursor.fetchone()
    finally:
        cursor.close()
    return None if row is None else LayerFacts(*row)


def held_ids(connection: Connection, view_key: str, dataset_id: int, layer_id: int) -> frozenset[int]:
    """The ids of layer ``layer_id`` that the edit layers of the viewer session named ``view_key`` hold
    (``viewer_sessions.held``): none if no session of dataset ``dataset_id`` has that name."""
    cursor = _raw(connection).cursor()
    try:
        cursor.execute(sql(connection, "SELECT dataset_id, held FROM viewer_sessions WHERE view_key = ?"), (view_key,))
        row = cursor.fetchone()
    finally:
        cursor.close()
    if row is None or row[0] != dataset_id:
        return frozenset()
    held = orjson.loads(row[1]) if isinstance(row[1], str | bytes) else row[1]  # SQLite: the stored text
    return frozenset(held.get(str(layer_id), ())) if isinstance(held, dict) else frozenset()


def read_cell(connection: Connection, layer_id: int, kind: str, level: int, cell: int,
              without: Collection[int] = ()) -> tuple[LayerFacts | None, int, bytes, bytes]:
    """The layer's row and, as of the same moment, how many annotations one cell serves, their records and
    their ids (uint64, little-endian), in one order; those whose id is in ``without`` left out. PostgreSQL:
    one statement (call it outside a transaction: one round trip); SQLite: two in one read transaction."""
    postgresql = dialect_of(connection) == "postgresql"
    cursor = _raw(connection).cursor(binary=True) if postgresql else _raw(connection).cursor()
    try:
        if postgresql and without:  # each record apart, to leave some out here
            cursor.execute(
                f"SELECT {_FACTS}, c.records, c.ids FROM annotation_layers AS l LEFT JOIN LATERAL ("
                " SELECT array_agg(record) AS records, array_agg(annotation_id) AS ids FROM annotation_cell_entries"
                " WHERE layer_id = l.id AND kind = %s AND level = %s AND cell = %s) AS c ON true WHERE l.id = %s",
                (KIND[kind], level, cell, layer_id))
            found = cursor.fetchone()
            if found is None:
                return None, 0, b"", b""
            facts = LayerFacts(*found[:8])
            rows = [(bytes(record), annotation_id) for record, annotation_id
                    in zip(found[8] or [], found[9] or [], strict=True) if annotation_id not in without]
        elif postgresql:
            # Both aggregates take the rows in one order (any: a cell's order does not matter, only that its
            # records and ids agree), so neither sorts.
            cursor.execute(
                f"SELECT {_FACTS}, c.n, c.records, c.ids FROM annotation_layers AS l LEFT JOIN LATERAL ("
                " SELECT count(*) AS n, string_agg(record, ''::bytea) AS records, array_agg(annotation_id) AS ids"
                " FROM annotation_cell_entries WHERE layer_id = l.id AND kind = %s AND level = %s AND cell = %s)"
                " AS c ON true WHERE l.id = %s", (KIND[kind], level, cell, layer_id))
            row = cursor.fetchone()
            if row is None:
                return None, 0, b"", b""
            return (LayerFacts(*row[:8]), row[8], bytes(row[9] or b""),
                    np.array(row[10] or [], dtype="<u8").tobytes())
        else:
            connection.exec_driver_sql("BEGIN")  # one read transaction (pysqlite would begin only at a write)
            facts = layer_facts(connection, layer_id)
            cursor.execute("SELECT record, annotation_id FROM annotation_cell_entries "
                           "WHERE layer_id = ? AND kind = ? AND level = ? AND cell = ?",
                           (layer_id, KIND[kind], level, cell))
            rows = cursor.fetchall()
            if without:
                rows = [row for row in rows if row[1] not in without]
    finally:
        cursor.close()
    return (facts, len(rows), b"".join(record for record, _ in rows),
            np.fromiter((annotation_id for _, annotation_id in rows), dtype="<u8", count=len(rows)).tobytes())


class StoredCells:
    """The stored index of one layer and type, as ``spatial_index.CellState`` reads it."""

    def __init__(self, connection: Connection, layer_id: int, kind: str) -> None:
        self.connection = connection
        self.layer_id = layer_id
        self.kind = KIND[kind]

    def counts(self, level: int, cells: Collection[int]) -> dict[int, CellCount]:
        cells = list(cells)
        cursor = _raw(self.connection).cursor()
        found: dict[int, CellCount] = {}
        try:
            for start in range(0, len(cells), IN_LIST):
                part = cells[start:start + IN_LIST]
                cursor.execute(sql(self.connection, "SELECT cell, count, max_key FROM annotation_cell_counts "
                                                    "WHERE layer_id = ? AND kind = ? AND level = ? AND cell IN ("
                                                    + ", ".join("?" for _ in part) + ")"),
                               (self.layer_id, self.kind, level, *part))
                found.update((cell, CellCount(count, max_key)) for cell, count, max_key in cursor.fetchall())
        finally:
            cursor.close()
        return found

    def largest(self, level: int, wanted: Mapping[int, int]) -> dict[int, list[Incumbent]]:
        out: dict[int, list[Incumbent]] = {cell: [] for cell in wanted}
        if not wanted:
            return out
        cursor = _raw(self.connection).cursor()
        try:
            if dialect_of(self.connection) == "postgresql":
                cursor.execute(
                    "SELECT t.cell, e.sample_key, e.annotation_id, e.record "
                    "FROM unnest(%s::bigint[], %s::int[]) AS t(cell, n) CROSS JOIN LATERAL ("
                    " SELECT sample_key, annotation_id, record FROM annotation_cell_entries"
                    " WHERE layer_id = %s AND kind = %s AND level = %s AND cell = t.cell"
                    " ORDER BY sample_key DESC, annotation_id DESC LIMIT t.n) AS e",
                    (list(wanted), list(wanted.values()), self.layer_id, self.kind, level))
                for cell, key, annotation_id, record in cursor.fetchall():
                    out[cell].append((key, annotation_id, bytes(record)))
                return out
            statement = ("SELECT sample_key, annotation_id, record FROM annotation_cell_entries "
                         "WHERE layer_id = ? AND kind = ? AND level = ? AND cell = ? "
                         "ORDER BY sample_key DESC, annotation_id DESC LIMIT ?")
            for cell, n in wanted.items():
                cursor.execute(statement, (self.layer_id, self.kind, level, cell, n))
                out[cell] = cursor.fetchall()
        finally:
            cursor.close()
        return out


    def smallest(self, level: int, cells: Collection[int]) -> dict[int, Incumbent]:
        found: dict[int, Incumbent] = {}
        cursor = _raw(self.connection).cursor()
        try:
            for cell in cells:
                cursor.execute(sql(self.connection, "SELECT sample_key, annotation_id, record "
                                                    "FROM annotation_cell_entries WHERE layer_id = ? AND kind = ? "
                                                    "AND level = ? AND cell = ? ORDER BY sample_key, annotation_id "
                                                    "LIMIT 1"), (self.layer_id, self.kind, level, cell))
                row = cursor.fetchone()
                if row is not None:
                    found[cell] = (row[0], row[1], bytes(row[2]))
        finally:
            cursor.close()
        return found

    def apply(self, changes: Changes) -> None:
        store(self.connection, self.layer_id, ANNOTATION_TYPES[self.kind], changes)


def store(connection: Connection, layer_id: int, kind: str, changes: Changes) -> None:
    """Write ``changes`` to the index: removed entries, added entries (in key order), new counts."""
    code = KIND[kind]
    removed = changes.removed
    counts = sorted(changes.counts.items())
    if dialect_of(connection) == "postgresql":  # one statement each, not one a row
        cursor = _raw(connection).cursor()
        try:
            if removed:
                cursor.execute(
                    "DELETE FROM annotation_cell_entries AS e USING unnest(%s::smallint[], %s::bigint[], "
                    "%s::float8[], %s::int[]) AS d(level, cell, sample_key, annotation_id) WHERE e.layer_id = %s "
                    "AND e.kind = %s AND e.level = d.level AND e.cell = d.cell AND e.sample_key = d.sample_key "
                    "AND e.annotation_id = d.annotation_id", (*map(list, zip(*removed, strict=True)), layer_id, code))
            if counts:
                cursor.execute(
                    "INSERT INTO annotation_cell_counts (layer_id, kind, level, cell, count, max_key) SELECT %s, %s, "
                    "* FROM unnest(%s::smallint[], %s::bigint[], %s::int[], %s::float8[]) ON CONFLICT (layer_id, "
                    "kind, level, cell) DO UPDATE SET count = excluded.count, max_key = excluded.max_key",
                    (layer_id, code, [level for (level, _), _ in counts], [cell for (_, cell), _ in counts],
                     [now.count for _, now in counts], [now.max_key for _, now in counts]))
        finally:
            cursor.close()
    else:
        execute_many(connection, "DELETE FROM annotation_cell_entries WHERE layer_id = ? AND kind = ? AND level = ? "
                                 "AND cell = ? AND sample_key = ? AND annotation_id = ?",
                     [(layer_id, code, *row) for row in removed])
        execute_many(connection, "INSERT INTO annotation_cell_counts (layer_id, kind, level, cell, count, max_key) "
                                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (layer_id, kind, level, cell) "
                                 "DO UPDATE SET count = excluded.count, max_key = excluded.max_key",
                     [(layer_id, code, level, cell, now.count, now.max_key) for (level, cell), now in counts])
    added = changes.added
    if added:  # inserted in primary-key order, sorted by NumPy (``annotations.gradual``)
        order = np.lexsort((array([row[3] for row in added], np.int64), array([row[2] for row in added], np.float64),
                            array([row[1] for row in added], np.int64), array([row[0] for row in added], np.int64)))
        insert_rows(connection, ENTRIES, ENTRY_COLUMNS, ((layer_id, code, *added[i]) for i in order.tolist()))


def place_batch(connection: Connection, layer_id: int, kind: str, plan: LevelPlan, layout: Layout,
                batch: Batch) -> None:
    """Place annotations that are not in the index (new ones, moved ones taken out first)."""
    if len(batch):
        changes = place(plan, StoredCells(connection, layer_id, kind), batch, layout.bounds_many)
        store(connection, layer_id, kind, changes)
        release(changes.added, changes.removed)


def _found(connection: Connection, plan: LevelPlan, statement: str, parameters: Sequence[Any], lower: Sequence[float],
           upper: Sequence[float]) -> tuple[int, list[int]] | None:
    """The level and cells where ``statement`` (``… AND level = ? AND cell IN (…)`` appended) touches rows,
    trying each level in turn: an annotation is served at one level only."""
    low, high = np.array([lower], dtype=np.float64), np.array([upper], dtype=np.float64)
    for level in range(len(plan.levels)):
        cells = cells_of(plan, level, low, high).of(0)
        touched = 0
        for start in range(0, len(cells), IN_LIST):
            part = cells[start:start + IN_LIST]
            result = connection.exec_driver_sql(
                sql(connection, statement + " AND level = ? AND cell IN (" + ", ".join("?" for _ in part) + ")"),
                (*parameters, level, *part))
            touched += result.rowcount
        if touched:
            return level, cells
    return None


def remove(connection: Connection, layer_id: int, kind: str, plan: LevelPlan, layout: Layout, key: float,
           annotation_id: int, lower: Sequence[float], upper: Sequence[float]) -> None:
    """Take one annotation (its bounding box ``lower``, ``upper``) out of the index, and refill its cells from
    below (``annotations.spatial_index.refill``)."""
    found = _found(connection, plan, "DELETE FROM annotation_cell_entries WHERE layer_id = ? AND kind = ? "
                                     "AND sample_key = ? AND annotation_id = ?",
                   (layer_id, KIND[kind], key, annotation_id), lower, upper)
    if found is None or found[0] == len(plan.levels) - 1:
        return
    level, cells = found
    execute_many(connection, "UPDATE annotation_cell_counts SET count = count - 1 WHERE layer_id = ? "
                             "AND kind = ? AND level = ? AND cell = ?",
                 [(layer_id, KIND[kind], level, cell) for cell in cells])
    refill(plan, StoredCells(connection, layer_id, kind), layout.bounds_many, level, cells)


def replace_record(connection: Connection, layer_id: int, kind: str, plan: LevelPlan, key: float,
                   annotation_id: int, lower: Sequence[float], upper: Sequence[float], record: bytes) -> bool:
    """New content for an annotation whose type and bounding box stay: its cells stay. False if not found."""
    return _found(connection, plan, "UPDATE annotation_cell_entries SET record = ? WHERE layer_id = ? AND kind = ? "
                                    "AND sample_key = ? AND annotation_id = ?",
                  (record, layer_id, KIND[kind], key, annotation_id), lower, upper) is not None


def forget(connection: Connection, layer_id: int) -> None:
    """Delete a layer's index (before the layer itself: the index has no foreign key to cascade along)."""
    execute_many(connection, "DELETE FROM annotation_cell_entries WHERE layer_id = ?", [(layer_id,)])
    execute_many(connection, "DELETE FROM annotation_cell_counts WHERE layer_id = ?", [(layer_id,)])


def _current_rows(connection: Connection, layer_id: int, kind: str, after: int, limit: int) -> list[Any]:
    V = AnnotationVersion
    return connection.execute(
        select(V.annotation_id, V.sample_key, V.geometry, V.label, V.properties, V.x0, V.y0, V.z0, V.x1, V.y1, V.z1)
        .where(V.layer_id == layer_id, V.kind == kind, V.valid_to.is_(None), V.deleted.is_(False),
               V.annotation_id > after)
        .order_by(V.annotation_id).limit(limit)
    ).all()


def rebuild(connection: Connection, layer_id: int) -> None:
    """The layer's index made anew from its current versions (for layers written before it was kept)."""
    layer = connection.execute(select(AnnotationLayer).where(AnnotationLayer.id == layer_id)).one()
    forget(connection, layer_id)
    spec = LayerSpec.model_validate(layer.spec)
    plan = LevelPlan.for_bounds(tuple(float(v) for v in layer.lower_bound),
                                tuple(float(v) for v in layer.upper_bound), layer.cell_limit)
    for kind in spec.types:
        layout = Layout.of(spec, kind)
        after = 0
        while rows := _current_rows(connection, layer_id, kind, after, REBUILD_BATCH):
            place_batch(connection, layer_id, kind, plan, layout, Batch.of(
                [row.sample_key for row in rows], [row.annotation_id for row in rows],
                [layout.encode(Entry(row.annotation_id, row.geometry, row.label, row.properties, {}))
                 for row in rows],
                [(row.x0, row.y0, row.z0) for row in rows], [(row.x1, row.y1, row.z1) for row in rows]))
            after = rows[-1].annotation_id


def reencode(connection: Connection, layer_id: int, kind: str, layout: Layout) -> None:
    """Every stored record of one type encoded again (after the layer's properties or labels changed how
    records are laid out), a page of entries at a time in primary-key order."""
    after: tuple[int, int, float, int] = (-1, -1, -1.0, -1)
    while True:
        rows = connection.exec_driver_sql(sql(
            connection,
            "SELECT e.level, e.cell, e.sample_key, e.annotation_id, v.geometry, v.label, v.properties "
            "FROM annotation_cell_entries AS e JOIN annotation_versions AS v ON v.annotation_id = e.annotation_id "
            "AND v.valid_to IS NULL WHERE e.layer_id = ? AND e.kind = ? "
            "AND (e.level, e.cell, e.sample_key, e.annotation_id) > (?, ?, ?, ?) "
            "ORDER BY e.level, e.cell, e.sample_key, e.annotation_id LIMIT ?"),
            (layer_id, KIND[kind], *after, REBUILD_BATCH)).all()
        if not rows:
            return
        execute_many(connection, "UPDATE annotation_cell_entries SET record = ? WHERE layer_id = ? AND kind = ? "
                                 "AND level = ? AND cell = ? AND sample_key = ? AND annotation_id = ?",
                     [(layout.encode(Entry(annotation_id, _json(geometry), label, _json(properties), {})),
                       layer_id, KIND[kind], level, cell, key, annotation_id)
                      for level, cell, key, annotation_id, geometry, label, properties in rows])
        after = tuple(rows[-1][:4])  # type: ignore[assignment]


def _json(value: Any) -> Any:
    """A JSON column read through the driver: text on SQLite, parsed already by psycopg."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value
