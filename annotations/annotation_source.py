"""Every annotation layer as Neuroglancer precomputed annotation sources generated from the database: one
source per annotation type and view (``annotations.views``), with ``info``, a multi-level spatial index,
``by_id`` and relationships by segment id. Answers are bytes with an ETag bound to the layer's generation.

Spatial subsampling (upstream ``annotations.md``, "Spatial index"): a cell lists the annotations whose
bounding box meets it, so a long line is in every cell it crosses; above the finest level a cell holds at
most the layer's ``cell_limit``; coarse to fine, each cell holds a random subsample of what its coarser cells
left, and along every chain of cells from the coarsest to a finest cell an annotation meets, it is served
exactly once. Each annotation keeps a random sample key in [0, 1) for all its versions.

The ``current`` view is kept in the database as writes happen (``annotations.spatial_index`` decides,
``annotations.spatial_rows`` stores): a cell is read as stored records. Filtered views are computed per
request: a cell serves those of its annotations whose (key, id) lies in [start, cut): ``start`` is its
parent's cut (0 at level 0), ``cut`` the (limit + 1)-th smallest (key, id) at or past ``start`` among the
cell's annotations in the view; the finest level serves all that remain. Cut-offs are cached per layer
generation.

An ``editing=<key>`` view (``<key>.<n>`` after the session took existing annotations for editing: a new URL, so
that the viewer reads the cells again) is the current view without what the edit layers of the viewer session
named ``key`` hold: its view layers would otherwise draw a second, read-only copy of each annotation the
session draws, and Neuroglancer's move and delete would pick that copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from annotations import spatial_rows
from annotations.access import Action, Actor, DatasetAccess, require
from annotations.annotation_encoding import Entry, Layout
from annotations.annotation_store import load_layer, view_clause
from annotations.cells import CellKey, LevelPlan
from annotations.errors import AnnotationNotFound, InvalidView, LayerNotFound
from annotations.layer_specs import MAX_SEGMENT_ID, LayerSpec
from annotations.models import AnnotationLayer, AnnotationSegment, AnnotationVersion
from annotations.views import EDITING, View

CURRENT = View()
CURRENT_TEXT = str(CURRENT)
Cut = tuple[float, int]  # (sample key, annotation id)
FIRST: Cut = (0.0, 0)
ENTRY_COLUMNS = (AnnotationVersion.annotation_id, AnnotationVersion.geometry, AnnotationVersion.label,
                 AnnotationVersion.properties, AnnotationVersion.segments)  # in Entry's order
CUT_CACHE = 65_536  # cell cut-offs kept (per layer generation, type, view and cell)
SOURCE_CACHE = 1024  # parsed layer declarations kept (per layer, declaration and type)


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of a precomputed annotation source, ready for the wire."""

    body: bytes
    content_type: str
    etag: str


@dataclass(frozen=True, slots=True)
class _Source:
    """What one request reads: the layer row's values, the type and the view."""

    layer_id: int
    generation: int
    kind: str
    view: View
    layout: Layout
    plan: LevelPlan
    lower: list[float]
    upper: list[float]
    margin: float  # the largest half side of any annotation the layer ever held

    def etag(self, name: str) -> str:
        digest = hashlib.blake2b(f"{self.kind}/{self.view}/{name}".encode(), digest_size=9).hexdigest()
        return f'"{self.layer_id}-{self.generation}-{digest}"'


