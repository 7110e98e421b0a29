"""A correlative dataset as an OME-Zarr 0.6 scene: its images side by side, each tied to one reference space.

Layout (OME-Zarr 0.6, "Scene" storage format and "scene" metadata)::

    DEST/zarr.json                          ome.scene: the "reference" coordinate system first, then one edge
                                            per image, from the image's "physical" system to "reference"
    DEST/<image>/zarr.json                  the image's own multiscale metadata, rewritten at version 0.6
    DEST/<image>/<level>/…                  its arrays as stored (zarr.json and chunks or shards, never re-encoded)
    DEST/coordinateTransformations/<image>-forward, -inverse
                                            thin-plate splines sampled to displacement fields (multiscale groups)

Edges follow Lamella's transforms (``tiling.transforms``: moving physical nm -> reference physical nm, x y z)
written as the specification writes them: rows and columns in the axis order of the data (z y x), the
translation last, the homogeneous row left out; each image's unit is folded into its edge (the reference
system is in nanometres: 0.6 has no unit conversion between systems). A spline has no transform type of
its own: it is sampled forward (over the moving image) and backward (over the reference image) and stored
as a ``bijection`` of two ``displacements``. Pure code: no database, no web.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiling.array_formats import v3_array_metadata
from tiling.errors import InvalidMultiscale
from tiling.omezarr import UNIT_TO_NM, parse_multiscale
from tiling.scene_transforms import SceneProblem, read_attributes
from tiling.transforms import ThinPlateSpline

VERSION = "0.6"
REFERENCE = "reference"  # the scene's own coordinate system: the reference image's space, in nanometres
INTRINSIC = "physical"  # each image's intrinsic coordinate system
FIELDS = "coordinateTransformations"  # the group the specification names for transforms stored as arrays
FIELD_SAMPLES = 1 << 17  # vectors per sampled field: 362² in 2D, 50³ in 3D
FIELD_MARGIN = 0.05  # each field reaches this fraction of its extent beyond the image and its landmarks
SPATIAL = ("z", "y", "x")


@dataclass(frozen=True)
class AffinePlacement:
    """An image placed by a 4x4 affine: moving physical nm -> reference physical nm, x y z (``tiling.transforms``)."""

    matrix: np.ndarray


@dataclass(frozen=True)
class SplinePlacement:
    """An image placed by a thin-plate spline through landmark pairs ((n, 3) nm, x y z)."""

    moving: np.ndarray
    reference: np.ndarray
    dimensions: int


Placement = AffinePlacement | SplinePlacement | None  # None: the reference image itself


@dataclass(frozen=True)
class SceneImage:
    """An image to put in a scene: its name there (a group path), its local OME-Zarr folder, its placement."""

    name: str
    location: Path
    placement: Placement


@dataclass(frozen=True)
class SceneFile:
    """One file of a scene: written from ``data``, or ``source`` linked or copied as it is."""

    path: str
    data: bytes | None = None
    source: Path | None = None

    def read(self) -> bytes:
        return self.data if self.data is not None else self.source.read_bytes()  # type: ignore[union-attr]


@dataclass(frozen=True)
class _Image:
    """An image's metadata, read: its axes, level paths and transforms, and its extent in nm (z y x)."""

    scene: SceneImage
    zarr_format: int
    ome: dict[str, Any]  # the OME metadata ("ome" in Zarr v3, the attributes themselves in v2)
    extra: dict[str, Any]  # attributes that are not OME's
    axes: list[dict[str, Any]]
    levels: list[tuple[str, list[float], list[float]]]  # path, scale, translation (stored axes, image units)
    shape: list[int]

    @property
    def spatial(self) -> list[str]:
        return [axis["name"] for axis in self.axes if axis.get("name") in SPATIAL]

    def factors(self) -> list[float]:
        """Nanometres per unit of each stored axis (1 for axes that are not spatial)."""
        factors = []
        for axis in self.axes:
            unit = axis.get("unit")
            if axis.get("name") in SPATIAL and unit is not None and unit not in UNIT_TO_NM:
                raise SceneProblem(f"image {self.scene.name!r}: axis {axis['name']} is in {unit!r}, not a length")
            factors.append(UNIT_TO_NM.get(unit, 1.0) if axis.get("name") in SPATIAL else 1.0)
        return factors

    def extent_nm(self) -> tuple[np.ndarray, np.ndarray]:
        """Low and high corners (x y z nm; 0 for axes the image lacks) of level 0, voxels ±½ around centres."""
        _, scale, translation = self.levels[0]
        low, high = np.zeros(3), np.zeros(3)
        for index, (axis, factor) in enumerate(zip(self.axes, self.factors(), strict=True)):
            if axis.get("name") in SPATIAL:
                xyz = 2 - SPATIAL.index(axis["name"])
                low[xyz] = (translation[index] - scale[index] / 2) * factor
                high[xyz] = (translation[index] + (self.shape[index] - 0.5) * scale[index]) * factor
        return low, high


