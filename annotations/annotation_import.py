"""Annotations imported from CSV or Neuroglancer annotation JSON (``annotations.exchange_formats``): the whole
file is read and every annotation checked against its layer before anything is written, then all are added in
one transaction (``AnnotationStore.create_many``), or none. No web framework.

A file that cannot be used raises one ``InvalidImport`` naming where (CSV: the line; JSON: the item) and what.
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal, get_args

import orjson
from pydantic import ValidationError

from annotations.access import Action, Actor, DatasetAccess, require
from annotations.annotation_store import AnnotationStore, CreatedRecord, LayerRecord
from annotations.errors import BatchTooLarge, InvalidAnnotation, InvalidImport
from annotations.exchange_formats import (
    CSV_GEOMETRY,
    GEOMETRY_COLUMNS,
    IGNORED_COLUMNS,
    NG_GEOMETRY,
    PROPERTY_PREFIX,
    SEGMENTS_PREFIX,
    UNSET_KEY,
    csv_columns,
)
from annotations.layer_specs import (
    ANNOTATION_TYPES,
    LABEL_PROPERTY,
    RANK,
    AnnotationIn,
    LayerSpec,
    PropertySpec,
    check_annotation,
)

ImportFormat = Literal["csv", "ng-json"]
IMPORT_FORMATS: tuple[str, ...] = get_args(ImportFormat)
MAX_IMPORT = 250_000  # annotations in one import (one transaction; about 4 KiB of server memory each while written)
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_SEPARATORS = re.compile(r"[\s,]+")
_METRE = {"m": 1e9}  # nm per unit of a Neuroglancer dimension

csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))  # a polyline of 10,000 points is one field


def import_annotations(store: AnnotationStore, actor: Actor, access: DatasetAccess, layer_id: int, data: bytes,
                       fmt: str) -> CreatedRecord:
    """Add the file's annotations to the layer, all or none (annotators of the dataset).

    Raises InvalidImport for a file that cannot be read or an annotation that does not fit the layer,
    BatchTooLarge past ``MAX_IMPORT`` annotations, and the access errors of ``require``.
    """
    require(actor, Action.ANNOTATE, access)
    layer = store.layer(actor, access, layer_id)
    items = parse_annotations(data, fmt, layer)
    return store.create_many(actor, access, layer_id, items, max_batch=MAX_IMPORT)


def parse_annotations(data: bytes, fmt: str, layer: LayerRecord) -> list[AnnotationIn]:
    """Every annotation of the file, each checked against ``layer``."""
    if fmt == "csv":
        found = _csv_items(data, layer.spec)
    elif fmt == "ng-json":
        found = _ng_items(data, layer.spec)
    else:
        raise InvalidImport(f"format must be one of {', '.join(IMPORT_FORMATS)}, not {fmt[:40]!r}")
    items = []
    for where, value in found:
        if len(items) == MAX_IMPORT:
            raise BatchTooLarge(f"at most {MAX_IMPORT} annotations in one import: split the file")
        try:
            item = AnnotationIn.model_validate(value)
            check_annotation(layer.spec, layer.lower_bound, layer.upper_bound, item)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise InvalidImport(f"{where}: {field + ': ' if field else ''}{first['msg']}") from None
        except InvalidAnnotation as error:
            raise InvalidImport(f"{where}: {error}") from None
        items.append(item)
        if len(items) % 2000 == 0:
            time.sleep(0)  # a server's other threads (its event loop) get the interpreter between slices
    if not items:
        raise InvalidImport("the file holds no annotations")
    return items


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidImport(f"the file is not UTF-8 text (byte {error.start})") from None


# CSV


def _csv_items(data: bytes, spec: LayerSpec) -> Iterator[tuple[str, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(_text(data), newline=""), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise InvalidImport("the file is empty") from None
    except csv.Error as error:
        raise InvalidImport(f"line 1: {error}") from None
    known = set(csv_columns(spec))
    unknown = [name for name in header if name not in known and name not in IGNORED_COLUMNS]
    if unknown:
        raise InvalidImport(f"line 1: unknown column {unknown[0][:80]!r} (columns: type, x, y, z, x2, y2, z2, rx, ry, "
                            f"rz, points, label, description, {PROPERTY_PREFIX}<property>, "
                            f"{SEGMENTS_PREFIX}<relationship>)")
    twice = [name for name in header if header.count(name) > 1]
    if twice:
        raise InvalidImport(f"line 1: column {twice[0]!r} appears twice")
    if "type" not in header:
        raise InvalidImport("line 1: the header names no 'type' column")
    properties = {p.id: p for p in spec.properties}
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise InvalidImport(f"line {reader.line_num}: {error}") from None
        where = f"line {reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InvalidImport(f"{where}: {len(row)} fields where the header has {len(header)}")
        yield where, _csv_item(where, dict(zip(header, row, strict=True)), properties)


def _csv_item(where: str, cells: dict[str, str], properties: dict[str, PropertySpec]) -> dict[str, Any]:
    kind = cells["type"].strip()
    if kind not in ANNOTATION_TYPES:
        raise InvalidImport(f"{where}, column type: {kind[:40]!r} is not one of {', '.join(ANNOTATION_TYPES)}")
    fields = CSV_GEOMETRY[kind]
    used = {column for columns in fields.values() for column in columns}
    for column in sorted(GEOMETRY_COLUMNS - used):
        if cells.get(column, "").strip():
            raise InvalidImport(f"{where}, column {column}: a {kind} has no {column} (leave it empty)")
    item: dict[str, Any] = {"type": kind}
    for name, columns in fields.items():
        if name == "points":
            text = cells.get("points", "").strip()
            points = [part for part in text.split(";") if part.strip()]
            item["points"] = [_numbers(where, "points", part, RANK) for part in points]
        else:
            item[name] = [_number(where, column, cells.get(column, "")) for column in columns]
    label = cells.get("label", "").strip()
    item["label"] = label or None
    item["description"] = cells.get("description", "")
    values: dict[str, Any] = {}
    segments: dict[str, list[int]] = {}
    for column, text in cells.items():
        if column.startswith(PROPERTY_PREFIX) and text.strip():
            prop = properties[column.removeprefix(PROPERTY_PREFIX)]
            values[prop.id] = _property(where, column, prop, text.strip())
        elif column.startswith(SEGMENTS_PREFIX) and text.strip():
            segments[column.removeprefix(SEGMENTS_PREFIX)] = _segment_ids(where, column, _SEPARATORS.split(
                text.strip()))
    item["properties"] = values
    item["segments"] = segments
    return item


def _number(where: str, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidImport(f"{where}, column {column}: {text.strip()[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidImport(f"{where}, column {column}: {text.strip()[:40]!r} is not a finite number")
    return value


def _numbers(where: str, column: str, text: str, count: int) -> list[float]:
    parts = [part for part in _SEPARATORS.split(text.strip()) if part]
    if len(parts) != count:
        raise InvalidImport(f"{where}, column {column}: {text.strip()[:40]!r} is not {count} numbers x y z")
    return [_number(where, column, part) for part in parts]


def _property(where: str, column: str, prop: PropertySpec, text: str) -> Any:
    if prop.type in ("rgb", "rgba"):
        return text
    if prop.enum_labels is not None and prop.enum_values is not None and text in prop.enum_labels:
        return prop.enum_values[prop.enum_labels.index(text)]
    if prop.type != "float32" and _INTEGER.fullmatch(text):
        return int(text)
    return _number(where, column, text)


def _segment_ids(where: str, field: str, values: Sequence[Any]) -> list[int]:
    ids = []
    for value in values:
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 20:
            raise InvalidImport(f"{where}, {field}: segment id {str(value)[:40]!r} is not a non-negative integer")
        ids.append(int(text))
    return ids


# Neuroglancer annotation JSON


def _ng_items(data: bytes, spec: LayerSpec) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise InvalidImport(f"the file is not strict JSON: {error}") from None
    if isinstance(document, list):
        document = {"annotations": document}
    if not isinstance(document, dict):
        raise InvalidImport("expected a Neuroglancer annotation layer (an object) or a list of annotations")
    if "layers" in document:
        raise InvalidImport("this is a whole viewer state: give one of its annotation layers")
    annotations = document.get("annotations")
    if not isinstance(annotations, list):
        raise InvalidImport('expected "annotations": a list of Neuroglancer annotations')
    props = _ng_property_specs(document.get("annotationProperties", []))
    relationships = document.get("annotationRelationships", [])
    if not (isinstance(relationships, list) and all(isinstance(r, str) for r in relationships)):
        raise InvalidImport('"annotationRelationships" must be a list of names')
    scale = _ng_scale(document.get("source"))
    for index, value in enumerate(annotations):
        where = f"annotations[{index}]"
        if not isinstance(value, dict):
            raise InvalidImport(f"{where}: expected an object")
        yield where, _ng_item(where, value, props, relationships, scale)


def _ng_property_specs(value: Any) -> list[dict[str, Any]]:
    if not (isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("id"), str) for p in value)):
        raise InvalidImport('"annotationProperties" must be a list of property declarations with an "id"')
    return value


def _ng_scale(source: Any) -> list[float]:
    """nm per coordinate unit along x, y, z, from the layer's source transform (none: nm)."""
    if isinstance(source, list):
        source = source[0] if len(source) == 1 else None
    transform = source.get("transform") if isinstance(source, dict) else None
    if transform is None:
        return [1.0, 1.0, 1.0]
    dimensions = transform.get("outputDimensions") if isinstance(transform, dict) else None
    if set(transform) - {"outputDimensions"} or not isinstance(dimensions, dict) or list(dimensions) != ["x", "y", "z"]:
        raise InvalidImport("source.transform: only outputDimensions x, y, z (a scaling) can be imported")
    scale = []
    for axis, entry in dimensions.items():
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int | float)
                and not isinstance(entry[0], bool) and entry[0] > 0 and entry[1] in _METRE):
            raise InvalidImport(f"source.transform.outputDimensions.{axis}: expected [scale, \"m\"]")
        scale.append(float(entry[0]) * _METRE[entry[1]])
    return scale


