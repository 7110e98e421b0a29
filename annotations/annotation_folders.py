"""A layer's annotations as static Neuroglancer precomputed annotation folders, one per annotation type, that
any Neuroglancer loads from a plain file server: ``info``, a multi-level spatial index, ``by_id`` and the
relationship indexes. No web framework: files come out one at a time from one database snapshot.

Memory: one file at a time, plus one count per spatial cell that holds annotations (the cells are bounded by
``annotations.cells``, not by the layer). ``by_id`` and the relationship indexes are in Neuroglancer's sharded
format (``tiling.uint64_sharded``), a shard kept near ``shards.SHARD_BYTES`` where the ids allow, so that an
archive holds a few files rather than one per annotation. A spatial cell above the finest level holds at
most ``limit`` annotations; a finest cell, and the list of one related segment, hold what they hold.

Spatial index (upstream ``src/datasource/precomputed/annotations.md``, "Spatial index"): a cell lists the
annotations whose bounding box meets it (cells are closed intervals ``[lower + c·size, lower + (c+1)·size]``),
coarse to fine, a random subsample of what coarser cells left: the same rule as the live source
(``annotations.annotation_source``). Each annotation keeps a random key in [0, 1). Pass 1 reads every bounding
box in (key, id) order and offers it to the coarsest cell; a cell with room (fewer than ``limit``, or the
finest level) keeps it, a full one passes it to each of its child cells it meets and remembers the first it
passed down (its cut). A cell so keeps the ``limit`` smallest (key, id) of what reaches it, which are those
that meet it with (key, id) in [its parent's cut, its own cut). Pass 2 reads each cell's annotations back by
that rule, through the index on the anchor's cell code (``AnnotationVersion.cell``), and checks their number
against pass 1's.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Select, Text, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from annotations.annotation_encoding import BY_ID_KEY, Entry, Layout, relationship_key, spatial_key
from annotations.annotation_store import view_clause
from annotations.cells import CellKey, LevelPlan
from annotations.layer_specs import LABEL_PROPERTY, PROPERTY_TYPES, LayerSpec
from annotations.models import AnnotationSegment, AnnotationVersion
from annotations.views import View
from tiling.uint64_sharded import ShardSizer, ShardSpec, ShardWriter

Cut = tuple[float, int]  # (sample key, annotation id)
BATCH = 2000  # rows fetched at a time (server-side cursors on PostgreSQL)
NEAR = 1e-6  # of a finest cell: a coordinate this close to a cell boundary is placed by the exact test
_AXIS_BITS = 20  # cell coordinates packed in one int key (grids are at most 2**18 per axis)


# JSON columns as their stored text, parsed here (several times faster than the ORM's per-value json.loads).
GEOMETRY = cast(AnnotationVersion.geometry, Text)
PROPERTIES = cast(AnnotationVersion.properties, Text)
SEGMENTS = cast(AnnotationVersion.segments, Text)
loads = orjson.loads


def batched_rows(session: Session, statement: Select[Any]) -> Iterator[Any]:
    """The rows of ``statement`` a batch at a time (a server-side cursor on PostgreSQL), without the ORM."""
    yield from session.connection().execute(statement.execution_options(yield_per=BATCH))


class ExportInconsistent(RuntimeError):
    """The two passes over the layer disagree (a bug: they read one snapshot)."""


@dataclass(frozen=True)
class LayerSnapshot:
    """What the folders are made from: the layer's declaration, bounds, largest annotation, and the view."""

    layer_id: int
    spec: LayerSpec
    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    margin: float  # the largest half side of any annotation the layer held (see AnnotationLayer.max_extent)
    view: View = field(default_factory=View)


