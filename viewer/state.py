"""Neuroglancer viewer state for a dataset: layers, dimensions and view, as plain JSON.

States name sources by absolute URL (Neuroglancer needs one), built from the origin the
browser used to reach us, so a session works behind any host name or proxy.

Every image appears in the dataset's reference space: the reference image as stored, other
modalities through their current transform (affine: a Neuroglancer source transform;
thin-plate spline: a server-resampled volume on the reference grid).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from annotations.catalog import DatasetRecord, ImageRecord
from annotations.crowd_specs import TaskOffer
from annotations.transforms import TransformRecord
from annotations.viewer_layers import copied_state, state_layers
from tiling.errors import InvalidTransform
from tiling.regions import Region
from tiling.transforms import MAX_COORDINATE_NM, neuroglancer_matrix

OVERLAY_COLOURS = ["#00ff00", "#ff00ff", "#00ffff", "#ffff00", "#ff8000", "#0080ff"]
COLOUR_SHADER = """#uicontrol vec3 color color(default="green")
#uicontrol invlerp normalized
void main() {
  emitRGB(color * normalized());
}
"""
GREY_SHADER = """#uicontrol invlerp normalized
void main() {
  emitGrayscale(normalized());
}
"""
LANDMARK_COLOURS = {"reference": "#ffff00", "moving": "#00e5ff"}
LAYOUTS = ("4panel", "xy", "side-by-side")
log = logging.getLogger("lamella")


def image_base_url(origin: str, dataset: DatasetRecord, image: ImageRecord) -> str:
    return f"{origin}/api/datasets/{dataset.id}/images/{image.name}"


def xyz(values: list[float]) -> np.ndarray:
    """(z, y, x) as stored → (x, y, z) as transforms use."""
    return np.asarray(values[::-1], dtype=np.float64)


def output_dimensions(reference: ImageRecord) -> dict[str, list[Any]]:
    size_x, size_y, size_z = xyz(reference.voxel_size_nm)
    return {"x": [size_x * 1e-9, "m"], "y": [size_y * 1e-9, "m"], "z": [size_z * 1e-9, "m"]}


def placed_by(dataset: DatasetRecord, image: ImageRecord) -> ImageRecord:
    """The image whose transform places ``image``: a segmentation shares its image's space."""
    if image.labels_of is not None:
        return next((other for other in dataset.images if other.id == image.labels_of), image)
    return image


def layer_source(
    origin: str, dataset: DatasetRecord, image: ImageRecord, transform: TransformRecord | None
) -> str | dict[str, Any]:
    base = image_base_url(origin, dataset, image)
    reference = dataset.reference()
    if reference is None or image.id == reference.id or placed_by(dataset, image).id == reference.id:
        return f"precomputed://{base}/precomputed"
    if transform is not None and transform.kind == "tps":
        return f"precomputed://{base}/warped/{transform.id}/precomputed"
    matrix = np.asarray(transform.matrix) if transform is not None and transform.matrix else np.eye(4)
    # Even without a transform, emit the identity: it aligns voxel centres, not corners.
    return {
        "url": f"precomputed://{base}/precomputed",
        "transform": {
            "matrix": neuroglancer_matrix(matrix, xyz(image.voxel_size_nm), xyz(reference.voxel_size_nm)),
            "outputDimensions": output_dimensions(reference),
        },
    }


