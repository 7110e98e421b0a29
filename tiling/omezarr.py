"""OME-Zarr multiscale images: metadata (0.4 on Zarr v2, 0.5 on Zarr v3) and tensorstore reads.

``open_volume`` reads the group metadata through a Store, opens every level with tensorstore
in one shared context, and returns a ``Volume`` whose reads are awaited, never blocking.
Pixels come back as ``(c, z, y, x)`` arrays whatever the stored axis order.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tensorstore as ts
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tiling.errors import InvalidKey, InvalidMultiscale, KeyNotFound, StoreNotFound, StoreUnreadable
from tiling.pyramid import intensity_window
from tiling.stores import LocalStore, Store, check_key, open_store

# Factors to nanometres, for the unit names OME-Zarr allows (UDUNITS-2) that EM uses.
UNIT_TO_NM: dict[str, float] = {
    "angstrom": 0.1,
    "nanometer": 1.0,
    "micrometer": 1e3,
    "millimeter": 1e6,
    "centimeter": 1e7,
    "meter": 1e9,
    "picometer": 1e-3,
}

SPATIAL_NAMES = ("z", "y", "x")
METADATA_FILE = {"zarr3": "zarr.json", "zarr": ".zarray"}  # what tensorstore reads to open a level


class Axis(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    type: str | None = None
    unit: str | None = None


class Level(BaseModel):
    """One stored resolution level: its array path and its transform (per stored axis)."""

    path: str
    scale: list[float]
    translation: list[float]


class ChannelWindow(BaseModel):
    start: float
    end: float


class Multiscale(BaseModel):
    """The first ``multiscales`` entry of an OME-Zarr group, transforms already combined."""

    version: Literal["0.4", "0.5"]
    zarr_format: Literal[2, 3]
    name: str | None = None
    axes: list[Axis]
    levels: list[Level] = Field(min_length=1)
    windows: list[ChannelWindow] = []

    def axis_index(self, *names: str, kind: str | None = None) -> int | None:
        for i, axis in enumerate(self.axes):
            if axis.name.lower() in names or (kind is not None and axis.type == kind):
                return i
        return None


def _combine(transforms: list[dict[str, Any]], rank: int) -> tuple[list[float], list[float]]:
    scale = [1.0] * rank
    translation = [0.0] * rank
    for transform in transforms or []:
        kind = transform.get("type")
        if kind == "identity":
            continue
        values = transform.get(kind) if kind in ("scale", "translation") else None
        if values is None or len(values) != rank:
            raise InvalidMultiscale(f"unsupported or malformed coordinate transform {transform}")
        if kind == "scale":
            scale = [s * v for s, v in zip(scale, values, strict=True)]
            translation = [t * v for t, v in zip(translation, values, strict=True)]
        else:
            translation = [t + v for t, v in zip(translation, values, strict=True)]
    return scale, translation


def _level_path(path: object) -> str:
    """A level's path: a key inside the store (never ``..``, absolute or empty, which would lead out)."""
    try:
        return check_key(str(path).rstrip("/"))
    except InvalidKey as error:
        raise InvalidMultiscale(f"a multiscale level's path: {error}") from None


def parse_multiscale(attributes: dict[str, Any], zarr_format: int) -> Multiscale:
    """Parse group attributes (``ome`` key for 0.5, top level for 0.4) into a Multiscale."""
    ome = attributes.get("ome", attributes) if zarr_format == 3 and isinstance(attributes, dict) else attributes
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not multiscales:
        raise InvalidMultiscale("the group has no OME-Zarr 'multiscales' metadata")
    if not isinstance(multiscales, list) or not isinstance(multiscales[0], dict):
        raise InvalidMultiscale("malformed OME-Zarr multiscales metadata: 'multiscales' is not a list of objects")
    first = multiscales[0]
    version = str(ome.get("version") or first.get("version") or ("0.5" if zarr_format == 3 else "0.4"))
    if version not in ("0.4", "0.5"):
        raise InvalidMultiscale(f"OME-Zarr version {version[:20]} is not supported (0.4 or 0.5)")
    if (version == "0.5") != (zarr_format == 3):
        raise InvalidMultiscale(f"OME-Zarr {version} cannot be stored on Zarr v{zarr_format}")
    try:
        axes = [Axis.model_validate(a if isinstance(a, dict) else {"name": a}) for a in first["axes"]]
        rank = len(axes)
        global_scale, global_translation = _combine(first.get("coordinateTransformations", []), rank)
        levels = []
        for dataset in first["datasets"]:
            scale, translation = _combine(dataset.get("coordinateTransformations", []), rank)
            levels.append(
                Level(
                    path=_level_path(dataset["path"]),
                    scale=[s * g for s, g in zip(scale, global_scale, strict=True)],
                    translation=[
                        t * g + gt
                        for t, g, gt in zip(translation, global_scale, global_translation, strict=True)
                    ],
                )
            )
        windows = []
        for channel in (ome.get("omero") or {}).get("channels", []):
            window = channel.get("window") or {}
            if "start" in window and "end" in window:
                windows.append(ChannelWindow(start=window["start"], end=window["end"]))
        return Multiscale(
            version=version,  # type: ignore[arg-type]
            zarr_format=zarr_format,  # type: ignore[arg-type]
            name=first.get("name"),
            axes=axes,
            levels=levels,
            windows=windows,
        )
    except InvalidMultiscale:
        raise
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, ArithmeticError) as error:
        raise InvalidMultiscale(f"malformed OME-Zarr multiscales metadata: {_problem(error)}") from None


