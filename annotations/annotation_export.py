"""A layer's annotations exported as CSV, Neuroglancer annotation JSON, or static precomputed annotation folders
in a zip or tar archive, as a stream of bytes. No web framework.

``export_layer`` checks access and finds the layer at once (so that a web answer can still be an error), then
returns a ``LayerExport``: an iterator of byte chunks read from one database snapshot (a read transaction;
REPEATABLE READ on PostgreSQL) in batches, with server-side cursors on PostgreSQL. Whatever the layer's size,
what is held at once is a batch of rows and the file being written (see ``annotations.annotation_folders``).
Formats: ``annotations.exchange_formats``. Close the export (or read it to its end) to end its transaction.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, get_args

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from annotations.access import Action, Actor, DatasetAccess, require
from annotations.annotation_folders import (
    GEOMETRY,
    PROPERTIES,
    SEGMENTS,
    LayerSnapshot,
    batched_rows,
    folder_files,
    loads,
)
from annotations.annotation_store import geometry_fields, load_layer, view_clause
from annotations.archives import tar_stream, zip_stream
from annotations.catalog import as_utc, dataset_record
from annotations.cells import DEFAULT_LIMIT
from annotations.errors import InvalidView
from annotations.exchange_formats import (
    CSV_GEOMETRY,
    LAMELLA_KEY,
    NG_DIMENSIONS,
    NG_GEOMETRY,
    UNSET_KEY,
    csv_columns,
    ng_properties,
    number_text,
    zero_of,
)
from annotations.layer_specs import LABEL_PROPERTY, LayerSpec
from annotations.mifa import mifa_record
from annotations.models import AnnotationLayer, AnnotationVersion, Dataset
from annotations.views import View

ExportFormat = Literal["csv", "ng-json", "precomputed-zip", "precomputed-tar", "mifa"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
MEDIA_TYPES = {"csv": ("text/csv; charset=utf-8", "csv"), "ng-json": ("application/json", "json"),
               "precomputed-zip": ("application/zip", "zip"), "precomputed-tar": ("application/x-tar", "tar"),
               "mifa": ("application/json", "mifa.json")}
CHUNK = 256 * 1024  # bytes handed out at a time (larger files pass whole)


@dataclass
class LayerExport(Iterator[bytes]):
    """An export being written: its file name and media type, and its bytes in chunks. Close it when done
    (reading to the end, or an error while reading, closes it too)."""

    filename: str
    content_type: str
    _chunks: Iterator[bytes]
    _session: Session
    closed: bool = field(default=False)

    def __next__(self) -> bytes:
        if self.closed:
            raise StopIteration
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            self._session.close()

    def __enter__(self) -> LayerExport:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def export_layer(sessions: sessionmaker[Session], actor: Actor, access: DatasetAccess, layer_id: int,
                 fmt: str, view: View | None = None, limit: int = DEFAULT_LIMIT, origin: str = "") -> LayerExport:
    """The layer (as ``view`` selects: as of a time, by author, label, update time) in format ``fmt``.

    ``mifa`` is the layer's MIFA record alone; the precomputed archives hold it too, as ``mifa.json`` beside the
    folders. ``origin`` (scheme and host) makes the record's source image URLs absolute.

    Raises at once (before any byte): the access errors of ``require``, LayerNotFound, InvalidView for a
    format that is not one of ``EXPORT_FORMATS``. ``limit``: annotations per spatial cell above the finest
    level of a precomputed folder.
    """
    require(actor, Action.READ, access)
    if fmt not in MEDIA_TYPES:
        raise InvalidView(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {fmt[:40]!r}")
    view = view or View()
    session = sessions()
    try:
        _begin_snapshot(session)
        row = load_layer(session, access, layer_id)
        layer = LayerSnapshot(row.id, LayerSpec.model_validate(row.spec), _triple(row.lower_bound),
                              _triple(row.upper_bound), float(row.max_extent), view)
        root = f"{access.name}-{row.name}"
        if fmt == "csv":
            pieces = _csv(session, layer)
        elif fmt == "ng-json":
            pieces = _ng_json(session, layer, row)
        elif fmt == "mifa":
            pieces = iter([_mifa_json(session, layer, row, access, origin)])
        else:
            mifa = _mifa_json(session, layer, row, access, origin)
            files = itertools.chain([(f"{root}/mifa.json", mifa)], (
                (f"{root}/{kind}/{path}", data) for kind in layer.spec.types
                for path, data in folder_files(session, layer, kind, limit)))
            pieces = tar_stream(files) if fmt == "precomputed-tar" else zip_stream(files)
    except BaseException:
        session.close()
        raise
    content_type, extension = MEDIA_TYPES[fmt]
    return LayerExport(f"{root}.{extension}", content_type, _coalesced(pieces), session)


def _begin_snapshot(session: Session) -> None:
    """One snapshot for every statement of the export."""
    if session.get_bind().dialect.name == "sqlite":
        session.connection().exec_driver_sql("BEGIN")  # pysqlite would begin only at the first write
    else:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def _triple(values: list[Any]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


def _coalesced(pieces: Iterator[bytes], size: int = CHUNK) -> Iterator[bytes]:
    held: list[bytes] = []
    count = 0
    for piece in pieces:
        if len(piece) >= size:
            if held:
                yield b"".join(held)
                held, count = [], 0
            yield piece
            continue
        held.append(piece)
        count += len(piece)
        if count >= size:
            yield b"".join(held)
            held, count = [], 0
    if held:
        yield b"".join(held)


def _versions(session: Session, layer: LayerSnapshot) -> Iterator[Any]:
    """The view's annotations in id order, a batch at a time."""
    V = AnnotationVersion
    statement = (select(V.annotation_id, V.kind, GEOMETRY, V.label, V.description, PROPERTIES, SEGMENTS, V.author,
                        V.valid_from)
                 .where(V.layer_id == layer.layer_id, view_clause(layer.view)).order_by(V.annotation_id))
    for annotation_id, kind, geometry, label, description, properties, segments, author, valid_from in \
            batched_rows(session, statement):
        yield annotation_id, kind, loads(geometry), label, description, loads(properties), loads(segments), author, \
            valid_from