def layer_for(
    origin: str,
    dataset: DatasetRecord,
    image: ImageRecord,
    transform: TransformRecord | None = None,
    colour: str | None = None,
) -> dict[str, Any]:
    source = layer_source(origin, dataset, image, transform)
    if image.kind == "segmentation":
        # Listed but not drawn until shown (its name in the layer bar, or a segment picked beside the viewer):
        # with no segment selected Neuroglancer colours them all over the EM. Once some are selected only they
        # are coloured in the slices, and their surfaces (the label image's meshes) drawn in the 3D panel.
        return {"type": "segmentation", "name": image.name, "source": source, "visible": False,
                "selectedAlpha": 0.55, "notSelectedAlpha": 0.0, "segments": []}
    low, high = image.window
    layer: dict[str, Any] = {
        "type": "image",
        "name": image.name,
        "source": source,
        "shader": GREY_SHADER,
        "shaderControls": {"normalized": {"range": [low, high]}},
    }
    if colour is not None:
        layer["shader"] = COLOUR_SHADER
        layer["shaderControls"]["color"] = colour
        layer["blend"] = "additive"
        layer["opacity"] = 1.0
    return layer


def dataset_layers(
    origin: str, dataset: DatasetRecord, transforms: dict[int, TransformRecord]
) -> list[dict[str, Any]]:
    """One layer per image; light-microscopy and other non-EM modalities in colour over the EM."""
    layers = []
    colours = iter(OVERLAY_COLOURS * 4)
    for image in dataset.images:
        owner = placed_by(dataset, image)
        colour = next(colours) if image.kind == "image" and image.modality.upper() != "EM" else None
        layers.append(layer_for(origin, dataset, image, transforms.get(owner.id), colour))
    return layers


def dataset_state(
    origin: str, dataset: DatasetRecord, transforms: dict[int, TransformRecord] | None = None
) -> dict[str, Any]:
    """The initial state: every image as a layer in the reference space, centred on the reference."""
    reference = dataset.reference()
    if reference is None:
        return {"layers": [], "layout": "4panel"}
    depth, height, width = reference.shape
    return {
        "dimensions": output_dimensions(reference),
        "position": [width / 2, height / 2, depth / 2],
        "crossSectionScale": max(width, height) / 700,
        "projectionScale": max(width, height, depth) * 1.6,
        "layers": dataset_layers(origin, dataset, transforms or {}),
        "selectedLayer": {"layer": reference.name},
        "layout": "4panel" if depth > 1 else "xy",
    }


def replace_sources(
    state: dict[str, Any], origin: str, dataset: DatasetRecord, transforms: dict[int, TransformRecord]
) -> dict[str, Any]:
    """``state`` with the sources of the dataset's layers placed by the current transforms.

    Everything else the user changed (view, colours, windows, annotations) is kept.
    """
    fresh = {layer["name"]: layer["source"] for layer in dataset_layers(origin, dataset, transforms)}
    new_state = copied_state(state)
    for layer in new_state["layers"]:
        if layer.get("name") in fresh:
            layer["source"] = fresh[layer["name"]]
    return new_state


def apply_display(
    state: dict[str, Any], layers: dict[str, dict[str, Any]], layout: str | None, select: str | None = None
) -> dict[str, Any]:
    """``state`` with per-layer display settings and a layout applied (the overlay controls).

    ``layers`` maps a layer name to any of ``colour`` ("#rrggbb"), ``window`` ([low, high]),
    ``opacity`` (0-1) and ``visible`` (bool); ``select`` opens a layer's panel (e.g. a landmark
    layer, so that ctrl+click places its points). Raises ValueError naming the bad setting.
    """
    new_state = copied_state(state)
    by_name = {layer.get("name"): layer for layer in new_state["layers"]}
    for name, settings in layers.items():
        layer = by_name.get(name)
        if layer is None:
            raise ValueError(f"the view has no layer {name!r}")
        for key, value in settings.items():
            _apply_setting(layer, key, value)
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}")
        new_state["layout"] = _layout(new_state, layout)
    if select is not None:
        if select not in by_name:
            raise ValueError(f"the view has no layer {select!r}")
        new_state["selectedLayer"] = {"layer": select, "visible": True}
    return new_state


COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _apply_setting(layer: dict[str, Any], key: str, value: Any) -> None:
    controls = layer.setdefault("shaderControls", {})
    if key == "colour":
        if not (isinstance(value, str) and COLOUR.fullmatch(value)):
            raise ValueError(f"colour of {layer['name']!r} must look like #rrggbb")
        layer["shader"] = COLOUR_SHADER
        controls["color"] = value
        layer["blend"] = "additive"
    elif key == "window":
        if not (isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)):
            raise ValueError(f"window of {layer['name']!r} must be [low, high], finite numbers")
        if not value[0] < value[1]:
            raise ValueError(f"window of {layer['name']!r} must have low < high")
        controls["normalized"] = {"range": [float(value[0]), float(value[1])]}
    elif key == "opacity":
        if not (is_number(value) and 0 <= value <= 1):
            raise ValueError(f"opacity of {layer['name']!r} must be between 0 and 1")
        layer["opacity"] = float(value)
    elif key == "visible":
        if not isinstance(value, bool):
            raise ValueError(f"visible of {layer['name']!r} must be true or false")
        layer["visible"] = value
    else:
        raise ValueError(f"unknown display setting {key!r}; use colour, window, opacity or visible")


def _layout(state: dict[str, Any], layout: str) -> Any:
    if layout != "side-by-side":
        return layout
    # Two linked panels: the reference (and anything in grey) left, the coloured modalities right.
    layers = state_layers(state)
    names = [layer.get("name") for layer in layers if layer.get("type") == "image"]
    coloured = [layer.get("name") for layer in layers if layer.get("blend") == "additive"]
    annotations = [layer.get("name") for layer in layers if layer.get("type") == "annotation"]
    grey = [name for name in names if name not in coloured]
    # Each landmark layer goes beside the image it marks; others on both sides.
    left = grey + [a for a in annotations if not any(a == landmark_layer_name(c) for c in coloured)]
    right = (coloured or names) + [a for a in annotations if not any(a == landmark_layer_name(g) for g in grey)]
    return {
        "type": "row",
        "children": [
            {"type": "viewer", "layers": left, "layout": "xy"},
            {"type": "viewer", "layers": right, "layout": "xy"},
        ],
    }


def landmark_layer_name(image_name: str) -> str:
    return f"{image_name} landmarks"


def with_landmark_layers(state: dict[str, Any], reference: str, moving: str) -> dict[str, Any]:
    """``state`` with a point-annotation layer for each image of a registration (kept if present)."""
    new_state = copied_state(state)
    layers = new_state["layers"]
    present = {layer.get("name") for layer in layers}
    for role, image_name in (("reference", reference), ("moving", moving)):
        name = landmark_layer_name(image_name)
        if name not in present:
            layers.append(
                {
                    "type": "annotation",
                    "name": name,
                    "source": {"url": "local://annotations"},
                    "tool": "annotatePoint",
                    "annotationColor": LANDMARK_COLOURS[role],
                    "annotations": [],
                }
            )
    new_state["selectedLayer"] = {"layer": landmark_layer_name(reference), "visible": True}
    return new_state


def _coordinate(value: Any, where: str) -> float:
    """A point coordinate from a stored state: finite and within ±``MAX_COORDINATE_NM``."""
    try:
        number = float(value)
    except OverflowError:
        raise InvalidTransform(f"{where} has a coordinate too large for a number") from None
    if not (math.isfinite(number) and abs(number) <= MAX_COORDINATE_NM):
        raise InvalidTransform(f"{where} has a coordinate that is not finite or beyond ±{MAX_COORDINATE_NM:g}")
    return number


def landmark_points(state: dict[str, Any], image_name: str) -> list[list[float]]:
    """The points of an image's landmark layer in global (reference voxel) coordinates, in order.

    InvalidTransform (a ValueError) for a point with a non-finite or absurdly large coordinate.
    """
    for layer in state_layers(state):
        if layer.get("name") == landmark_layer_name(image_name):
            points = [annotation for annotation in layer.get("annotations", []) if annotation.get("type") == "point"]
            return [
                [_coordinate(v, f"point {k} of layer {layer['name']!r}") for v in annotation["point"][:3]]
                for k, annotation in enumerate(points, 1)
            ]
    return []


