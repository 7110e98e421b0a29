"""What an annotation layer declares (types, labels, typed properties, relationships) and the checking of
one annotation against it. Pure code: no database, no web framework.

Property types and their ranges are Neuroglancer's (upstream ``src/datasource/precomputed/annotations.md``).
Coordinates are physical nanometres, x y z, rounded to float32 on the way in, so that what is stored is
exactly what the precomputed encoding (float32) serves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from annotations.errors import InvalidAnnotation
from annotations.gradual import array
from annotations.names import NoNulSchema

AnnotationType = Literal["point", "line", "axis_aligned_bounding_box", "ellipsoid", "polyline"]
ANNOTATION_TYPES: tuple[str, ...] = ("point", "line", "axis_aligned_bounding_box", "ellipsoid", "polyline")
PropertyType = Literal["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "rgb", "rgba"]
# type -> (little-endian numpy dtype, count, alignment in the encoding, (min, max) for integers)
PROPERTY_TYPES: dict[str, tuple[str, int, int, tuple[int, int] | None]] = {
    "uint32": ("<u4", 1, 4, (0, 2**32 - 1)),
    "int32": ("<i4", 1, 4, (-(2**31), 2**31 - 1)),
    "float32": ("<f4", 1, 4, None),
    "uint16": ("<u2", 1, 2, (0, 2**16 - 1)),
    "int16": ("<i2", 1, 2, (-(2**15), 2**15 - 1)),
    "uint8": ("<u1", 1, 1, (0, 255)),
    "int8": ("<i1", 1, 1, (-128, 127)),
    "rgb": ("<u1", 3, 1, None),
    "rgba": ("<u1", 4, 1, None),
}
PROPERTY_ID = re.compile(r"[a-z][a-zA-Z0-9_]{0,63}", re.ASCII)  # Neuroglancer's rule for property ids
LABEL_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}", re.ASCII)
COLOUR = {"rgb": re.compile(r"#[0-9a-fA-F]{6}", re.ASCII), "rgba": re.compile(r"#[0-9a-fA-F]{8}", re.ASCII)}
LABEL_PROPERTY = "label"  # reserved: the precomputed source is to serve the label as an enum property
MAX_LABELS = 1000
MAX_PROPERTIES = 32
MAX_RELATIONSHIPS = 8
MAX_POLYLINE_POINTS = 10_000
MAX_SEGMENTS = 1000  # related segment ids per relationship and annotation
MAX_SEGMENT_ID = 2**63 - 1  # stored as a signed 64-bit integer
FLOAT32_MAX = float(np.finfo(np.float32).max)
RANK = 3


class PropertySpec(BaseModel):
    """A typed per-annotation property, as in Neuroglancer's precomputed ``properties``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: StrictStr = Field(pattern=r"^[a-z][a-zA-Z0-9_]{0,63}$")
    type: PropertyType
    description: StrictStr = Field("", max_length=2000)
    enum_values: list[int | float] | None = Field(None, max_length=1000)
    enum_labels: list[StrictStr] | None = Field(None, max_length=1000)
    default: int | float | StrictStr | None = None

    @model_validator(mode="after")
    def _check(self) -> PropertySpec:
        if PROPERTY_ID.fullmatch(self.id) is None:
            raise ValueError(f"property id {self.id!r} must match [a-z][a-zA-Z0-9_]*")
        if self.id == LABEL_PROPERTY:
            raise ValueError(f"property id {LABEL_PROPERTY!r} is reserved for the annotation's label")
        if (self.enum_values is None) != (self.enum_labels is None):
            raise ValueError("enum_values and enum_labels go together")
        if self.enum_values is not None:
            if self.type in ("rgb", "rgba"):
                raise ValueError("rgb and rgba properties have no enum values")
            if len(self.enum_values) != len(self.enum_labels or []):
                raise ValueError("enum_values and enum_labels must have the same length")
            for value in self.enum_values:
                check_property_value(self, value, enum=False)
        if self.default is not None:
            check_property_value(self, self.default)
        return self

    @property
    def alignment(self) -> int:
        return PROPERTY_TYPES[self.type][2]


class LabelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: StrictStr = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    description: StrictStr = Field("", max_length=2000)
    color: StrictStr | None = Field(None, pattern=r"^#[0-9a-fA-F]{6}$")

    @model_validator(mode="after")
    def _check(self) -> LabelSpec:
        if LABEL_ID.fullmatch(self.id) is None:
            raise ValueError(f"label id {self.id!r} must be 1 to 64 letters, digits, '_' or '-'")
        if self.color is not None and COLOUR["rgb"].fullmatch(self.color) is None:
            raise ValueError(f"label colour {self.color!r} is not #rrggbb")
        return self


