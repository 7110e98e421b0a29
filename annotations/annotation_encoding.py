"""The Neuroglancer precomputed annotation encoding: ``info``, one annotation, lists of annotations (spatial
cells, relationship entries) and ``by_id`` entries. Pure code: no database, no web framework.

Format: upstream ``src/datasource/precomputed/annotations.md``. One source holds one annotation type, so a
layer that declares several types is served as one source per type. Coordinates are nanometres (x y z).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from annotations.cells import LevelPlan
from annotations.layer_specs import LABEL_PROPERTY, PROPERTY_TYPES, LayerSpec

ANNOTATION_TYPE_NAMES = {"point": "POINT", "line": "LINE", "axis_aligned_bounding_box": "AXIS_ALIGNED_BOUNDING_BOX",
                         "ellipsoid": "ELLIPSOID", "polyline": "POLYLINE"}
BY_ID_KEY = "by_id"
NANOMETRE = [1e-9, "m"]
# Little-endian struct codes of the numeric property types (values were checked against their ranges on write).
_STRUCT = {"uint32": "<I", "int32": "<i", "float32": "<f", "uint16": "<H", "int16": "<h", "uint8": "<B", "int8": "<b"}


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