# OME keys of 0.4 group attributes (Zarr v2 keeps them at the top level); the others are kept as they are.
OME_V2_KEYS = {"multiscales", "omero", "image-label", "labels", "plate", "well", "bioformats2raw.layout"}


def _read_image(scene_image: SceneImage) -> _Image:
    folder = scene_image.location
    name = scene_image.name
    try:
        if (folder / "zarr.json").is_file():
            zarr_format, attributes = 3, read_attributes(folder)
        elif (folder / ".zattrs").is_file():
            zarr_format, attributes = 2, json.loads((folder / ".zattrs").read_text(encoding="utf-8"))
        else:
            raise SceneProblem(f"image {name!r}: no OME-Zarr group at {folder}")
        multiscale = parse_multiscale(attributes, zarr_format)
        ome = attributes["ome"] if zarr_format == 3 else attributes
        level_file = "zarr.json" if zarr_format == 3 else ".zarray"
        shape = json.loads((folder / multiscale.levels[0].path / level_file).read_text(encoding="utf-8"))["shape"]
    except InvalidMultiscale as error:
        raise SceneProblem(f"image {name!r}: {error}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SceneProblem(f"image {name!r}: its metadata cannot be read ({error})") from None
    axes = [dict(axis) if isinstance(axis, dict) else {"name": axis} for axis in ome["multiscales"][0]["axes"]]
    if not all(isinstance(axis.get("name"), str) for axis in axes):
        raise SceneProblem(f"image {name!r}: an axis without a name")
    extra = {key: value for key, value in attributes.items() if key != "ome" and (zarr_format == 3 or
                                                                                 key not in OME_V2_KEYS)}
    levels = [(level.path, level.scale, level.translation) for level in multiscale.levels]
    return _Image(scene_image, zarr_format, ome, extra, axes, levels, list(shape))


def _image_metadata(image: _Image) -> dict[str, Any]:
    """The image group's zarr.json at 0.6: one intrinsic coordinate system, level transforms to it."""
    ome = image.ome
    first = ome["multiscales"][0]
    datasets = []
    for path, scale, translation in image.levels:
        reference = {"input": {"path": path}, "output": {"name": INTRINSIC}}
        if any(translation):
            transform = {"type": "sequence", "transformations": [{"type": "scale", "scale": scale},
                                                                  {"type": "translation", "translation": translation}]}
        else:
            transform = {"type": "scale", "scale": scale}
        datasets.append({"path": path, "coordinateTransformations": [{**transform, **reference}]})
    multiscale: dict[str, Any] = {"name": first.get("name") or image.scene.name,
                                  "coordinateSystems": [{"name": INTRINSIC, "axes": image.axes}],
                                  "datasets": datasets}
    for key in ("type", "metadata"):
        if key in first:
            multiscale[key] = first[key]
    if "type" in multiscale and not isinstance(multiscale.get("metadata"), dict):
        multiscale["metadata"] = {"description": f"levels as stored, reduced by {multiscale['type']}"}
    new_ome: dict[str, Any] = {"version": VERSION, "multiscales": [multiscale]}
    omero = ome.get("omero")
    if isinstance(omero, dict) and isinstance(omero.get("channels"), list):
        channels = [dict(channel) for channel in omero["channels"] if isinstance(channel, dict)]
        for channel in channels:  # 0.6 wants all four window numbers, or none
            if not {"start", "end", "min", "max"} <= set(channel.get("window") or {}):
                channel.pop("window", None)
        new_ome["omero"] = {**{k: v for k, v in omero.items() if k != "version"}, "channels": channels}
    # Attributes beside OME's are kept; "image-label" is not: a segmentation is an image of its own here.
    return {"zarr_format": 3, "node_type": "group", "attributes": {**image.extra, "ome": new_ome}}


def _zyx(matrix: np.ndarray) -> np.ndarray:
    """A 4x4 on x y z column vectors as the same map on z y x ones."""
    order = [2, 1, 0, 3]
    return matrix[np.ix_(order, order)]


def _placement_transform(image: _Image, matrix_xyz: np.ndarray, reference_axes: list[str]) -> dict[str, Any]:
    """The edge image "physical" -> "reference" for an affine (nm, x y z), in the image's axis order and units."""
    zyx = _zyx(np.asarray(matrix_xyz, dtype=np.float64))
    rows = [SPATIAL.index(name) for name in reference_axes]
    columns = []
    for axis, factor in zip(image.axes, image.factors(), strict=True):
        name = axis["name"]
        columns.append(zyx[rows, SPATIAL.index(name)] * factor if name in SPATIAL else np.zeros(len(rows)))
    affine = np.column_stack([*columns, zyx[rows, 3]])
    names = [axis["name"] for axis in image.axes]
    square = names == reference_axes
    linear, shift = affine[:, :-1], affine[:, -1]
    if square and np.allclose(linear, np.eye(len(rows)), rtol=0, atol=1e-12) and not np.any(shift):
        return {"type": "identity"}
    if square and np.count_nonzero(linear - np.diag(np.diag(linear))) == 0 and not np.any(shift):
        return {"type": "scale", "scale": [float(v) for v in np.diag(linear)]}
    return {"type": "affine", "affine": [[float(v) for v in row] for row in affine]}


def _field_group(image_name: str, direction: str, spline: ThinPlateSpline, low: np.ndarray, high: np.ndarray,
                 axes: list[str]) -> tuple[str, list[SceneFile]]:
    """A displacement field (the spline's ``direction``, sampled over [low, high] x y z nm) as a multiscale group."""
    used = [2 - SPATIAL.index(name) for name in axes]  # x y z indices of the field's axes, in z y x order
    span = np.maximum(high - low, 1e-9)[used]
    spacing = (float(np.prod(span)) / FIELD_SAMPLES) ** (1 / len(used))
    counts = [int(min(1024, max(2, math.ceil(s / spacing) + 1))) for s in span]
    steps = [s / (c - 1) for s, c in zip(span, counts, strict=True)]
    grid = np.meshgrid(*[low[u] + np.arange(c) * step for u, c, step in zip(used, counts, steps, strict=True)],
                       indexing="ij")
    points = np.zeros((grid[0].size, 3))
    for u, values in zip(used, grid, strict=True):
        points[:, u] = values.ravel()
    mapped = spline.forward(points) if direction == "forward" else spline.inverse(points)
    vectors = np.stack([(mapped - points)[:, u].reshape(counts) for u in used])  # (d, *space), output axis order
    path = f"{FIELDS}/{image_name}-{direction}"
    origin = [float(low[u]) for u in used]
    dataset_transform = {
        "type": "sequence",
        "transformations": [{"type": "scale", "scale": [1.0, *steps]},
                            {"type": "translation", "translation": [0.0, *origin]}],
        "input": {"path": "0"}, "output": {"name": INTRINSIC},
    }
    group = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": VERSION, "multiscales": [{
        "name": f"{image_name} {direction}",
        "coordinateSystems": [{"name": INTRINSIC, "axes": [
            {"name": "c", "type": "displacement", "discrete": True},
            *({"name": name, "type": "space", "unit": "nanometer"} for name in axes)]}],
        "datasets": [{"path": "0", "coordinateTransformations": [dataset_transform]}],
        "type": "sampled",
        "metadata": {"description": f"thin-plate spline ({direction}) sampled on a {'x'.join(map(str, counts))} "
                                    "grid: displacements in nm, in the order of the spatial axes"},
    }]}}}
    data = np.ascontiguousarray(vectors, dtype="<f8")
    array = {
        "zarr_format": 3, "node_type": "array", "shape": list(data.shape), "data_type": "float64",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(data.shape)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                      {"name": "gzip", "configuration": {"level": 1}}],
        "dimension_names": ["c", *axes],
    }
    chunk = "c/" + "/".join("0" for _ in data.shape)
    gzip = zlib.compressobj(1, zlib.DEFLATED, 31)
    return path, [
        SceneFile(f"{path}/zarr.json", _json(group)),
        SceneFile(f"{path}/0/zarr.json", _json(array)),
        SceneFile(f"{path}/0/{chunk}", gzip.compress(data.tobytes()) + gzip.flush()),
    ]