def _ng_item(where: str, value: dict[str, Any], props: list[dict[str, Any]], relationships: list[str],
             scale: list[float]) -> dict[str, Any]:
    kind = value.get("type")
    if kind not in NG_GEOMETRY:
        raise InvalidImport(f"{where}.type: {str(kind)[:40]!r} is not one of {', '.join(ANNOTATION_TYPES)}")
    item: dict[str, Any] = {"type": kind}
    for name, key in NG_GEOMETRY[kind].items():
        given = value.get(key)
        if name == "points":
            if not isinstance(given, list):
                raise InvalidImport(f"{where}.points: expected a list of points")
            item[name] = [_ng_point(f"{where}.points[{i}]", p, scale) for i, p in enumerate(given)]
        else:
            item[name] = _ng_point(f"{where}.{key}", given, scale)
    description = value.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidImport(f"{where}.description: expected text")
    item["description"] = description or ""
    item["label"] = None
    unset = value.get(UNSET_KEY, [])
    given_props = value.get("props", [])
    if not isinstance(given_props, list) or (len(given_props) != len(props) and "props" in value):
        raise InvalidImport(f"{where}.props: expected {len(props)} values, one per annotationProperties entry")
    properties: dict[str, Any] = {}
    for spec, prop_value in zip(props, given_props, strict=False):
        if spec["id"] == LABEL_PROPERTY:
            item["label"] = _ng_label(where, spec, prop_value)
        elif not (isinstance(unset, list) and spec["id"] in unset):
            properties[spec["id"]] = prop_value
    item["properties"] = properties
    item["segments"] = _ng_segments(where, value.get("segments"), relationships)
    return item