def move_landmarks(
    state: dict[str, Any], image_name: str, mapping: Callable[[np.ndarray], np.ndarray]
) -> dict[str, Any]:
    """``state`` with the points of an image's landmark layer moved by ``mapping`` (global coordinates).

    When an image's transform changes, points placed on its features must follow them. Points
    that cannot be moved (unreadable, or ``mapping`` fails or gives a non-finite or absurd result)
    stay where they are, all of the layer's together so that pairs stay in step, and are logged:
    a state never receives a non-finite point.
    """
    new_state = copied_state(state)
    for layer in new_state["layers"]:
        if layer.get("name") != landmark_layer_name(image_name):
            continue
        points = [a for a in layer.get("annotations", []) if a.get("type") == "point"]
        if not points:
            continue
        try:
            before = np.asarray([a["point"][:3] for a in points], dtype=np.float64)
            with np.errstate(all="ignore"):  # judged below
                moved = np.asarray(mapping(before), dtype=np.float64)
        except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as error:
            log.warning("landmarks of layer %r not moved: %s", layer.get("name"), error)
            continue
        usable = moved.shape == before.shape and bool(np.all(np.isfinite(moved)))
        if not usable or (moved.size and float(np.max(np.abs(moved))) > MAX_COORDINATE_NM):
            log.warning("landmarks of layer %r not moved: the new transform puts them at non-finite or absurd "
                        "coordinates", layer.get("name"))
            continue
        for annotation, point in zip(points, moved, strict=True):
            annotation["point"] = [float(v) for v in point] + list(annotation["point"][3:])
    return new_state


def session_origin(state: dict[str, Any]) -> str | None:
    """The origin a session's viewer reaches us through, read off its own layer URLs."""
    for layer in state_layers(state):
        source = layer.get("source")
        url = source.get("url") if isinstance(source, dict) else source
        if isinstance(url, str) and url.startswith("precomputed://http"):
            match = re.match(r"precomputed://(https?://[^/]+)/api/", url)
            if match:
                return match.group(1)
    return None


DEFAULT_CONFIG: dict[str, Any] = {}


CROWD_TOOLS = {"point": "annotatePoint", "box": "annotateBoundingBox", "outline": "annotatePolyline"}
MARKS_LAYER = "marks"


def task_state(origin: str, dataset: DatasetRecord, image: ImageRecord, offer: TaskOffer) -> dict[str, Any]:
    """A volunteer's view of one task: the region's own source (only its chunks load), a single cross-section at
    the region's middle slice, and one annotation layer with the workflow's tool, in voxel coordinates."""
    region = Region(tuple(offer.lower), tuple(offer.upper))  # type: ignore[arg-type]
    base = image_base_url(origin, dataset, image)
    width, height = (offer.upper[0] - offer.lower[0], offer.upper[1] - offer.lower[1])
    low, high = image.window
    dimensions = output_dimensions(image)
    return {
        "dimensions": dimensions,
        "position": [(offer.lower[0] + offer.upper[0]) / 2, (offer.lower[1] + offer.upper[1]) / 2,
                     offer.slice + 0.5],
        "crossSectionScale": max(width, height) / 560,
        "layers": [
            {"type": "image", "name": image.name, "source": f"precomputed://{base}/region/{region.format()}/precomputed",
             "shader": GREY_SHADER, "shaderControls": {"normalized": {"range": [low, high]}}},
            {"type": "annotation", "name": MARKS_LAYER,
             "source": {"url": "local://annotations", "transform": {"outputDimensions": dimensions}},
             "tool": CROWD_TOOLS[offer.workflow.tool], "annotationColor": "#ffd000", "annotations": []},
        ],
        "selectedLayer": {"layer": MARKS_LAYER, "visible": False},
        "layout": "xy",
        "showDefaultAnnotations": False,
        "showAxisLines": False,
    }
