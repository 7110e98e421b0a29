"""The Neuroglancer precomputed annotation encoding: ``info``, one annotation, lists of annotations (spatial
cells, relationship entries) and ``by_id`` entries. Pure code: no database, no web framework.

Format: upstream ``src/datasource/precomputed/annotations.md``. One source holds one annotation type, so a
layer that declares several types is served as one source per type. Coordinates are nanometres (x y z).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotations.cells import LevelPlan
from annotations.layer_specs import LABEL_PROPERTY, PROPERTY_TYPES, LayerSpec

ANNOTATION_TYPE_NAMES = {"point": "POINT", "line": "LINE", "axis_aligned_bounding_box": "AXIS_ALIGNED_BOUNDING_BOX",
                         "ellipsoid": "ELLIPSOID", "polyline": "POLYLINE"}
BY_ID_KEY = "by_id"
NANOMETRE = [1e-9, "m"]
# Little-endian struct codes of the numeric property types (values were checked against their ranges on write).
_STRUCT = {"uint32": "<I", "int32": "<i", "float32": "<f", "uint16": "<H", "int16": "<h", "uint8": "<B", "int8": "<b"}
# Floats of one annotation's geometry, by type (a polyline's vary).
GEOMETRY_SIZE = {"point": 3, "line": 6, "axis_aligned_bounding_box": 6, "ellipsoid": 6}


def spatial_key(level: int) -> str:
    return f"spatial{level}"


def relationship_key(name: str) -> str:
    return f"rel_{name}"


@dataclass(frozen=True, slots=True)
class PropertyField:
    """One encoded property: its id, type and ``info`` entry."""

    id: str
    type: str
    info: dict[str, Any]

    @property
    def alignment(self) -> int:
        return PROPERTY_TYPES[self.type][2]


@dataclass(frozen=True, slots=True)
class Entry:
    """One annotation to encode: its id, flat geometry (polyline: x y z per point), label, property values
    (missing ones encode as 0) and related segment ids by relationship name."""

    id: int
    geometry: Sequence[float]
    label: str | None
    properties: Mapping[str, Any]
    segments: Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class Layout:
    """How one annotation type of a layer is encoded: its properties in encoding order, its labels (served as
    the enum property ``label``: 0 none, i the i-th label) and its relationships."""

    kind: str
    properties: tuple[PropertyField, ...]
    labels: tuple[str, ...]
    relationships: tuple[str, ...]

    @classmethod
    def of(cls, spec: LayerSpec, kind: str) -> Layout:
        fields = []
        for prop in spec.properties:
            entry: dict[str, Any] = {"id": prop.id, "type": prop.type}
            if prop.description:
                entry["description"] = prop.description
            if prop.enum_values is not None:
                entry["enum_values"] = list(prop.enum_values)
                entry["enum_labels"] = list(prop.enum_labels or [])
            fields.append(PropertyField(prop.id, prop.type, entry))
        labels = tuple(label.id for label in spec.labels)
        if labels:
            kind_of_label = "uint8" if len(labels) < 256 else "uint16"
            fields.append(PropertyField(LABEL_PROPERTY, kind_of_label, {
                "id": LABEL_PROPERTY, "type": kind_of_label, "description": "the annotation's label",
                "enum_values": list(range(1, len(labels) + 1)), "enum_labels": list(labels)}))
        # The format lays properties out by alignment (4-byte, then 2-byte, then 1-byte types, declared order
        # kept within each), and readers differ on whether they sort the info's list themselves (Neuroglancer's
        # Python reader does not): listing them in that order in the info makes both orders one.
        fields.sort(key=lambda field: -field.alignment)
        return cls(kind, tuple(fields), labels, tuple(spec.relationships))

    def info(self, lower: Sequence[float], upper: Sequence[float], plan: LevelPlan) -> dict[str, Any]:
        """The source's ``info`` document: bounds, type, properties, relationships, by_id and spatial levels."""
        return {
            "@type": "neuroglancer_annotations_v1",
            "dimensions": {axis: NANOMETRE for axis in "xyz"},
            "lower_bound": [float(v) for v in lower],
            "upper_bound": [float(v) for v in upper],
            "annotation_type": ANNOTATION_TYPE_NAMES[self.kind],
            "properties": [field.info for field in self.properties],
            "relationships": [{"id": name, "key": relationship_key(name)} for name in self.relationships],
            "by_id": {"key": BY_ID_KEY},
            "spatial": [{"key": spatial_key(i), "grid_shape": list(level.grid_shape),
                         "chunk_size": list(plan.chunk_size(i)), "limit": plan.limit}
                        for i, level in enumerate(plan.levels)],
        }

    def encode(self, entry: Entry) -> bytes:
        """One annotation: geometry (float32; a polyline's point count first, uint32), then its properties,
        zero-padded to a multiple of 4 bytes."""
        parts = bytearray()
        if self.kind == "polyline":
            parts += struct.pack("<I", len(entry.geometry) // 3)
        parts += struct.pack(f"<{len(entry.geometry)}f", *entry.geometry)
        start = len(parts)
        for field in self.properties:
            parts += bytes(-(len(parts) - start) % field.alignment)
            parts += self._value(field, entry)
        parts += bytes(-(len(parts) - start) % 4)
        return bytes(parts)

    def _value(self, field: PropertyField, entry: Entry) -> bytes:
        if field.id == LABEL_PROPERTY and self.labels:
            value: Any = 0 if entry.label is None else self.labels.index(entry.label) + 1
        else:
            value = entry.properties.get(field.id, 0)
        if field.type in ("rgb", "rgba"):
            width = 3 if field.type == "rgb" else 4
            return bytes.fromhex(value[1:]) if isinstance(value, str) else bytes(width)
        return struct.pack(_STRUCT[field.type], value)

    @functools.cached_property
    def _record_dtype(self) -> np.dtype:
        """The record of a fixed-size type as a NumPy structured type (the layout ``encode`` writes)."""
        names, formats, offsets = ["geometry"], [("<f4", (GEOMETRY_SIZE[self.kind],))], [0]
        position = start = 4 * GEOMETRY_SIZE[self.kind]
        for i, field in enumerate(self.properties):
            position += -(position - start) % field.alignment
            names.append(f"p{i}")
            dtype, count, _, _ = PROPERTY_TYPES[field.type]
            formats.append((dtype, (count,)) if count > 1 else dtype)  # type: ignore[arg-type]
            offsets.append(position)
            position += np.dtype(dtype).itemsize * count
        position += -(position - start) % 4
        return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": position})

    def encode_many(self, geometry: np.ndarray, labels: Sequence[str | None],
                    properties: Sequence[Mapping[str, Any]]) -> list[bytes]:
        """``encode`` of many annotations of a fixed-size type (not polyline) at once: ``geometry`` is n rows of
        float32-exact values, ``labels`` and ``properties`` as in ``Entry``."""
        records = np.zeros(len(labels), dtype=self._record_dtype)
        records["geometry"] = geometry
        for i, field in enumerate(self.properties):
            if field.id == LABEL_PROPERTY and self.labels:
                number = {label: n for n, label in enumerate(self.labels, 1)}
                records[f"p{i}"] = [0 if label is None else number[label] for label in labels]
            elif field.type in ("rgb", "rgba"):
                blank = bytes(3 if field.type == "rgb" else 4)
                colours = b"".join(bytes.fromhex(value[1:]) if isinstance(value := p.get(field.id), str) else blank
                                   for p in properties)
                records[f"p{i}"] = np.frombuffer(colours, dtype=np.uint8).reshape(len(labels), -1)
            elif any(field.id in p for p in properties):
                records[f"p{i}"] = [p.get(field.id, 0) for p in properties]
        size = records.dtype.itemsize
        data = records.tobytes()
        return [data[i:i + size] for i in range(0, len(data), size)]

    def bounds(self, record: bytes) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """The bounding box (lower, upper corners) of an encoded annotation: what the spatial index files it by."""
        if self.kind == "polyline":
            (count,) = struct.unpack_from("<I", record)
            values = np.frombuffer(record, dtype="<f4", count=3 * count, offset=4).astype(np.float64).reshape(-1, 3)
            return tuple(values.min(axis=0).tolist()), tuple(values.max(axis=0).tolist())  # type: ignore[return-value]
        values = [float(v) for v in struct.unpack_from(f"<{GEOMETRY_SIZE[self.kind]}f", record)]
        if self.kind == "point":
            point = tuple(values)
            return point, point  # type: ignore[return-value]
        first, second = values[:3], values[3:]
        if self.kind == "ellipsoid":
            return (tuple(c - r for c, r in zip(first, second, strict=True)),  # type: ignore[return-value]
                    tuple(c + r for c, r in zip(first, second, strict=True)))
        return (tuple(min(a, b) for a, b in zip(first, second, strict=True)),  # type: ignore[return-value]
                tuple(max(a, b) for a, b in zip(first, second, strict=True)))

    def bounds_many(self, records: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """``bounds`` of many records: lower and upper corners, n x 3 each."""
        if self.kind == "polyline" or not records:
            boxes = [self.bounds(record) for record in records]
            return (np.array([low for low, _ in boxes], dtype=np.float64).reshape(-1, 3),
                    np.array([high for _, high in boxes], dtype=np.float64).reshape(-1, 3))
        size = 4 * GEOMETRY_SIZE[self.kind]
        values = np.frombuffer(b"".join(record[:size] for record in records), dtype="<f4")
        values = values.astype(np.float64).reshape(len(records), -1, 3)
        if self.kind == "point":
            return values[:, 0], values[:, 0].copy()
        if self.kind == "ellipsoid":
            return values[:, 0] - values[:, 1], values[:, 0] + values[:, 1]
        return values.min(axis=1), values.max(axis=1)

    def encode_list(self, entries: Sequence[Entry]) -> bytes:
        """Several annotations (a spatial cell, a relationship entry): uint64 count, the annotations, their ids."""
        body = bytearray(struct.pack("<Q", len(entries)))
        for entry in entries:
            body += self.encode(entry)
        body += struct.pack(f"<{len(entries)}Q", *(entry.id for entry in entries))
        return bytes(body)

    def encode_by_id(self, entry: Entry) -> bytes:
        """A ``by_id`` entry: the annotation, then per relationship a uint32 count and the uint64 segment ids."""
        body = bytearray(self.encode(entry))
        for name in self.relationships:
            ids = list(entry.segments.get(name, ()))
            body += struct.pack(f"<I{len(ids)}Q", len(ids), *ids)
        return bytes(body)