def _spline_transform(image: _Image, reference: _Image, placement: SplinePlacement,
                      reference_axes: list[str]) -> tuple[dict[str, Any], list[SceneFile]]:
    names = [axis["name"] for axis in image.axes]
    if names != reference_axes:
        raise SceneProblem(f"image {image.scene.name!r} ({', '.join(names)}) is placed by a thin-plate spline into "
                           f"a reference of axes {', '.join(reference_axes)}; a sampled field needs the same axes")
    spline = ThinPlateSpline(placement.moving, placement.reference, placement.dimensions)
    files: list[SceneFile] = []
    parts = {}
    for direction, (low, high), landmarks in (("forward", image.extent_nm(), placement.moving),
                                              ("inverse", reference.extent_nm(), placement.reference)):
        low = np.minimum(low, landmarks.min(axis=0))
        high = np.maximum(high, landmarks.max(axis=0))
        margin = (high - low) * FIELD_MARGIN
        path, written = _field_group(image.scene.name, direction, spline, low - margin, high + margin, names)
        # Cubic (B-spline) interpolation of a smooth spline's field: on the same grid, errors far below linear's.
        parts[direction] = {"type": "displacements", "path": path, "interpolation": "cubic"}
        files.extend(written)
    transform: dict[str, Any] = {"type": "bijection", **parts}
    factors = image.factors()
    if any(factor != 1.0 for factor in factors):  # the fields are in nm; the image's unit first becomes nm
        transform = {"type": "sequence", "transformations": [{"type": "scale", "scale": factors}, transform]}
    return transform, files


