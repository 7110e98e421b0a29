"""Compare what Neuroglancer's own precomputed annotation reader decodes with annotation records (REST API
dicts): both turned into one plain form, written here without Lamella's encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

GEOMETRY = {"point": ("point",), "line": ("point_a", "point_b"), "axis_aligned_bounding_box": ("point_a", "point_b"),
            "ellipsoid": ("center", "radii"), "polyline": ("points",)}
Plain = tuple[int, tuple[float, ...], tuple[Any, ...], tuple[tuple[int, ...], ...] | None]


def _f32(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float32).ravel())


def _colour(value: Any) -> str:
    return "#" + bytes(np.asarray(value, dtype=np.uint8).tolist()).hex()


def from_reader(annotation: Any, kind: str, info: dict[str, Any]) -> Plain:
    """A decoded annotation (``neuroglancer.viewer_state`` type) in plain form."""
    geometry = _f32(np.concatenate([np.asarray(getattr(annotation, name)).ravel() for name in GEOMETRY[kind]]))
    props = []
    for spec, value in zip(info["properties"], annotation.props, strict=True):
        if spec["type"] in ("rgb", "rgba"):
            props.append(_colour(value))
        elif spec["type"] == "float32":
            props.append(float(np.float32(value)))
        else:
            props.append(int(value))
    segments = None if annotation.segments is None else tuple(tuple(int(s) for s in ids)
                                                              for ids in annotation.segments)
    return int(annotation.id), geometry, tuple(props), segments


def from_record(record: dict[str, Any], info: dict[str, Any], labels: Sequence[str],
                with_segments: bool) -> Plain:
    """An annotation record of the REST API in plain form (missing properties are 0, no label is 0)."""
    geometry = _f32([v for name in GEOMETRY[record["type"]] for v in np.asarray(record[name]).ravel()])
    props: list[Any] = []
    for spec in info["properties"]:
        if spec["id"] == "label":
            props.append(0 if record["label"] is None else list(labels).index(record["label"]) + 1)
            continue
        value = record["properties"].get(spec["id"])
        if spec["type"] in ("rgb", "rgba"):
            props.append(value or "#" + "00" * (3 if spec["type"] == "rgb" else 4))
        elif spec["type"] == "float32":
            props.append(float(np.float32(value or 0)))
        else:
            props.append(int(value or 0))
    segments = None
    if with_segments:
        segments = tuple(tuple(record["segments"].get(rel["id"], [])) for rel in info["relationships"])
    return record["id"], geometry, tuple(props), segments