# CSV


def _csv(session: Session, layer: LayerSnapshot) -> Iterator[bytes]:
    spec = layer.spec
    columns = csv_columns(spec)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for annotation_id, kind, geometry, label, description, properties, segments, author, valid_from in \
            _versions(session, layer):
        cells = dict.fromkeys(columns, "")
        fields = geometry_fields(kind, geometry)
        for name, targets in CSV_GEOMETRY[kind].items():
            if name == "points":
                cells["points"] = ";".join(" ".join(number_text(v) for v in point) for point in fields[name])
            else:
                cells.update(zip(targets, (number_text(v) for v in fields[name]), strict=True))
        cells.update(id=str(annotation_id), type=kind, label=label or "", description=description,
                     author=author, updated_at=as_utc(valid_from).isoformat())
        for prop in spec.properties:
            if prop.id in properties:
                value = properties[prop.id]
                cells["prop:" + prop.id] = number_text(value) if prop.type == "float32" else str(value)
        for name in spec.relationships:
            cells["segments:" + name] = " ".join(str(s) for s in segments.get(name, ()))
        writer.writerow(cells.values())
        if buffer.tell() >= CHUNK:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


# Neuroglancer annotation JSON


def _short(value: float) -> float:
    """The float whose shortest text is the stored float32's: compact JSON that reads back to the same float32."""
    return float(number_text(value))


def _ng_json(session: Session, layer: LayerSnapshot, row: AnnotationLayer) -> Iterator[bytes]:
    spec = layer.spec
    properties = ng_properties(spec)
    labels = [label.id for label in spec.labels]
    document = {
        "type": "annotation", "name": row.name,
        "source": {"url": "local://annotations", "transform": {"outputDimensions": NG_DIMENSIONS}},
        "annotationProperties": properties,
        "annotationRelationships": list(spec.relationships),
        LAMELLA_KEY: {"layer": row.name, "description": row.description, "spec": spec.model_dump(mode="json"),
                      "lower_bound": list(layer.lower), "upper_bound": list(layer.upper), "view": str(layer.view)},
    }
    head = json.dumps(document, allow_nan=False, separators=(",", ":"))
    yield (head[:-1] + ',"annotations":[').encode()
    first = True
    for annotation_id, kind, geometry, label, description, values, segments, _, _ in _versions(session, layer):
        fields = geometry_fields(kind, geometry)
        item: dict[str, Any] = {"type": kind, "id": str(annotation_id)}
        for name, key in NG_GEOMETRY[kind].items():
            value = fields[name]
            item[key] = [[_short(v) for v in p] for p in value] if name == "points" else [_short(v) for v in value]
        if description:
            item["description"] = description
        if properties:
            props, unset = [], []
            for prop in properties:
                if prop["id"] == LABEL_PROPERTY and labels:
                    props.append(0 if label is None else labels.index(label) + 1)
                elif prop["id"] in values:
                    value = values[prop["id"]]
                    props.append(_short(value) if prop["type"] == "float32" else value)
                else:
                    props.append(zero_of(prop["type"]))
                    unset.append(prop["id"])
            item["props"] = props
            if unset:
                item[UNSET_KEY] = unset
        if spec.relationships:
            item["segments"] = [[str(s) for s in segments.get(name, ())] for name in spec.relationships]
        yield (b"" if first else b",") + orjson.dumps(item)
        first = False
    yield b"]}"


# MIFA


def _mifa_json(session: Session, layer: LayerSnapshot, row: AnnotationLayer, access: DatasetAccess,
               origin: str) -> bytes:
    dataset = dataset_record(session.get_one(Dataset, access.id))
    reference = dataset.reference()
    source: dict[str, Any] = {"dataset": dataset.name, "title": dataset.title, "accession": dataset.accession,
                              "image": None}
    if reference is not None:
        base = f"{origin}/api/datasets/{dataset.id}/images/{reference.name}"
        source.update(image=reference.name, modality=reference.modality, voxel_size_nm_zyx=reference.voxel_size_nm,
                      zarr_url=f"{base}/zarr/", neuroglancer_source=f"precomputed://{base}/precomputed",
                      coordinates="nm, x y z, in this image's physical space (Neuroglancer's convention)")
    versions = ((kind, label, values, author, as_utc(written))
                for _, kind, _, label, _, values, _, author, written in _versions(session, layer))
    record = mifa_record(row.name, row.description, layer.spec, layer.lower, layer.upper, versions, source,
                         str(layer.view))
    return json.dumps(record, allow_nan=False, indent=1).encode()