def folder_files(session: Session, layer: LayerSnapshot, kind: str, limit: int) -> Iterator[tuple[str, bytes]]:
    """The files of one annotation type's folder (paths relative to it), ``info`` first."""
    layout = Layout.of(layer.spec, kind)
    plan = LevelPlan.for_bounds(layer.lower, layer.upper, limit)
    source = _Source(layer, kind, layout, plan)
    by_id = source.by_id_shards(session)
    related = [source.related_shards(session, index) for index in range(len(layout.relationships))]
    info = layout.info(layer.lower, layer.upper, plan)
    info["by_id"]["sharding"] = by_id.info()
    for entry, spec in zip(info["relationships"], related, strict=True):
        entry["sharding"] = spec.info()
    yield "info", json.dumps(info, allow_nan=False).encode()
    yield from source.spatial_files(session)
    yield from source.by_id_files(session, by_id)
    for index, spec in enumerate(related):
        yield from source.related_files(session, index, spec)


@dataclass
class _Placement:
    """Pass 1's result: per cell that annotations reached, how many did, and the first one passed down."""

    arrived: dict[int, int] = field(default_factory=dict)
    cuts: dict[int, Cut] = field(default_factory=dict)
    mixed: set[int] = field(default_factory=set)  # cells holding an annotation that meets several cells


def _cell_key(level: int, coords: Sequence[int]) -> int:
    return (((level << _AXIS_BITS | coords[0]) << _AXIS_BITS | coords[1]) << _AXIS_BITS) | coords[2]


def _cell_of(key: int) -> tuple[int, tuple[int, int, int]]:
    mask = (1 << _AXIS_BITS) - 1
    return key >> 3 * _AXIS_BITS, ((key >> 2 * _AXIS_BITS) & mask, (key >> _AXIS_BITS) & mask, key & mask)