def _json(document: Any) -> bytes:
    return json.dumps(document, indent=2, allow_nan=False).encode()


def plan_scene(images: list[SceneImage], provenance: dict[str, Any] | None = None) -> list[SceneFile]:
    """Every file of the scene of ``images`` (exactly one with placement None: the reference), root first.

    Raises:
        SceneProblem: no reference or more than one, an image that cannot go into a 0.6 scene (Zarr v2,
            unreadable, a spline across different axes), repeated names.
    """
    references = [image for image in images if image.placement is None]
    if len(references) != 1:
        raise SceneProblem(f"a scene needs exactly one reference image, not {len(references)}")
    names = [image.name for image in images]
    if len(set(names)) != len(names) or any(not name or "/" in name or name == FIELDS for name in names):
        raise SceneProblem(f"image names must be distinct folder names: {names}")
    read = {image.name: _read_image(image) for image in images}
    reference = read[references[0].name]
    reference_axes = reference.spatial
    system = {"name": REFERENCE, "axes": [{"name": name, "type": "space", "unit": "nanometer"}
                                          for name in reference_axes]}
    edges, field_files, image_files = [], [], []
    for image in images:
        found = read[image.name]
        placement = image.placement
        if isinstance(placement, SplinePlacement):
            transform, written = _spline_transform(found, reference, placement, reference_axes)
            field_files.extend(written)
        else:
            matrix = np.eye(4) if placement is None else placement.matrix
            transform = _placement_transform(found, matrix, reference_axes)
        edges.append({"name": f"{image.name} to {REFERENCE}", **transform,
                      "input": {"path": image.name, "name": INTRINSIC}, "output": {"name": REFERENCE}})
        image_files.append(SceneFile(f"{image.name}/zarr.json", _json(_image_metadata(found))))
        for path, _, _ in found.levels:
            image_files.extend(_level_files(found, path))
    scene = {"coordinateSystems": [system], "coordinateTransformations": edges}
    attributes: dict[str, Any] = {"ome": {"version": VERSION, "scene": scene}}
    if provenance:
        attributes["lamella"] = provenance
    root = SceneFile("zarr.json", _json({"zarr_format": 3, "node_type": "group", "attributes": attributes}))
    fields_group = [SceneFile(f"{FIELDS}/zarr.json", _json({"zarr_format": 3, "node_type": "group"}))]
    return [root, *image_files, *(fields_group + field_files if field_files else [])]