class AnnotationSource:
    """The precomputed annotation service (blocking; the web layer runs it in its database threads)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._cuts: LRUCache[tuple[Any, ...], Cut | None] = LRUCache(CUT_CACHE)
        self._sources: LRUCache[tuple[Any, ...], _Source] = LRUCache(SOURCE_CACHE)
        self._facts: LRUCache[int, spatial_rows.LayerFacts] = LRUCache(SOURCE_CACHE)  # layer rows as last seen
        self._lock = threading.Lock()

    def info(self, actor: Actor, access: DatasetAccess, layer_id: int, kind: str, view: str) -> SourceFile:
        """The source's ``info`` JSON. Raises LayerNotFound, InvalidView (a type the layer lacks, a bad view)."""
        with self._reading(actor, access, layer_id, kind, view) as (_, source):
            info = source.layout.info(source.lower, source.upper, source.plan)
            body = json.dumps(info, allow_nan=False).encode()
            return SourceFile(body, "application/json", source.etag("info"))

    def cell(self, actor: Actor, access: DatasetAccess, layer_id: int, kind: str, view: str, level: int,
             cell: str, if_none_match: str | None = None) -> SourceFile:
        """The spatial-index cell ``cell`` (``i_j_k``) of ``level``: its subsample (see the module's note). When
        its ETag is ``if_none_match`` the body is left empty (the client has it: the answer is 304)."""
        if view == CURRENT_TEXT:
            return self._stored_cell(actor, access, layer_id, kind, level, cell, if_none_match)
        if (editing := EDITING.fullmatch(view)) is not None:
            return self._stored_cell(actor, access, layer_id, kind, level, cell, if_none_match, editing.group(1))
        with self._reading(actor, access, layer_id, kind, view) as (session, source):
            key = CellKey.parse(source.plan, level, cell)
            etag = source.etag(f"spatial{level}/{key}")
            if if_none_match == etag:
                return SourceFile(b"", "application/octet-stream", etag)
            bounds = self._bounds(session, source, key)
            entries: list[Entry] = []
            if bounds is not None:
                V = AnnotationVersion
                statement = self._in_cell(source, key, bounds[0])
                if bounds[1] is not None:
                    key_value, annotation_id = bounds[1]
                    statement = statement.where(or_(V.sample_key < key_value,
                                                    and_(V.sample_key == key_value, V.annotation_id < annotation_id)))
                rows = session.execute(statement.with_only_columns(*ENTRY_COLUMNS)
                                       .order_by(V.sample_key, V.annotation_id))
                entries = [Entry(*row) for row in rows]  # columns, not ORM objects: a cell may hold thousands
            return SourceFile(source.layout.encode_list(entries), "application/octet-stream", etag)

    def by_id(self, actor: Actor, access: DatasetAccess, layer_id: int, kind: str, view: str,
              annotation_id: int) -> SourceFile:
        """One annotation with its related segments. Raises AnnotationNotFound if the view does not hold it."""
        with self._reading(actor, access, layer_id, kind, view) as (session, source):
            V = AnnotationVersion
            row = session.scalars(self._selected(source).where(V.annotation_id == annotation_id)).first() \
                if 0 < annotation_id < 2**31 else None
            if row is None:
                raise AnnotationNotFound(f"no {kind} {annotation_id} in this view of layer {layer_id}")
            return SourceFile(source.layout.encode_by_id(_entry(row)), "application/octet-stream",
                              source.etag(f"by_id/{annotation_id}"))

    def related(self, actor: Actor, access: DatasetAccess, layer_id: int, kind: str, view: str, relationship: str,
                segment: int) -> SourceFile:
        """The annotations related to ``segment`` through ``relationship``, by id. Raises InvalidView for a
        relationship the layer does not declare."""
        with self._reading(actor, access, layer_id, kind, view) as (session, source):
            names = source.layout.relationships
            if relationship not in names:
                raise InvalidView(f"layer {layer_id} has no relationship {relationship[:64]!r}")
            entries: list[Entry] = []
            if segment <= MAX_SEGMENT_ID:
                S, V = AnnotationSegment, AnnotationVersion
                statement = (self._selected(source).join(S, S.version_id == V.id)
                             .where(S.layer_id == source.layer_id, S.relationship == names.index(relationship),
                                    S.segment_id == segment).order_by(V.annotation_id))
                entries = [_entry(row) for row in session.scalars(statement)]
            return SourceFile(source.layout.encode_list(entries), "application/octet-stream",
                              source.etag(f"rel_{relationship}/{segment}"))

    # Helpers

    def _stored_cell(self, actor: Actor, access: DatasetAccess, layer_id: int, kind: str, level: int, cell: str,
                     if_none_match: str | None, editing: str | None = None) -> SourceFile:
        """A cell of the current view, as stored (``annotations.spatial_rows``), less what the edit layers of
        the session whose view key is ``editing`` hold: read with its layer's row as of one moment, on a plain
        connection (no ORM; on PostgreSQL one statement, outside a transaction). The cell's code comes from the
        layer's levels as last seen (bounds and limit never change); a layer row that says otherwise (SQLite
        reuses a deleted layer's id) makes it read again."""
        require(actor, Action.READ, access)
        if not 0 < layer_id < 2**31:
            raise LayerNotFound(f"no annotation layer {layer_id} in dataset {access.name!r}")
        engine = self.sessions.kw["bind"]
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            with self._lock:
                seen = self._facts.get(layer_id)
            without = spatial_rows.held_ids(connection, editing, access.id, layer_id) if editing else frozenset()
            for _ in range(2):
                facts = seen or spatial_rows.layer_facts(connection, layer_id)
                if facts is None or facts.dataset_id != access.id:
                    raise LayerNotFound(f"no annotation layer {layer_id} in dataset {access.name!r}")
                key = CellKey.parse(self._source_of(facts, kind).plan, level, cell)
                now, count, records, ids = spatial_rows.read_cell(connection, layer_id, kind, level,
                                                                  self._source_of(facts, kind).plan.level_code(key),
                                                                  without)
                if now is None or now.dataset_id != access.id:
                    raise LayerNotFound(f"no annotation layer {layer_id} in dataset {access.name!r}")
                with self._lock:
                    self._facts[layer_id] = now
                if (now.lower_bound, now.upper_bound, now.cell_limit) == \
                        (facts.lower_bound, facts.upper_bound, facts.cell_limit):
                    break
                connection.rollback()
                seen = now
        name = f"spatial{level}/{key}"
        if without:
            name += "/without/" + hashlib.blake2b(str(sorted(without)).encode(), digest_size=9).hexdigest()
        etag = self._source_of(now, kind).etag(name)
        if if_none_match == etag:
            return SourceFile(b"", "application/octet-stream", etag)
        return SourceFile(b"".join((struct.pack("<Q", count), records, ids)), "application/octet-stream", etag)

    def _source_of(self, facts: spatial_rows.LayerFacts, kind: str) -> _Source:
        """The current view's source of a layer, parsed once per stored declaration (generation aside)."""
        cache_key = (facts.id, facts.spec, facts.lower_bound, facts.upper_bound, facts.cell_limit, kind)
        with self._lock:
            found = self._sources.get(cache_key)
        if found is None:
            row = AnnotationLayer(id=facts.id, spec=json.loads(facts.spec), lower_bound=json.loads(facts.lower_bound),
                                  upper_bound=json.loads(facts.upper_bound), cell_limit=facts.cell_limit,
                                  generation=0, max_extent=0.0)
            found = _source(row, kind, CURRENT)
            with self._lock:
                self._sources[cache_key] = found
        return dataclasses.replace(found, generation=facts.generation, margin=facts.max_extent)

    @contextmanager
    def _reading(self, actor: Actor, access: DatasetAccess, layer_id: int, kind: str,
                 view_text: str) -> Iterator[tuple[Session, _Source]]:
        """A read of one snapshot (a request's several statements see one state of the layer)."""
        require(actor, Action.READ, access)
        view = CURRENT if EDITING.fullmatch(view_text) is not None else View.parse(view_text)
        with self.sessions() as session:
            if session.get_bind().dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN")  # pysqlite would begin only at the first write
            else:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            row = load_layer(session, access, layer_id)
            yield session, _source(row, kind, view)

    @staticmethod
    def _selected(source: _Source) -> Select[Any]:
        V = AnnotationVersion
        return select(V).where(V.layer_id == source.layer_id, V.kind == source.kind, view_clause(source.view))

    def _in_cell(self, source: _Source, cell: CellKey, start: Cut) -> Select[Any]:
        """The view's annotations whose bounding box meets the cell (closed intervals, as the format's cells),
        with (key, id) at or past ``start``: a range look-up of the anchors' codes around the cell, widened by
        the layer's largest annotation, then the exact test."""
        V = AnnotationVersion
        size = source.plan.chunk_size(cell.level)
        lower = [lo + c * s for lo, c, s in zip(source.plan.lower, cell.coords, size, strict=True)]
        upper = [lo + s for lo, s in zip(lower, size, strict=True)]
        margin = source.margin
        ranges = source.plan.ranges_covering([v - margin for v in lower], [v + margin for v in upper])
        key_value, annotation_id = start
        return self._selected(source).where(
            or_(*[V.cell.between(low, high) for low, high in ranges]),
            V.x1 >= lower[0], V.x0 <= upper[0], V.y1 >= lower[1], V.y0 <= upper[1], V.z1 >= lower[2],
            V.z0 <= upper[2],
            or_(V.sample_key > key_value, and_(V.sample_key == key_value, V.annotation_id >= annotation_id)))

    def _bounds(self, session: Session, source: _Source, cell: CellKey) -> tuple[Cut, Cut | None] | None:
        """The (key, id) range ``cell`` serves (end None: all from start), or None when coarser cells took all."""
        start = FIRST
        finest = len(source.plan.levels) - 1
        for ancestor in source.plan.ancestry(cell):
            end = None if ancestor.level == finest else self._cut(session, source, ancestor, start)
            if ancestor == cell:
                return start, end
            if end is None:
                return None
            start = end
        raise AssertionError("a cell is its own last ancestor")

    def _cut(self, session: Session, source: _Source, cell: CellKey, start: Cut) -> Cut | None:
        """The (limit + 1)-th smallest (key, id) of the cell from ``start`` on, or None if it holds no more."""
        cache_key = (source.layer_id, source.generation, source.kind, str(source.view), cell)
        with self._lock:
            if cache_key in self._cuts:
                return self._cuts[cache_key]
        V = AnnotationVersion
        found = session.execute(
            self._in_cell(source, cell, start).with_only_columns(V.sample_key, V.annotation_id)
            .order_by(V.sample_key, V.annotation_id).offset(source.plan.limit).limit(1)
        ).first()
        cut = None if found is None else (float(found[0]), int(found[1]))
        with self._lock:
            self._cuts[cache_key] = cut
        return cut


def _source(row: AnnotationLayer, kind: str, view: View) -> _Source:
    spec = LayerSpec.model_validate(row.spec)
    if kind not in spec.types:
        raise InvalidView(f"layer {row.id} holds {', '.join(spec.types)}, not {kind}")
    lower = [float(v) for v in row.lower_bound]
    upper = [float(v) for v in row.upper_bound]
    plan = LevelPlan.for_bounds(tuple(lower), tuple(upper), row.cell_limit)
    return _Source(row.id, row.generation, kind, view, Layout.of(spec, kind), plan, lower, upper,
                   row.max_extent)


def _entry(row: AnnotationVersion) -> Entry:
    return Entry(row.annotation_id, row.geometry, row.label, row.properties, row.segments)