class _Records:
    """Many annotations of a fixed-size type encoded at once into one numpy record array: the same bytes as
    ``Layout.encode`` gives one by one (geometry float32, properties in the layout's order at their alignment,
    zero padding to a multiple of 4), at a fraction of the cost."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        values = 3 if layout.kind == "point" else 6
        names, formats, offsets = ["geometry"], [("<f4", (values,))], [0]
        offset = 4 * values
        for number, prop in enumerate(layout.properties):
            offset += -offset % prop.alignment
            width = {"rgb": 3, "rgba": 4}.get(prop.type)
            names.append(f"p{number}")
            formats.append(("u1", (width,)) if width else PROPERTY_TYPES[prop.type][0])  # type: ignore[arg-type]
            offsets.append(offset)
            offset += width or np.dtype(PROPERTY_TYPES[prop.type][0]).itemsize
        self.dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets,
                               "itemsize": offset + (-offset % 4)})
        self.labels = {label: number + 1 for number, label in enumerate(layout.labels)}

    @property
    def size(self) -> int:
        return self.dtype.itemsize

    def encode(self, geometries: list[Any], labels: list[str | None], properties: list[dict[str, Any]]) -> bytes:
        records = np.zeros(len(geometries), dtype=self.dtype)
        if not len(records):
            return b""
        records["geometry"] = geometries
        for number, prop in enumerate(self.layout.properties):
            field = f"p{number}"
            if prop.id == LABEL_PROPERTY and self.labels:
                records[field] = [0 if label is None else self.labels[label] for label in labels]
            elif prop.type in ("rgb", "rgba"):
                width = 3 if prop.type == "rgb" else 4
                zero = "#" + "00" * width
                text = "".join(str(values.get(prop.id) or zero)[1:] for values in properties)
                records[field] = np.frombuffer(bytes.fromhex(text), dtype=np.uint8).reshape(-1, width)
            else:
                records[field] = [values.get(prop.id, 0) for values in properties]
        return records.tobytes()

    def encode_list(self, ids: list[int], records: bytes) -> bytes:
        """A list of annotations (a spatial cell, a related segment): count, records, ids."""
        return struct.pack("<Q", len(ids)) + records + np.asarray(ids, dtype="<u8").tobytes()


class _Source:
    """One annotation type of the layer, and the queries and encodings of its folder."""

    def __init__(self, layer: LayerSnapshot, kind: str, layout: Layout, plan: LevelPlan) -> None:
        self.layer, self.kind, self.layout, self.plan = layer, kind, layout, plan
        self._sizes: dict[int, int] = {}
        # Bytes of one encoded annotation where they do not depend on it (every type but polyline).
        self._fixed_size = None if kind == "polyline" else self.record_size(3 if kind == "point" else 6)
        self._records = None if kind == "polyline" else _Records(layout)

    # Rows

    def _selected(self, *columns: Any) -> Select[Any]:
        V = AnnotationVersion
        return select(*columns).where(V.layer_id == self.layer.layer_id, V.kind == self.kind,
                                      view_clause(self.layer.view))

    def record_size(self, values: int) -> int:
        """Bytes of one encoded annotation with ``values`` coordinates."""
        size = self._sizes.get(values)
        if size is None:
            size = self._sizes[values] = len(self.layout.encode(Entry(0, [0.0] * values, None, {}, {})))
        return size

    def _size_column(self) -> Any:
        return func.json_array_length(AnnotationVersion.geometry) if self.kind == "polyline" else None

    # The spatial index

    def bounds(self, level: int, coords: Sequence[int]) -> tuple[list[float], list[float]]:
        """A cell's closed interval; the child cells' intervals nest in it exactly (``(2c)·(s/2) == c·s``)."""
        size = self.plan.chunk_size(level)
        lower = [lo + c * s for lo, c, s in zip(self.plan.lower, coords, size, strict=True)]
        upper = [lo + (c + 1) * s for lo, c, s in zip(self.plan.lower, coords, size, strict=True)]
        return lower, upper

    def _met(self, level: int, low: float, high: float, axis: int) -> tuple[int, int]:
        """The cells of ``level`` along ``axis`` that ``[low, high]`` meets, by the exact closed-interval test."""
        size = self.plan.chunk_size(level)[axis]
        origin = self.plan.lower[axis]
        grid = self.plan.levels[level].grid_shape[axis]
        first = max(0, math.floor((low - origin) / size) - 1)
        last = min(grid - 1, math.floor((high - origin) / size) + 1)
        cells = [c for c in range(first, last + 1) if high >= origin + c * size and low <= origin + (c + 1) * size]
        return cells[0], cells[-1]

    @functools.cached_property
    def _shifts(self) -> list[tuple[int, int, int]]:
        """Per level, how far a finest cell coordinate shifts right to give that level's."""
        finest = self.plan.finest.bits
        return [tuple(f - b for f, b in zip(finest, level.bits, strict=True))  # type: ignore[misc]
                for level in self.plan.levels]

    def _simple_cells(self, boxes: np.ndarray) -> list[list[int]]:
        """Per bounding box (rows of x0 y0 z0 x1 y1 z1), the one finest cell it lies in, away from its
        boundaries (it then meets exactly one cell of every level: that cell's ancestor); [-1, -1, -1] for a box
        that meets more than one, or lies near a boundary, where the exact closed-interval test decides."""
        if not len(boxes):
            return []
        extent = self.plan.chunk_size(0)
        bits = self.plan.finest.bits
        origin = np.array(self.plan.lower * 2)
        scale = np.array([(1 << b) / e for b, e in zip(bits, extent, strict=True)] * 2)
        grid = np.array([1 << b for b in bits] * 2)
        position = (boxes - origin) * scale
        index = np.floor(position)
        fraction = position - index
        simple = ((fraction >= NEAR) & (fraction <= 1 - NEAR) & (index >= 0) & (index < grid)).all(axis=1)
        simple &= (index[:, :3] == index[:, 3:]).all(axis=1)
        cells = index[:, :3].astype(np.int64)
        cells[~simple] = -1
        return cells.tolist()  # type: ignore[no-any-return]

    def _boxes(self, session: Session, statement: Select[Any], box_at: int) -> Iterator[tuple[Any, list[int]]]:
        """The rows of ``statement`` with the finest cell of each (see ``_simple_cells``); the bounding box is
        the six columns from ``box_at``."""
        result = session.connection().execute(statement.execution_options(yield_per=BATCH))
        for batch in result.partitions():
            boxes = np.array([row[box_at:box_at + 6] for row in batch], dtype=np.float64).reshape(-1, 6)
            yield from zip(batch, self._simple_cells(boxes), strict=True)
            time.sleep(0)  # a server's event loop gets the interpreter between batches

    def place(self, session: Session) -> _Placement:
        """Pass 1 (see the module's note)."""
        V = AnnotationVersion
        limit, finest = self.plan.limit, len(self.plan.levels) - 1
        shifts = self._shifts
        placement = _Placement()
        arrived, cuts = placement.arrived, placement.cuts
        statement = self._selected(V.sample_key, V.annotation_id, V.x0, V.y0, V.z0, V.x1, V.y1, V.z1) \
            .order_by(V.sample_key, V.annotation_id)
        for row, (i, j, k) in self._boxes(session, statement, 2):
            key, annotation_id = row[0], row[1]
            if i < 0:
                self._place_box(placement, key, annotation_id, row[2:8])
                continue
            for level, (si, sj, sk) in enumerate(shifts):  # the hot loop: one cell per level
                cell = (((level << _AXIS_BITS | i >> si) << _AXIS_BITS | j >> sj) << _AXIS_BITS) | k >> sk
                count = arrived.get(cell, 0)
                arrived[cell] = count + 1
                if count < limit or level == finest:
                    break
                if count == limit:
                    cuts[cell] = (key, annotation_id)
        return placement

    def _place_box(self, placement: _Placement, key: float, annotation_id: int, box: Sequence[float]) -> None:
        """Pass 1 for a box that meets several cells (or lies near a boundary): down every cell it meets."""
        plan, limit = self.plan, self.plan.limit
        finest = len(plan.levels) - 1
        per_level = [[self._met(level, box[a], box[a + 3], a) for a in range(3)] for level in range(finest + 1)]
        pending = [(0, (0, 0, 0))]
        while pending:
            level, coords = pending.pop()
            cell = _cell_key(level, coords)
            count = placement.arrived.get(cell, 0)
            placement.arrived[cell] = count + 1
            if count < limit or level == finest:
                placement.mixed.add(cell)
                continue
            if count == limit:
                placement.cuts[cell] = (key, annotation_id)
            below = per_level[level + 1]
            step = [b - a for a, b in zip(plan.levels[level].bits, plan.levels[level + 1].bits, strict=True)]
            spans = [range(max(c << d, r[0]), min(((c + 1) << d) - 1, r[1]) + 1)
                     for c, d, r in zip(coords, step, below, strict=True)]
            pending.extend((level + 1, (i, j, k)) for i in spans[0] for j in spans[1] for k in spans[2])

    def spatial_files(self, session: Session) -> Iterator[tuple[str, bytes]]:
        """Every cell that holds annotations (pass 2). The annotations that lie in one finest cell come in the
        order of their anchor's cell code, in which every cell of every level is one run: a cell is written
        when its run ends. Cells that also hold an annotation meeting several cells are read on their own."""
        V = AnnotationVersion
        placement = self.place(session)
        shifts = self._shifts
        written: set[int] = set()
        runs: list[tuple[int, list[Any]] | None] = [None] * len(shifts)
        statement = self._selected(V.sample_key, V.annotation_id, V.x0, V.y0, V.z0, V.x1, V.y1, V.z1, GEOMETRY,
                                   V.label, PROPERTIES).order_by(V.cell)
        for row, (i, j, k) in self._boxes(session, statement, 2):
            if i < 0:
                continue  # it is in mixed cells only, read below
            key_id = (row[0], row[1])
            for level, (si, sj, sk) in enumerate(shifts):  # the cell that holds it: the first whose cut is past it
                cell = (((level << _AXIS_BITS | i >> si) << _AXIS_BITS | j >> sj) << _AXIS_BITS) | k >> sk
                cut = placement.cuts.get(cell)
                if cut is None or key_id < cut:
                    break
            if cell in placement.mixed:
                continue
            run = runs[level]
            if run is None or run[0] != cell:
                if run is not None:
                    yield self._cell_file(run[0], run[1], placement, written)
                run = runs[level] = (cell, [])
            run[1].append(row)
        for run in runs:
            if run is not None:
                yield self._cell_file(run[0], run[1], placement, written)
        for cell in sorted(placement.mixed):
            level, coords = _cell_of(cell)
            start: Cut = (0.0, 0)
            if level > 0:
                start = placement.cuts[_cell_key(level - 1, self.plan.parent(CellKey(level, coords)).coords)]
            rows = self._cell_rows(session, level, coords, start, placement.cuts.get(cell))
            yield self._cell_file(cell, rows, placement, written)
        missing = set(placement.arrived) - written
        if missing:
            raise ExportInconsistent(f"{len(missing)} spatial cells holding annotations were not read back")

    def _cell_file(self, cell: int, rows: list[Any], placement: _Placement, written: set[int]) -> tuple[str, bytes]:
        """One cell's file from its rows (key, id, box, geometry, label, properties), checked against pass 1."""
        level, coords = _cell_of(cell)
        count = placement.arrived[cell]
        held = count if level == len(self.plan.levels) - 1 else min(count, self.plan.limit)
        if len(rows) != held or cell in written:
            raise ExportInconsistent(f"spatial cell {level}/{coords} read {len(rows)} annotations"
                                     f"{' again' if cell in written else ''}, placed {held}")
        written.add(cell)
        rows.sort(key=lambda row: (row[0], row[1]))  # a random order (the keys are random)
        name = f"{spatial_key(level)}/{coords[0]}_{coords[1]}_{coords[2]}"
        if self._records is not None:
            records = self._records.encode([loads(row[8]) for row in rows], [row[9] for row in rows],
                                           [loads(row[10]) for row in rows])
            return name, self._records.encode_list([row[1] for row in rows], records)
        entries = [Entry(row[1], loads(row[8]), row[9], loads(row[10]), {}) for row in rows]
        return name, self.layout.encode_list(entries)

    def _cell_rows(self, session: Session, level: int, coords: Sequence[int], start: Cut,
                   end: Cut | None) -> list[Any]:
        """A cell's annotations read on their own: those meeting it with (key, id) in [start, end), by one index
        range scan per range of anchor codes around the cell (SQLite uses no index for a disjunction of them)."""
        V = AnnotationVersion
        lower, upper = self.bounds(level, coords)
        margin = self.layer.margin
        ranges = self.plan.ranges_covering([v - margin for v in lower], [v + margin for v in upper])
        statement = self._selected(V.sample_key, V.annotation_id, V.x0, V.y0, V.z0, V.x1, V.y1, V.z1, GEOMETRY,
                                   V.label, PROPERTIES).where(
            V.x1 >= lower[0], V.x0 <= upper[0], V.y1 >= lower[1], V.y0 <= upper[1], V.z1 >= lower[2],
            V.z0 <= upper[2],
            or_(V.sample_key > start[0], and_(V.sample_key == start[0], V.annotation_id >= start[1])))
        if end is not None:
            statement = statement.where(or_(V.sample_key < end[0],
                                            and_(V.sample_key == end[0], V.annotation_id < end[1])))
        return [row for low, high in ranges
                for row in batched_rows(session, statement.where(V.cell.between(low, high)))]

    # by_id

    def by_id_shards(self, session: Session) -> ShardSpec:
        """The by_id sharding, from one pass over the ids and the sizes of their entries."""
        V = AnnotationVersion
        sizer = ShardSizer()
        relationships = self.layout.relationships
        columns = [V.annotation_id]
        if self._fixed_size is None:
            columns.append(self._size_column())
        if relationships:
            columns.append(SEGMENTS)
        for row in batched_rows(session, self._selected(*columns).order_by(V.annotation_id)):
            size = self._fixed_size if self._fixed_size is not None else self.record_size(row[1])
            if relationships:
                segments = loads(row[-1])
                size += sum(4 + 8 * len(segments.get(name, ())) for name in relationships)
            sizer.add(row[0], size)
        return sizer.spec()

    def by_id_files(self, session: Session, spec: ShardSpec) -> Iterator[tuple[str, bytes]]:
        V = AnnotationVersion
        writer = ShardWriter(spec)
        statement = self._selected(V.annotation_id, GEOMETRY, V.label, PROPERTIES, SEGMENTS) \
            .order_by(V.annotation_id)
        relationships = self.layout.relationships
        result = session.connection().execute(statement.execution_options(yield_per=BATCH))
        for batch in result.partitions():
            if self._records is None:
                chunks = [self.layout.encode_by_id(Entry(i, loads(g), label, loads(p), loads(s)))
                          for i, g, label, p, s in batch]
            else:  # a batch's records at once, then each one's related segments
                records = self._records.encode([loads(row[1]) for row in batch], [row[2] for row in batch],
                                               [loads(row[3]) for row in batch])
                size = self._records.size
                chunks = [records[n * size:(n + 1) * size] for n in range(len(batch))]
                if relationships:
                    for n, row in enumerate(batch):
                        segments = loads(row[4])
                        chunks[n] += b"".join(_segment_list(segments.get(name, ())) for name in relationships)
            for row, chunk in zip(batch, chunks, strict=True):
                for name, shard in writer.add(row[0], chunk):
                    yield f"{BY_ID_KEY}/{name}", shard
        for name, shard in writer.finish():
            yield f"{BY_ID_KEY}/{name}", shard

    def _encode_list(self, entries: list[Entry]) -> bytes:
        if self._records is None:
            return self.layout.encode_list(entries)
        records = self._records.encode([e.geometry for e in entries], [e.label for e in entries],
                                       [e.properties for e in entries])
        return self._records.encode_list([e.id for e in entries], records)

    # Relationships

    def _related(self, index: int, *columns: Any) -> Select[Any]:
        S, V = AnnotationSegment, AnnotationVersion
        return (self._selected(S.segment_id, *columns).select_from(V).join(S, S.version_id == V.id)
                .where(S.layer_id == self.layer.layer_id, S.relationship == index)
                .order_by(S.segment_id, V.annotation_id))

    def related_shards(self, session: Session, index: int) -> ShardSpec:
        sizer = ShardSizer()
        size_column = self._size_column()
        statement = self._related(index, *([size_column] if size_column is not None else []))
        for row in batched_rows(session, statement):
            size = self._fixed_size if self._fixed_size is not None else self.record_size(row[1])
            sizer.add(row[0], size + 8)
        return sizer.spec()

    def related_files(self, session: Session, index: int, spec: ShardSpec) -> Iterator[tuple[str, bytes]]:
        V = AnnotationVersion
        folder = relationship_key(self.layout.relationships[index])
        writer = ShardWriter(spec)
        segment: int | None = None
        entries: list[Entry] = []
        statement = self._related(index, V.annotation_id, GEOMETRY, V.label, PROPERTIES)
        rows = batched_rows(session, statement)
        for segment_id, annotation_id, geometry, label, properties in rows:
            if segment_id != segment:
                if segment is not None:
                    for name, shard in writer.add(segment, self._encode_list(entries)):
                        yield f"{folder}/{name}", shard
                segment, entries = segment_id, []
            entries.append(Entry(annotation_id, loads(geometry), label, loads(properties), {}))
        if segment is not None:
            for name, shard in writer.add(segment, self._encode_list(entries)):
                yield f"{folder}/{name}", shard
        for name, shard in writer.finish():
            yield f"{folder}/{name}", shard


def _segment_list(ids: Sequence[int]) -> bytes:
    """A by_id entry's related segments of one relationship: uint32 count, uint64 ids."""
    return struct.pack(f"<I{len(ids)}Q", len(ids), *ids)
