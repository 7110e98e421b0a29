"""The two text formats a layer is exported to and imported from, declared once for both directions. Pure code.

CSV: one row per annotation, columns ``id, type, x, y, z, x2, y2, z2, rx, ry, rz, points, label, description,
author, updated_at``, then ``prop:<id>`` per property and ``segments:<relationship>`` per relationship.
Geometry by type: a point is ``x y z``; a line and an axis-aligned box go from ``x y z`` to ``x2 y2 z2``; an
ellipsoid has its centre in ``x y z`` and its radii in ``rx ry rz``; a polyline lists its points in ``points``
as ``x y z;x y z;…``. Columns another type uses stay empty. Coordinates are nm. An empty property cell is a
property not set; segment ids are separated by spaces. ``id``, ``author`` and ``updated_at`` are what the
layer said; an import ignores them (new annotations get new ids, and the importing account is their author).

Neuroglancer annotation JSON: the annotation layer object Neuroglancer keeps in its state for a local
annotation layer (``{"type": "annotation", "source": {"url": "local://annotations", …}, "annotations": […],
"annotationProperties": […], "annotationRelationships": […]}``), items as Neuroglancer writes them
(``point``; ``pointA``/``pointB``; ``center``/``radii``; ``points``; ``props`` in ``annotationProperties``
order; ``segments`` as decimal strings per relationship). A label travels as the enum property ``label``
(0: none, i: the i-th label), as the precomputed sources serve it; a property an annotation does not set is
written as 0 in ``props`` and named in the item's ``lamella_unset`` list, which Neuroglancer ignores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from annotations.annotation_encoding import NANOMETRE, Layout
from annotations.layer_specs import LABEL_PROPERTY, LayerSpec

FIXED_COLUMNS = ("id", "type", "x", "y", "z", "x2", "y2", "z2", "rx", "ry", "rz", "points", "label", "description",
                 "author", "updated_at")
IGNORED_COLUMNS = frozenset({"id", "author", "updated_at", "created_at", "version"})  # informational only
PROPERTY_PREFIX = "prop:"
SEGMENTS_PREFIX = "segments:"
XYZ = ("x", "y", "z")
CSV_GEOMETRY: dict[str, dict[str, tuple[str, ...]]] = {
    "point": {"point": XYZ},
    "line": {"point_a": XYZ, "point_b": ("x2", "y2", "z2")},
    "axis_aligned_bounding_box": {"point_a": XYZ, "point_b": ("x2", "y2", "z2")},
    "ellipsoid": {"center": XYZ, "radii": ("rx", "ry", "rz")},
    "polyline": {"points": ("points",)},
}
GEOMETRY_COLUMNS = frozenset(c for fields in CSV_GEOMETRY.values() for cs in fields.values() for c in cs)
NG_GEOMETRY: dict[str, dict[str, str]] = {  # our field -> Neuroglancer's key
    "point": {"point": "point"},
    "line": {"point_a": "pointA", "point_b": "pointB"},
    "axis_aligned_bounding_box": {"point_a": "pointA", "point_b": "pointB"},
    "ellipsoid": {"center": "center", "radii": "radii"},
    "polyline": {"points": "points"},
}
UNSET_KEY = "lamella_unset"
LAMELLA_KEY = "lamella"  # the layer's own declaration and bounds, beside Neuroglancer's keys
NG_DIMENSIONS = {axis: NANOMETRE for axis in "xyz"}


def csv_columns(spec: LayerSpec) -> list[str]:
    return [*FIXED_COLUMNS, *(PROPERTY_PREFIX + p.id for p in spec.properties),
            *(SEGMENTS_PREFIX + name for name in spec.relationships)]


def number_text(value: float) -> str:
    """A stored coordinate or float32 value in the fewest digits that read back as the same float32."""
    if float(value).is_integer() and abs(value) < 1e15 and not (value == 0 and math.copysign(1.0, value) < 0):
        return str(int(value))
    return str(np.float32(value))


def ng_properties(spec: LayerSpec) -> list[dict[str, Any]]:
    """``annotationProperties``: the layer's properties, then its labels as the enum property ``label``."""
    found = []
    for prop in spec.properties:
        entry: dict[str, Any] = {"id": prop.id, "type": prop.type}
        if prop.description:
            entry["description"] = prop.description
        if prop.enum_values is not None:
            entry["enum_values"] = list(prop.enum_values)
            entry["enum_labels"] = list(prop.enum_labels or [])
        if prop.default is not None:
            entry["default"] = prop.default
        found.append(entry)
    found += [field.info for field in Layout.of(spec, spec.types[0]).properties if field.id == LABEL_PROPERTY]
    return found


def zero_of(kind: str) -> Any:
    """What ``props`` holds for a property an annotation does not set."""
    return {"rgb": "#000000", "rgba": "#00000000"}.get(kind, 0)