def _level_files(image: _Image, level: str) -> Iterator[SceneFile]:
    """The files of one stored array (its chunks or shards as they are; a v2 array's metadata said in v3)."""
    name, folder = image.scene.name, image.scene.location / level
    if image.zarr_format == 2:
        try:
            zarray = json.loads((folder / ".zarray").read_text(encoding="utf-8"))
            converted = v3_array_metadata(zarray, [axis["name"] for axis in image.axes])
        except InvalidMultiscale as error:
            raise SceneProblem(f"image {name!r}, level {level!r}: {error}") from None
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SceneProblem(f"image {name!r}: level {level!r} cannot be read ({error})") from None
        yield SceneFile(f"{name}/{level}/zarr.json", _json(converted))
    elif not (folder / "zarr.json").is_file():
        raise SceneProblem(f"image {name!r}: level {level!r} has no zarr.json")
    for directory, subfolders, files in os.walk(folder):
        subfolders.sort()
        for file_name in sorted(files):
            if image.zarr_format == 2 and file_name in (".zarray", ".zattrs", ".zgroup"):
                continue
            source = Path(directory) / file_name
            yield SceneFile(f"{name}/{source.relative_to(image.scene.location).as_posix()}", source=source)


def write_scene(files: list[SceneFile], destination: Path, *, link: bool = False) -> None:
    """Write a planned scene to ``destination`` (absent or an empty folder), all or nothing.

    Everything goes into a hidden folder beside ``destination``, renamed into place at the end; stored
    chunks are copied byte for byte, or with ``link`` hard-linked where the file system allows (the scene
    then shares those files with the images: a writer that rewrites a file in place would change both).

    Raises:
        FileExistsError: ``destination`` is a file or a folder that is not empty.
    """
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise FileExistsError(f"{destination} exists and is not an empty folder")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.parent / f".{destination.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        for file in files:
            target = partial / file.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if file.data is not None:
                target.write_bytes(file.data)
                continue
            if link:
                try:
                    os.link(file.source, target)  # type: ignore[arg-type]
                    continue
                except OSError:
                    link = False  # another file system, or no hard links: copy from here on
            shutil.copyfile(file.source, target)  # type: ignore[arg-type]
        if destination.exists():
            destination.rmdir()  # empty, checked above
        partial.rename(destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
