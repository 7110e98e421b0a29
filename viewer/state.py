"""Neuroglancer viewer state for a dataset: layers, dimensions and view, as plain JSON.

States name sources by absolute URL (Neuroglancer needs one), built from the origin the
browser used to reach us, so a session works behind any host name or proxy.
"""

from __future__ import annotations

from typing import Any

from annotations.catalog import DatasetRecord, ImageRecord


def image_base_url(origin: str, dataset: DatasetRecord, image: ImageRecord) -> str:
    return f"{origin}/api/datasets/{dataset.id}/images/{image.name}"


def layer_for(origin: str, dataset: DatasetRecord, image: ImageRecord) -> dict[str, Any]:
    source = f"precomputed://{image_base_url(origin, dataset, image)}/precomputed"
    if image.kind == "segmentation":
        return {"type": "segmentation", "name": image.name, "source": source}
    low, high = image.window
    return {
        "type": "image",
        "name": image.name,
        "source": source,
        "shaderControls": {"normalized": {"range": [low, high]}},
    }


def dataset_state(origin: str, dataset: DatasetRecord) -> dict[str, Any]:
    """The initial state: every image as a layer, centred on the first, 4-panel layout."""
    if not dataset.images:
        return {"layers": [], "layout": "4panel"}
    reference = dataset.images[0]
    size_z, size_y, size_x = reference.voxel_size_nm
    depth, height, width = reference.shape
    return {
        "dimensions": {
            "x": [size_x * 1e-9, "m"],
            "y": [size_y * 1e-9, "m"],
            "z": [size_z * 1e-9, "m"],
        },
        "position": [width / 2, height / 2, depth / 2],
        "crossSectionScale": max(width, height) / 700,
        "projectionScale": max(width, height, depth) * 1.6,
        "layers": [layer_for(origin, dataset, image) for image in dataset.images],
        "selectedLayer": {"layer": reference.name},
        "layout": "4panel",
    }


DEFAULT_CONFIG: dict[str, Any] = {}
