"""New annotations as rows: their identities, first versions, related segments and spatial-index entries,
prepared a column at a time and written in one go (``annotations.bulk_rows``) in the writer's transaction.

What needs no id (sample keys, Morton codes, encoded records, JSON texts) is prepared before the writer takes
the layer's lock, so that a large batch holds the lock only for the writing itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection

from annotations.annotation_encoding import Entry, Layout
from annotations.bulk_rows import dialect_of, insert_rows, json_text, new_ids, stored
from annotations.cells import LevelPlan
from annotations.gradual import array, release
from annotations.layer_specs import CheckedAnnotation, LayerSpec
from annotations.models import Annotation, AnnotationSegment, AnnotationVersion
from annotations.spatial_index import Batch
from annotations.spatial_rows import place_batch

VERSION_COLUMNS = ("id", "annotation_id", "layer_id", "kind", "geometry", "label", "description", "properties",
                   "segments", "author_id", "author", "deleted", "cell", "sample_key", "x0", "y0", "z0", "x1",
                   "y1", "z1", "extent", "valid_from", "valid_to")
_EMPTY = "{}"


@dataclass
class NewAnnotations:
    """Checked annotations of one layer, ready to be written (all but their ids)."""

    spec: dict[str, Any]  # the layer declaration the records were encoded for
    plan: LevelPlan
    items: Sequence[CheckedAnnotation]
    keys: np.ndarray  # sample keys, fixed for all versions of each
    codes: list[int]  # the finest cell of each anchor (``AnnotationVersion.cell``)
    lower: np.ndarray  # bounding boxes, n x 3
    upper: np.ndarray
    extents: list[float]
    records: list[bytes]
    geometry: list[str]  # JSON texts
    properties: list[str]
    segments: list[str]

    @classmethod
    def prepare(cls, spec: dict[str, Any], plan: LevelPlan, items: Sequence[CheckedAnnotation],
                keys: np.ndarray | None = None) -> NewAnnotations:
        """Everything but ids; ``keys``: given sample keys (a moved annotation keeps its own), else new ones."""
        n = len(items)
        keys = np.random.default_rng().random(n) if keys is None else keys
        lower = array([item.lower for item in items], np.float64, 3)
        upper = array([item.upper for item in items], np.float64, 3)
        codes = plan.finest_codes((lower + upper) / 2).tolist() if n else []
        extents = ((upper - lower) / 2).max(axis=1).tolist() if n else []
        return cls(spec, plan, items, keys, codes, lower, upper, extents, encode(LayerSpec.model_validate(spec), items),
                   [json_text(item.geometry) for item in items],
                   [json_text(item.properties) if item.properties else _EMPTY for item in items],
                   [json_text(item.segments) if item.segments else _EMPTY for item in items])

    def write(self, connection: Connection, layer_id: int, relationships: Sequence[str], author_id: int | None,
              author: str, now: datetime) -> list[int]:
        """Insert the annotations, their versions, segments and index entries; returns their ids in order."""
        n = len(self.items)
        ids, version_ids = new_ids(connection, (Annotation.__table__, AnnotationVersion.__table__), n)
        when = stored(connection, AnnotationVersion.__table__.c.valid_from, now)
        insert_identities(connection, ids, layer_id, author_id, stored(connection, Annotation.__table__.c.created_at,
                                                                       now))
        no = stored(connection, AnnotationVersion.__table__.c.deleted, False)
        keys = self.keys.tolist()
        low, high = self.lower.tolist(), self.upper.tolist()
        insert_rows(connection, AnnotationVersion.__table__, VERSION_COLUMNS, (
            (version_ids[i], ids[i], layer_id, item.kind, self.geometry[i], item.label, item.description,
             self.properties[i], self.segments[i], author_id, author, no, self.codes[i], keys[i], *low[i], *high[i],
             self.extents[i], when, None)
            for i, item in enumerate(self.items)))
        insert_rows(connection, AnnotationSegment.__table__, ("version_id", "relationship", "segment_id", "layer_id"),
                    list(segment_rows(layer_id, relationships, version_ids, self.items)))
        spec = LayerSpec.model_validate(self.spec)
        by_kind: dict[str, list[int]] = {}
        for i, item in enumerate(self.items):
            by_kind.setdefault(item.kind, []).append(i)
        for kind, rows in by_kind.items():
            place_batch(connection, layer_id, kind, self.plan, Layout.of(spec, kind), Batch.of(
                (keys[i] for i in rows), (ids[i] for i in rows), [self.records[i] for i in rows],
                [low[i] for i in rows], [high[i] for i in rows]))
        release(low, high)
        return ids

    def release(self) -> None:
        """Free what was prepared, a slice at a time (``annotations.gradual``)."""
        release(self.records, self.geometry, self.properties, self.segments, self.codes, self.extents)


def insert_identities(connection: Connection, ids: list[int], layer_id: int, author_id: int | None,
                      created: Any) -> None:
    """The ``annotations`` rows: on PostgreSQL made by the server from the array of ids."""
    if dialect_of(connection) == "postgresql":
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute("INSERT INTO annotations (id, layer_id, created_by, created_at) "
                           "SELECT unnest(%s::int[]), %s, %s, %s", (ids, layer_id, author_id, created))
        return
    insert_rows(connection, Annotation.__table__, ("id", "layer_id", "created_by", "created_at"),
                [(annotation_id, layer_id, author_id, created) for annotation_id in ids])


def encode(spec: LayerSpec, items: Sequence[CheckedAnnotation]) -> list[bytes]:
    """The precomputed record of each annotation, a type at a time."""
    records: list[bytes] = [b""] * len(items)
    by_kind: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_kind.setdefault(item.kind, []).append(i)
    for kind, rows in by_kind.items():
        layout = Layout.of(spec, kind)
        if kind == "polyline":
            for i in rows:
                records[i] = layout.encode(Entry(0, items[i].geometry, items[i].label, items[i].properties, {}))
            continue
        encoded = layout.encode_many(array([items[i].geometry for i in rows], np.float32, len(items[rows[0]].geometry)),
                                     [items[i].label for i in rows], [items[i].properties for i in rows])
        for i, record in zip(rows, encoded, strict=True):
            records[i] = record
    return records


def segment_rows(layer_id: int, relationships: Sequence[str], version_ids: Sequence[int],
                 items: Sequence[CheckedAnnotation]) -> Iterator[tuple[int, int, int, int]]:
    order = {name: i for i, name in enumerate(relationships)}
    for version_id, item in zip(version_ids, items, strict=True):
        for name, segments in item.segments.items():
            for segment in segments:
                yield version_id, order[name], segment, layer_id