class LayerSpec(BaseModel):
    """An annotation layer's declaration: its types, labels, properties and related segmentations."""

    model_config = ConfigDict(extra="forbid", strict=True)

    types: list[AnnotationType] = Field(min_length=1, max_length=5)
    labels: list[LabelSpec] = Field(default_factory=list, max_length=MAX_LABELS)
    properties: list[PropertySpec] = Field(default_factory=list, max_length=MAX_PROPERTIES)
    relationships: list[StrictStr] = Field(default_factory=list, max_length=MAX_RELATIONSHIPS)

    @model_validator(mode="after")
    def _check(self) -> LayerSpec:
        for what, ids in (("type", self.types), ("label", [label.id for label in self.labels]),
                          ("property", [p.id for p in self.properties]), ("relationship", self.relationships)):
            if len(set(ids)) != len(ids):
                raise ValueError(f"a {what} is named twice")
        return self

    def property(self, name: str) -> PropertySpec:
        for spec in self.properties:
            if spec.id == name:
                return spec
        raise InvalidAnnotation(f"unknown property {name[:64]!r}")


class AnnotationIn(BaseModel):
    """One annotation as a client sends it. Geometry by type: ``point``; ``point_a`` and ``point_b`` (line,
    axis-aligned box); ``center`` and ``radii`` (ellipsoid); ``points`` (polyline, at least two)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"type": "point", "point": [1200, 800, 640], "label": "synapse", "properties": {"confidence": 0.9}},
        {"type": "line", "point_a": [0, 0, 0], "point_b": [100, 50, 20]},
    ]})

    type: AnnotationType
    point: list[float] | None = Field(None, max_length=RANK)
    point_a: list[float] | None = Field(None, max_length=RANK)
    point_b: list[float] | None = Field(None, max_length=RANK)
    center: list[float] | None = Field(None, max_length=RANK)
    radii: list[float] | None = Field(None, max_length=RANK)
    points: list[list[float]] | None = Field(None, max_length=MAX_POLYLINE_POINTS)
    label: Annotated[StrictStr, NoNulSchema()] | None = Field(None, max_length=64)
    description: Annotated[StrictStr, NoNulSchema()] = Field("", max_length=10_000)
    properties: dict[StrictStr, int | float | StrictStr] = Field(default_factory=dict, max_length=MAX_PROPERTIES)
    segments: dict[StrictStr, list[StrictInt]] = Field(default_factory=dict, max_length=MAX_RELATIONSHIPS)

    @field_validator("description", "label")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("text may not contain NUL")
        return value


GEOMETRY_FIELDS: dict[str, tuple[str, ...]] = {
    "point": ("point",),
    "line": ("point_a", "point_b"),
    "axis_aligned_bounding_box": ("point_a", "point_b"),
    "ellipsoid": ("center", "radii"),
    "polyline": ("points",),
}


@dataclass(frozen=True, slots=True)
class CheckedAnnotation:
    """An annotation that fits its layer: flat float32-exact geometry and its bounding box."""

    kind: str
    geometry: tuple[float, ...]
    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    label: str | None
    description: str
    properties: dict[str, Any]
    segments: dict[str, list[int]]

    @property
    def anchor(self) -> tuple[float, float, float]:
        """Where the spatial index files it: the centre of its bounding box."""
        return tuple((a + b) / 2 for a, b in zip(self.lower, self.upper, strict=True))  # type: ignore[return-value]

    @property
    def extent(self) -> float:
        return max((b - a) / 2 for a, b in zip(self.lower, self.upper, strict=True))


def as_float32(value: float, where: str) -> float:
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise InvalidAnnotation(f"{where}: {value!r} is not a finite float32 number")
    return float(np.float32(value))


def _point(values: list[float] | None, where: str) -> list[float]:
    if values is None or len(values) != RANK:
        raise InvalidAnnotation(f"{where}: expected {RANK} coordinates (x, y, z in nm)")
    return [as_float32(v, where) for v in values]


def check_annotation(spec: LayerSpec, lower_bound: list[float], upper_bound: list[float],
                     item: AnnotationIn) -> CheckedAnnotation:
    """``item`` checked against the layer: type, rank, finite in-bounds coordinates, label, properties, segments.

    Raises InvalidAnnotation saying what is wrong.
    """
    if item.type not in spec.types:
        raise InvalidAnnotation(f"this layer holds {', '.join(spec.types)}, not {item.type}")
    needed = GEOMETRY_FIELDS[item.type]
    for name in ("point", "point_a", "point_b", "center", "radii", "points"):
        given = getattr(item, name) is not None
        if given != (name in needed):
            raise InvalidAnnotation(f"a {item.type} has {' and '.join(needed)}"
                                    + (f", not {name}" if given else f"; {name} is missing"))
    if item.type == "polyline":
        assert item.points is not None
        if len(item.points) < 2:
            raise InvalidAnnotation("a polyline has at least two points")
        points = [_point(p, f"points[{i}]") for i, p in enumerate(item.points)]
    elif item.type == "ellipsoid":
        points = [_point(item.center, "center")]
        radii = _point(item.radii, "radii")
        if min(radii) < 0:
            raise InvalidAnnotation("radii: must not be negative")
    else:
        points = [_point(getattr(item, name), name) for name in needed]
    for point in points:
        for axis, value in enumerate(point):
            if not lower_bound[axis] <= value <= upper_bound[axis]:
                raise InvalidAnnotation(f"coordinate {value} of axis {'xyz'[axis]} is outside the layer's bounds "
                                        f"[{lower_bound[axis]}, {upper_bound[axis]}] nm")
    if item.type == "ellipsoid":
        geometry = [*points[0], *radii]
        lower = tuple(c - r for c, r in zip(points[0], radii, strict=True))
        upper = tuple(c + r for c, r in zip(points[0], radii, strict=True))
    else:
        geometry = [v for point in points for v in point]
        lower = tuple(min(p[a] for p in points) for a in range(RANK))
        upper = tuple(max(p[a] for p in points) for a in range(RANK))
    if item.label is not None and item.label not in {label.id for label in spec.labels}:
        raise InvalidAnnotation(f"unknown label {item.label[:64]!r}")
    properties: dict[str, Any] = {}
    for name, value in item.properties.items():
        properties[name] = check_property_value(spec.property(name), value)
    for prop in spec.properties:
        if prop.id not in properties and prop.default is not None:
            properties[prop.id] = check_property_value(prop, prop.default)
    return CheckedAnnotation(item.type, tuple(geometry), lower, upper, item.label, item.description,  # type: ignore[arg-type]
                             properties, _segments(spec, item))


def _segments(spec: LayerSpec, item: AnnotationIn) -> dict[str, list[int]]:
    segments: dict[str, list[int]] = {}
    for name, ids in item.segments.items():
        if name not in spec.relationships:
            raise InvalidAnnotation(f"unknown relationship {name[:64]!r}")
        if len(ids) > MAX_SEGMENTS:
            raise InvalidAnnotation(f"more than {MAX_SEGMENTS} segment ids for {name!r}")
        if any(not 0 <= i <= MAX_SEGMENT_ID for i in ids):
            raise InvalidAnnotation(f"segment ids of {name!r} must lie in [0, 2^63)")
        segments[name] = sorted(set(ids))
    return segments


class _Unusual(Exception):
    """The batch path met something it leaves to ``check_annotation`` (which also words any error)."""


def check_annotations(spec: LayerSpec, lower_bound: list[float], upper_bound: list[float],
                      items: Sequence[AnnotationIn]) -> list[CheckedAnnotation]:
    """``check_annotation`` of each item, with the same results, a batch at a time: coordinates are checked
    and rounded to float32 a column at a time. Anything unusual (above all, anything wrong) is left to
    ``check_annotation`` item by item, so errors are the same, for the first item with one.

    Raises InvalidAnnotation (from ``check_annotation``); the caller says which item.
    """
    try:
        return _check_batch(spec, lower_bound, upper_bound, items)
    except (_Unusual, InvalidAnnotation):  # the first item with an error may come before this one
        return [check_annotation(spec, lower_bound, upper_bound, item) for item in items]


_FIXED = {"point": ("point",), "line": ("point_a", "point_b"), "axis_aligned_bounding_box": ("point_a", "point_b"),
          "ellipsoid": ("center", "radii")}
_OTHERS = {kind: tuple(n for n in ("point", "point_a", "point_b", "center", "radii", "points") if n not in names)
           for kind, names in _FIXED.items()}


def _check_batch(spec: LayerSpec, lower_bound: list[float], upper_bound: list[float],
                 items: Sequence[AnnotationIn]) -> list[CheckedAnnotation]:
    types, labels = set(spec.types), {label.id for label in spec.labels}
    props = {prop.id: prop for prop in spec.properties}
    defaults = {prop.id: check_property_value(prop, prop.default) for prop in spec.properties
                if prop.default is not None}
    coordinates: dict[str, list[Any]] = {kind: [] for kind in _FIXED}
    where: dict[str, list[int]] = {kind: [] for kind in _FIXED}
    properties: list[dict[str, Any]] = []
    segments: list[dict[str, list[int]]] = []
    polylines: dict[int, CheckedAnnotation] = {}
    floats: list[tuple[dict[str, Any], str, float]] = []  # float32 properties, rounded a column at a time
    for index, item in enumerate(items):
        given = item.__dict__  # the model's fields
        kind = given["type"]
        label = given["label"]
        if kind not in types or (label is not None and label not in labels):
            raise _Unusual
        if kind == "polyline":
            polylines[index] = check_annotation(spec, lower_bound, upper_bound, item)
            properties.append(polylines[index].properties)
            segments.append(polylines[index].segments)
            continue
        for name in _OTHERS[kind]:
            if given[name] is not None:
                raise _Unusual
        values = coordinates[kind]
        for name in _FIXED[kind]:
            point = given[name]
            if point is None or len(point) != RANK:
                raise _Unusual
            values.extend(point)
        where[kind].append(index)
        checked: dict[str, Any] = {}
        for name, value in given["properties"].items():
            prop = props.get(name)
            if prop is None:
                raise _Unusual
            if prop.type == "float32" and type(value) is float and -FLOAT32_MAX <= value <= FLOAT32_MAX and \
                    prop.enum_values is None:
                checked[name] = value
                floats.append((checked, name, value))
            else:
                checked[name] = check_property_value(prop, value)
        if defaults:
            checked.update((k, v) for k, v in defaults.items() if k not in checked)
        properties.append(checked)
        segments.append(_segments(spec, item) if given["segments"] else {})
    if floats:
        rounded = array([value for _, _, value in floats], np.float32).tolist()
        for (checked, name, _), value in zip(floats, rounded, strict=True):
            checked[name] = value
    out: list[CheckedAnnotation | None] = [None] * len(items)
    for index, checked_polyline in polylines.items():
        out[index] = checked_polyline
    low, high = np.array(lower_bound, dtype=np.float64), np.array(upper_bound, dtype=np.float64)
    for kind, values in coordinates.items():
        if not values:
            continue
        try:
            given = array(values, np.float64).reshape(len(where[kind]), -1, RANK)
        except (OverflowError, TypeError, ValueError):
            raise _Unusual from None
        if not np.all(np.isfinite(given)) or np.any(np.abs(given) > FLOAT32_MAX):
            raise _Unusual
        rounded = given.astype(np.float32).astype(np.float64)
        placed = rounded[:, :1] if kind == "ellipsoid" else rounded  # an ellipsoid's radii are no place
        if np.any(placed < low) or np.any(placed > high):
            raise _Unusual
        if kind == "ellipsoid":
            if np.any(rounded[:, 1] < 0):
                raise _Unusual
            lower, upper = rounded[:, 0] - rounded[:, 1], rounded[:, 0] + rounded[:, 1]
        else:
            lower, upper = rounded.min(axis=1), rounded.max(axis=1)
        flat = rounded.reshape(len(where[kind]), -1).tolist()
        for index, geometry, low_corner, high_corner in zip(where[kind], flat, lower.tolist(), upper.tolist(),
                                                             strict=True):
            item = items[index]
            out[index] = CheckedAnnotation(kind, tuple(geometry), tuple(low_corner), tuple(high_corner),  # type: ignore[arg-type]
                                           item.label, item.description, properties[index], segments[index])
    return out  # type: ignore[return-value]


def check_property_value(spec: PropertySpec, value: Any, enum: bool = True) -> Any:
    """``value`` as stored for ``spec`` (int, float32-exact float, or #rrggbb[aa] text), else InvalidAnnotation."""
    where = f"property {spec.id!r} ({spec.type})"
    if isinstance(value, bool):
        raise InvalidAnnotation(f"{where}: expected a number, not a boolean")
    if spec.type in ("rgb", "rgba"):
        if not isinstance(value, str) or COLOUR[spec.type].fullmatch(value) is None:
            raise InvalidAnnotation(f"{where}: expected {'#rrggbb' if spec.type == 'rgb' else '#rrggbbaa'}")
        return value.lower()
    if isinstance(value, str):
        raise InvalidAnnotation(f"{where}: expected a number")
    if spec.type == "float32":
        checked: int | float = as_float32(float(value), where)
    else:
        if isinstance(value, float):
            if not value.is_integer():
                raise InvalidAnnotation(f"{where}: expected an integer")
            value = int(value)
        low, high = PROPERTY_TYPES[spec.type][3]  # type: ignore[misc]
        if not low <= value <= high:
            raise InvalidAnnotation(f"{where}: {value} is outside [{low}, {high}]")
        checked = value
    if enum and spec.enum_values is not None and checked not in spec.enum_values:
        raise InvalidAnnotation(f"{where}: {checked} is not one of its enum values")
    return checked

