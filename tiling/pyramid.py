"""Write OME-Zarr multiscale pyramids (0.5 on sharded Zarr v3, or 0.4 on Zarr v2) with tensorstore.

The image is written beside its destination and moved into place only when complete,
so a failed or interrupted write never leaves something a catalog could point at.
Level 0 is copied from a source in shard-aligned blocks; each further level is computed
from the one before by tensorstore's ``downsample`` driver, block by block, so memory
stays bounded by a few shards whatever the image size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import tensorstore as ts

from tiling.errors import ImportProblem

OmeVersion = Literal["0.4", "0.5"]
SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"}


class SourceArray(Protocol):
    """Anything a pyramid can be written from: a (z, y, x) or (y, x) array read by region."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, region: tuple[slice, ...]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class LevelPlan:
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    factors: tuple[int, ...]  # relative to the level before


@dataclass(frozen=True)
class PyramidOptions:
    """How to lay out the stored pyramid."""

    ome_version: OmeVersion = "0.5"
    chunk: int | None = None  # inner chunk edge; default 64 for 3D, 256 for 2D
    shard_chunks: int | None = None  # inner chunks per shard edge; default 4 (3D) or 8 (2D)
    zstd_level: int = 3
    labels: bool = False  # a segmentation: never averaged
    label_downsample: Literal["mode", "stride"] = "mode"
    unit: str = "nanometer"
    name: str = "image"
    extra_attributes: dict[str, Any] = field(default_factory=dict)

    def chunk_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        edge = self.chunk or (64 if len(shape) == 3 else 256)
        return tuple(max(1, min(edge, s)) for s in shape)

    def shard_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        per_edge = self.shard_chunks or (4 if len(shape) == 3 else 8)
        inner = self.chunk_shape(shape)
        return tuple(min(c * per_edge, math.ceil(s / c) * c) for c, s in zip(inner, shape, strict=True))


def plan_pyramid(
    shape: tuple[int, ...], voxel_size: tuple[float, ...], chunk: tuple[int, ...]
) -> list[LevelPlan]:
    """Levels from full resolution down to one chunk, anisotropy-aware.

    An axis is halved only while its voxel size is within 1.5x of the finest axis that
    can still shrink, so z of an anisotropic FIB-SEM stack waits until x/y catch up.
    """
    levels = [LevelPlan(tuple(shape), tuple(voxel_size), (0.0,) * len(shape), (1,) * len(shape))]
    while True:
        last = levels[-1]
        if all(s <= c for s, c in zip(last.shape, chunk, strict=True)):
            break
        shrinkable = [i for i, s in enumerate(last.shape) if s > 1]
        finest = min(last.scale[i] for i in shrinkable)
        factors = tuple(
            2 if i in shrinkable and last.scale[i] <= finest * 1.5 else 1 for i in range(len(shape))
        )
        new_shape = tuple(math.ceil(s / f) for s, f in zip(last.shape, factors, strict=True))
        new_scale = tuple(s * f for s, f in zip(last.scale, factors, strict=True))
        # Centre of voxel 0 moves by half the extra extent (OME: centre convention).
        new_translation = tuple(
            t + (f - 1) * s / 2 for t, s, f in zip(last.translation, last.scale, factors, strict=True)
        )
        levels.append(LevelPlan(new_shape, new_scale, new_translation, factors))
    return levels


def _blocks(shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    grids = [range(0, s, b) for s, b in zip(shape, block, strict=True)]
    for starts in np.ndindex(*(len(g) for g in grids)):
        yield tuple(
            slice(g[i], min(g[i] + block[d], shape[d]))
            for d, (g, i) in enumerate(zip(grids, starts, strict=True))
        )


def _array_spec(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, axes: list[str], options: PyramidOptions
) -> dict[str, Any]:
    inner = options.chunk_shape(shape)
    kvstore = {"driver": "file", "path": str(path) + "/"}
    if options.ome_version == "0.4":
        return {
            "driver": "zarr",
            "kvstore": kvstore,
            "metadata": {
                "shape": list(shape),
                "chunks": list(inner),
                "dtype": dtype.newbyteorder("<").str,
                "compressor": {"id": "zstd", "level": options.zstd_level},
                "fill_value": 0,
                "order": "C",
                "dimension_separator": "/",
            },
            "create": True,
            "delete_existing": True,
        }
    return {
        "driver": "zarr3",
        "kvstore": kvstore,
        "metadata": {
            "shape": list(shape),
            "data_type": dtype.name,
            "chunk_grid": {
                "name": "regular",
                "configuration": {"chunk_shape": list(options.shard_shape(shape))},
            },
            "chunk_key_encoding": {"name": "default"},
            "fill_value": 0,
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": list(inner),
                        "codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {"name": "zstd", "configuration": {"level": options.zstd_level}},
                        ],
                        "index_codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {"name": "crc32c"},
                        ],
                        "index_location": "end",
                    },
                }
            ],
            "dimension_names": axes,
        },
        "create": True,
        "delete_existing": True,
    }