def _ng_point(where: str, value: Any, scale: list[float]) -> list[float]:
    if not (isinstance(value, list) and len(value) == RANK
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise InvalidImport(f"{where}: expected {RANK} numbers x y z")
    return [v * s for v, s in zip(value, scale, strict=True)]


def _ng_label(where: str, spec: dict[str, Any], value: Any) -> str | None:
    values, labels = spec.get("enum_values") or [], spec.get("enum_labels") or []
    if value in values and len(labels) == len(values):
        return str(labels[values.index(value)])
    if value == 0:
        return None
    raise InvalidImport(f"{where}.props: label value {str(value)[:20]!r} is not one of the label property's "
                        "enum values")


def _ng_segments(where: str, value: Any, relationships: list[str]) -> dict[str, list[int]]:
    if value is None or value == []:
        return {}
    if not isinstance(value, list):
        raise InvalidImport(f"{where}.segments: expected a list of segment id lists, one per relationship")
    if len(relationships) == 1 and not any(isinstance(v, list) for v in value):
        value = [value]
    if len(value) != len(relationships) or not all(isinstance(v, list) for v in value):
        raise InvalidImport(f"{where}.segments: expected {len(relationships)} lists of segment ids "
                            "(one per annotationRelationships entry)")
    return {name: _segment_ids(where, f"segments.{name}", ids) for name, ids in zip(relationships, value, strict=True)
            if ids}
