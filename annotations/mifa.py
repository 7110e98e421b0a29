"""A layer's MIFA record: the annotation metadata the MIFA guidelines ask to travel with annotations (Zulueta-Coarasa
et al. 2024, "MIFA: Metadata, Incentives, Formats and Accessibility guidelines to improve the reuse of AI datasets
for bioimage analysis"): annotation type, method, criteria, coverage, source image and confidence.

Computed from what the database already holds (the layer's declaration and description, its annotations in the
export's view, the dataset's reference image), so it is always in step with the data it describes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from annotations.layer_specs import LayerSpec

# MIFA's annotation types (its controlled list) for each of Lamella's geometries.
MIFA_TYPES = {"point": "point annotations", "axis_aligned_bounding_box": "bounding boxes",
              "line": "geometrical annotations", "ellipsoid": "geometrical annotations",
              "polyline": "geometrical annotations"}
CONFIDENCE_PROPERTY = "confidence"  # a layer property of this name (float32, 0-1) is the annotators' confidence


def mifa_record(
    layer_name: str,
    description: str,
    spec: LayerSpec,
    lower: Iterable[float],
    upper: Iterable[float],
    versions: Iterable[tuple[str, str | None, dict[str, Any], str, datetime]],
    source_image: dict[str, Any],
    view: str = "current",
) -> dict[str, Any]:
    """The MIFA record of a layer.

    ``versions``: (type, label, properties, author, written at) of each annotation in the export's view;
    ``source_image``: the annotated image (dataset, image name, accession, URLs).
    """
    by_type: Counter[str] = Counter()
    by_label: Counter[str] = Counter()
    authors: Counter[str] = Counter()
    confidences: list[float] = []
    first = last = None
    for kind, label, properties, author, written in versions:
        by_type[kind] += 1
        by_label[label or "(none)"] += 1
        authors[author] += 1
        value = properties.get(CONFIDENCE_PROPERTY)
        if isinstance(value, int | float) and math.isfinite(value):
            confidences.append(float(value))
        first = written if first is None or written < first else first
        last = written if last is None or written > last else last
    types = sorted({MIFA_TYPES[kind] for kind in spec.types})
    if spec.labels:
        types.append("class labels")
    count = sum(by_type.values())
    lower, upper = list(lower), list(upper)
    confidence: dict[str, Any] = {"property": None, "level": "not recorded"}
    if any(prop.id == CONFIDENCE_PROPERTY for prop in spec.properties):
        confidence = {"property": CONFIDENCE_PROPERTY, "annotations_with_a_value": len(confidences)}
        if confidences:
            confidence.update(minimum=min(confidences), maximum=max(confidences),
                              mean=round(sum(confidences) / len(confidences), 6))
    return {
        "format": "MIFA",
        "layer": layer_name,
        "view": view,
        "annotation_type": types,
        "annotation_method": {
            "method": "manual: drawn in Neuroglancer, entered through the Lamella API, or imported from CSV or "
                      "Neuroglancer annotation JSON, each version recorded with its author and time",
            "annotators": sorted(authors),
            "annotations_by_annotator": dict(sorted(authors.items())),
            "first_written": first.isoformat() if first else None,
            "last_written": last.isoformat() if last else None,
        },
        "annotation_criteria": {
            "description": description,
            "labels": [{"id": label.id, "description": label.description} for label in spec.labels],
            "properties": [{"id": prop.id, "type": prop.type, "description": prop.description}
                           for prop in spec.properties],
        },
        "annotation_coverage": {
            "annotations": count,
            "by_type": dict(sorted(by_type.items())),
            "by_label": dict(sorted(by_label.items())),
            "bounds_nm": {"lower": lower, "upper": upper},
            "description": "annotations within the layer's bounds in the source image; a region without "
                           "annotations is not known to be empty unless the criteria say so",
        },
        "source_image": source_image,
        "annotation_confidence_level": confidence,
    }