def multiscale_metadata(
    levels: list[LevelPlan], axes: list[str], options: PyramidOptions, window: tuple[float, float] | None
) -> dict[str, Any]:
    """The OME attributes of the group (the contents of ``ome`` for 0.5, top level for 0.4)."""
    multiscale: dict[str, Any] = {
        "name": options.name,
        "axes": [{"name": a, "type": "space", "unit": options.unit} for a in axes],
        "datasets": [
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": list(level.scale)},
                    {"type": "translation", "translation": list(level.translation)},
                ],
            }
            for i, level in enumerate(levels)
        ],
        "type": options.label_downsample if options.labels else "mean",
    }
    if options.ome_version == "0.4":
        multiscale["version"] = "0.4"
    attributes: dict[str, Any] = {"multiscales": [multiscale]}
    if options.labels:
        attributes["image-label"] = {"source": {"image": "../../"}}
        if options.ome_version == "0.4":
            attributes["image-label"]["version"] = "0.4"
    elif window is not None:
        low, high = window
        attributes["omero"] = {
            "channels": [
                {
                    "label": options.name,
                    "color": "FFFFFF",
                    "active": True,
                    "window": {"min": low, "max": high, "start": low, "end": high},
                }
            ],
            "rdefs": {"model": "greyscale"},
        }
        if options.ome_version == "0.4":
            attributes["omero"]["version"] = "0.4"
    attributes.update(options.extra_attributes)
    return attributes


def _write_group(path: Path, attributes: dict[str, Any], version: OmeVersion) -> None:
    if version == "0.5":
        document = {
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {"ome": {"version": "0.5", **attributes}},
        }
        (path / "zarr.json").write_text(json.dumps(document, indent=2))
    else:
        (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        (path / ".zattrs").write_text(json.dumps(attributes, indent=2))


def data_window(array: ts.TensorStore) -> tuple[float, float]:
    """0.5th to 99.5th percentile of a (coarse) level, sampled to at most ~16M voxels."""
    step = [max(1, math.ceil(s / 256)) for s in array.shape]
    sample = array[tuple(slice(None, None, st) for st in step)].read().result()
    low, high = np.percentile(np.asarray(sample), [0.5, 99.5])
    return float(low), float(max(high, low + 1))


class _Pipeline:
    """Keeps a bounded number of tensorstore writes in flight."""

    def __init__(self, depth: int = 4) -> None:
        self.pending: deque[ts.Future] = deque()
        self.depth = depth

    def submit(self, future: ts.Future) -> None:
        self.pending.append(future)
        while len(self.pending) > self.depth:
            self.pending.popleft().result()

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft().result()


ProgressCallback = Callable[[int], None]


def write_pyramid(
    source: SourceArray,
    destination: Path,
    *,
    voxel_size: tuple[float, ...],
    options: PyramidOptions | None = None,
    context: ts.Context | None = None,
    progress: ProgressCallback | None = None,
) -> list[LevelPlan]:
    """Write ``source`` as an OME-Zarr pyramid at ``destination`` (which must not exist).

    Args:
        source: a (z, y, x) or (y, x) array readable by region.
        destination: the image folder to create.
        voxel_size: physical size per axis, in ``options.unit``.
        progress: called with the number of level-0 voxels written after each block.

    Returns:
        The levels written.

    Raises:
        ImportProblem: unsupported dtype or rank, or the destination already exists.
    """
    options = options or PyramidOptions()
    dtype = np.dtype(source.dtype)
    if dtype.name not in SUPPORTED_DTYPES:
        raise ImportProblem(f"dtype {dtype} is not supported (use one of {sorted(SUPPORTED_DTYPES)})")
    shape = tuple(int(s) for s in source.shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ImportProblem(f"expected a 2D or 3D image, got shape {shape}")
    if destination.exists():
        raise ImportProblem(f"{destination} already exists")
    axes = ["z", "y", "x"][-len(shape) :]
    context = context or ts.Context()
    levels = plan_pyramid(shape, tuple(voxel_size), options.chunk_shape(shape))

    partial = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        arrays = [
            ts.open(_array_spec(partial / str(i), level.shape, dtype, axes, options), context=context).result()
            for i, level in enumerate(levels)
        ]
        pipeline = _Pipeline()
        block = options.shard_shape(shape)
        for region in _blocks(shape, block):
            pipeline.submit(arrays[0][region].write(np.ascontiguousarray(source.read(region))))
            if progress is not None:
                progress(int(np.prod([r.stop - r.start for r in region])))
        pipeline.drain()
        method = options.label_downsample if options.labels else "mean"
        for i in range(1, len(levels)):
            reduced = ts.downsample(arrays[i - 1], list(levels[i].factors), method)
            for region in _blocks(levels[i].shape, options.shard_shape(levels[i].shape)):
                pipeline.submit(arrays[i][region].write(reduced[region]))
            pipeline.drain()
        window = None if options.labels else data_window(arrays[-1])
        _write_group(partial, multiscale_metadata(levels, axes, options, window), options.ome_version)
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial.rename(destination)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return levels


def list_label(image: Path, name: str, version: OmeVersion) -> None:
    """Name ``name`` in the ``labels`` group of the OME-Zarr image at ``image`` (creating the group)."""
    group = image / "labels"
    group.mkdir(exist_ok=True)
    if version == "0.5":
        path = group / "zarr.json"
        document = json.loads(path.read_text()) if path.exists() else {
            "zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": "0.5", "labels": []}}
        }
        names = document["attributes"]["ome"].setdefault("labels", [])
    else:
        (group / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        path = group / ".zattrs"
        document = json.loads(path.read_text()) if path.exists() else {"labels": []}
        names = document.setdefault("labels", [])
    if name not in names:
        names.append(name)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2))
    temporary.replace(path)  # atomic: readers never see half a document