def _problem(error: Exception) -> str:
    """What is wrong with the metadata, without Python's words for it (exception and type names)."""
    if isinstance(error, KeyError):
        return f"{str(error.args[0])[:40]!r} is missing"
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        return f"{'.'.join(map(str, first['loc']))[:80]}: {first['msg']}"
    return "a value has the wrong type or shape"


async def read_multiscale(store: Store) -> Multiscale:
    """Read and parse the group metadata at the root of ``store``."""
    for key, zarr_format in (("zarr.json", 3), (".zattrs", 2)):
        try:
            value = await store.read(key)
        except KeyNotFound:
            continue
        try:
            document = json.loads(value.data)
        except (ValueError, RecursionError):
            raise InvalidMultiscale(f"{key} in {store.uri} is not valid JSON") from None
        if not isinstance(document, dict):
            raise InvalidMultiscale(f"{key} in {store.uri} is not a JSON object")
        attributes = document.get("attributes", {}) if zarr_format == 3 else document
        return parse_multiscale(attributes, zarr_format)
    raise StoreNotFound(f"no OME-Zarr group at {store.uri} (neither zarr.json nor .zattrs)")


@dataclass(frozen=True, slots=True)
class LevelGeometry:
    """A level described in (z, y, x) voxels and nanometres, the way precomputed needs it."""

    index: int
    path: str
    shape: tuple[int, int, int]
    chunk: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    translation_nm: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class StoredFiles:
    """How one level names its stored files: one per write chunk (a shard when sharded), by grid position."""

    folder: str  # the level's path, with a trailing "/" unless empty
    shape: tuple[int, ...]
    prefix: str  # "c/" for Zarr v3's default key encoding
    separator: str

    @classmethod
    def of(cls, array: ts.TensorStore, path: str) -> StoredFiles:
        metadata = array.spec().to_json()["metadata"]
        if metadata.get("zarr_format") == 3:
            encoding = metadata.get("chunk_key_encoding") or {}
            default = encoding.get("name", "default") == "default"
            separator = (encoding.get("configuration") or {}).get("separator", "/" if default else ".")
            prefix = "c" + separator if default else ""
        else:
            separator, prefix = metadata.get("dimension_separator") or ".", ""
        folder = path.strip("/") + "/" if path.strip("/") else ""
        return cls(folder, tuple(array.chunk_layout.write_chunk.shape), prefix, separator)

    def keys(self, index: tuple[int | slice, ...], shape: tuple[int, ...]) -> list[str]:
        """Keys of the files that hold ``array[index]``, for an array of ``shape``."""
        spans = []
        for item, size, edge in zip(index, shape, self.shape, strict=True):
            start, stop = (item, item + 1) if isinstance(item, int) else item.indices(size)[:2]
            if start >= stop:
                return []
            spans.append(range(start // edge, (stop - 1) // edge + 1))
        return [self.folder + self.prefix + self.separator.join(map(str, p)) for p in itertools.product(*spans)]


class Volume:
    """An opened OME-Zarr multiscale image; reads return ``(c, z, y, x)`` arrays."""

    def __init__(self, store: Store, multiscale: Multiscale, arrays: list[ts.TensorStore]) -> None:
        self.store = store
        self.multiscale = multiscale
        self.arrays = arrays
        # Local files are checked before tensorstore opens them (LocalStore.check_files).
        self._files = (
            [StoredFiles.of(array, level.path) for array, level in zip(arrays, multiscale.levels, strict=True)]
            if isinstance(store, LocalStore)
            else None
        )
        ms = multiscale
        self._channel_axis = ms.axis_index("c", kind="channel")
        self._time_axis = ms.axis_index("t", kind="time")
        self._spatial_axes: list[int | None] = [ms.axis_index(name) for name in SPATIAL_NAMES]
        if self._spatial_axes[1] is None or self._spatial_axes[2] is None:
            raise InvalidMultiscale("the image has no y and x axes")
        known = {self._channel_axis, self._time_axis, *self._spatial_axes}
        unknown = [ms.axes[i].name for i in range(len(ms.axes)) if i not in known]
        if unknown:
            raise InvalidMultiscale(f"unsupported axes {unknown} (expected t, c, z, y, x)")
        base = arrays[0]
        self.dtype = np.dtype(base.dtype.numpy_dtype)
        self.num_channels = int(base.shape[self._channel_axis]) if self._channel_axis is not None else 1
        self.geometry = [self._geometry(i) for i in range(len(arrays))]

    @property
    def unit_factor(self) -> float:
        x_axis = self.multiscale.axes[self._spatial_axes[2]]  # type: ignore[index]
        return UNIT_TO_NM.get((x_axis.unit or "nanometer").lower(), 1.0)

    def _geometry(self, index: int) -> LevelGeometry:
        array = self.arrays[index]
        level = self.multiscale.levels[index]
        chunk_shape = array.chunk_layout.read_chunk.shape or array.shape
        shape, chunk, size, offset = [], [], [], []
        for axis in self._spatial_axes:
            if axis is None:
                shape.append(1)
                chunk.append(1)
                size.append(1.0)
                offset.append(0.0)
                continue
            unit = self.multiscale.axes[axis].unit
            factor = UNIT_TO_NM.get((unit or "nanometer").lower(), 1.0)
            shape.append(int(array.shape[axis]))
            chunk.append(int(min(chunk_shape[axis], array.shape[axis])))
            size.append(level.scale[axis] * factor)
            offset.append(level.translation[axis] * factor)
        return LevelGeometry(index, level.path, tuple(shape), tuple(chunk), tuple(size), tuple(offset))  # type: ignore[arg-type]

    async def read(self, level: int, zyx: tuple[slice, slice, slice]) -> np.ndarray:
        """Read a box of one level as a ``(c, z, y, x)`` array (time point 0)."""
        array = self.arrays[level]
        index: list[Any] = [slice(None)] * array.rank
        if self._time_axis is not None:
            index[self._time_axis] = 0
        for axis, region in zip(self._spatial_axes, zyx, strict=True):
            if axis is not None:
                index[axis] = region
        if self._files is not None:
            keys = self._files[level].keys(tuple(index), tuple(array.shape))
            await asyncio.to_thread(self.store.check_files, keys)
        try:
            data = await array[tuple(index)].read()
        except ValueError as error:
            raise StoreUnreadable(f"cannot read level {level} of {self.store.uri}: {error}") from None
        # Axes left after indexing time out keep stored order; move them to c, z, y, x.
        remaining = [a for a in range(array.rank) if a != self._time_axis]
        order = [self._channel_axis, *self._spatial_axes]
        data = np.transpose(np.asarray(data), [remaining.index(a) for a in order if a is not None])
        for position, axis in enumerate(order):
            if axis is None:
                data = np.expand_dims(data, position)
        return data


async def open_volume(store_or_uri: Store | str, context: ts.Context) -> Volume:
    """Open every level of the OME-Zarr image at ``store_or_uri`` (a Store, path or URL).

    Raises:
        StoreNotFound: nothing is there.
        InvalidMultiscale: metadata is missing or malformed.
        StoreUnreadable: an array cannot be opened (corrupt or unreachable).
    """
    store = store_or_uri if isinstance(store_or_uri, Store) else open_store(store_or_uri, context)
    multiscale = await read_multiscale(store)
    driver = "zarr3" if multiscale.zarr_format == 3 else "zarr"
    arrays = []
    for level in multiscale.levels:
        # As for chunks (Volume.read): tensorstore would wait for ever on a FIFO here.
        metadata_key = "/".join(part for part in (level.path.strip("/"), METADATA_FILE[driver]) if part)
        await asyncio.to_thread(store.check_files, [metadata_key])
        spec = {
            "driver": driver,
            "kvstore": store.kvstore_spec(level.path),
            # Stored images are immutable once registered: trust cached chunks and metadata.
            "recheck_cached_data": "open",
            "recheck_cached_metadata": "open",
        }
        try:
            array = await ts.open(spec, read=True, context=context)
        except ValueError as error:
            raise StoreUnreadable(f"cannot open level {level.path!r} of {store.uri}: {error}") from None
        if array.rank != len(multiscale.axes):
            raise InvalidMultiscale(
                f"level {level.path!r} has rank {array.rank} but {len(multiscale.axes)} axes are declared"
            )
        arrays.append(array)
    return Volume(store, multiscale, arrays)


# Remote (http) reads: a failed or stalled read (viewer.config.bound_remote_stalls) is retried this often.
REMOTE_RETRIES = {"max_retries": 3, "initial_delay": "0.5s", "max_delay": "4s"}


def make_context(cache_bytes: int = 512 << 20) -> ts.Context:
    """One tensorstore context for the process: shared cache pool, bounded concurrency, bounded retries."""
    return ts.Context(
        {
            "cache_pool": {"total_bytes_limit": cache_bytes},
            "data_copy_concurrency": {"limit": "shared"},
            "file_io_concurrency": {"limit": 32},
            "http_request_retries": REMOTE_RETRIES,
        }
    )


async def estimate_window(volume: Volume, channel: int = 0) -> tuple[float, float]:
    """A display window from the coarsest level: the 0.5th to 99.5th percentile."""
    if volume.multiscale.windows and channel < len(volume.multiscale.windows):
        window = volume.multiscale.windows[channel]
        return float(window.start), float(window.end)
    level = len(volume.arrays) - 1
    shape = volume.geometry[level].shape
    # Bound the sample: a coarse level of a huge 2D montage can still be large.
    step = [max(1, s // 256) for s in shape]
    data = await volume.read(level, tuple(slice(0, s, st) for s, st in zip(shape, step, strict=True)))  # type: ignore[arg-type]
    return intensity_window(data[min(channel, data.shape[0] - 1)])
