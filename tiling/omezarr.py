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

from tiling.errors import InvalidKey, InvalidMultiscale, KeyNotFound, StoreUnreadable
from tiling.pyramid import intensity_window
from tiling.stores import LocalStore, Store, check_key, open_store

# Factors to nanometres for every length unit OME-Zarr allows on space axes (the UDUNITS-2 names the
# OME-NGFF 0.4/0.5 specifications list under "axes").
UNIT_TO_NM: dict[str, float] = {
    "yoctometer": 1e-15, "zeptometer": 1e-12, "attometer": 1e-9, "femtometer": 1e-6, "picometer": 1e-3,
    "angstrom": 0.1, "nanometer": 1.0, "micrometer": 1e3, "millimeter": 1e6, "centimeter": 1e7,
    "decimeter": 1e8, "meter": 1e9, "hectometer": 1e11, "kilometer": 1e12, "megameter": 1e15,
    "gigameter": 1e18, "terameter": 1e21, "petameter": 1e24, "exameter": 1e27, "parsec": 3.0856775814913673e25,
    "zettameter": 1e30, "yottameter": 1e33, "inch": 2.54e7, "foot": 3.048e8, "yard": 9.144e8, "mile": 1.609344e12,
}  # fmt: skip
# Other spellings met in files written by other tools. Symbols are case-sensitive (Mm is not mm).
UNIT_SYMBOLS: dict[str, str] = {
    "ym": "yoctometer", "zm": "zeptometer", "am": "attometer", "fm": "femtometer", "pm": "picometer",
    "å": "angstrom", "Å": "angstrom", "nm": "nanometer", "um": "micrometer", "µm": "micrometer",
    "μm": "micrometer", "mm": "millimeter", "cm": "centimeter", "dm": "decimeter", "m": "meter",
    "km": "kilometer", "Mm": "megameter", "in": "inch", "ft": "foot",
}  # fmt: skip
# Words, matched in any case, singular or plural, "-metre" or "-meter".
UNIT_WORDS: dict[str, str] = {"micron": "micrometer", "angström": "angstrom", "ångström": "angstrom",
                              "inches": "inch", "feet": "foot"}  # fmt: skip


def length_unit(unit: str | None) -> str | None:
    """The UDUNITS-2 name of a length unit in any common spelling, or None if it is not one.

    ``micrometer``, ``micrometre``, ``Micrometers``, ``um``, ``µm`` and ``micron`` are all ``micrometer``.
    """
    if not isinstance(unit, str):
        return None
    text = unit.strip()
    if text in UNIT_SYMBOLS:
        return UNIT_SYMBOLS[text]
    text = text.lower().replace("metre", "meter")
    for spelling in (text, text.removesuffix("s")):
        if spelling in UNIT_TO_NM:
            return spelling
        if spelling in UNIT_WORDS:
            return UNIT_WORDS[spelling]
    return None


def nm_per_unit(unit: str | None, axis: str = "x") -> float:
    """Nanometres per ``unit`` of a space axis; no unit means nanometres (Lamella's convention).

    Raises:
        InvalidMultiscale: the unit is not a length unit (never silently taken as nanometres).
    """
    if unit is None or unit == "":
        return 1.0
    name = length_unit(unit)
    if name is None:
        shown = unit if isinstance(unit, str) else repr(unit)
        raise InvalidMultiscale(
            f"axis {axis!r} has the unit {shown[:40]!r}, which is not a length unit "
            "(OME-Zarr uses UDUNITS-2 names such as nanometer, micrometer, angstrom)"
        )
    return UNIT_TO_NM[name]


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


async def _group_attributes(store: Store, prefix: str = "") -> tuple[dict[str, Any], int] | None:
    """The attributes of the Zarr group at ``prefix`` (v3 ``zarr.json``, else v2 ``.zattrs``) and its Zarr
    format, or None when neither file is there."""
    for name, zarr_format in (("zarr.json", 3), (".zattrs", 2)):
        key = prefix + name
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
        if not isinstance(attributes, dict):
            raise InvalidMultiscale(f"{key} in {store.uri}: its attributes are not a JSON object")
        return attributes, zarr_format
    return None


async def _root_attributes(store: Store) -> tuple[dict[str, Any], int]:
    found = await _group_attributes(store)
    if found is None:
        raise await store.missing(f"no OME-Zarr group at {store.uri} (neither zarr.json nor .zattrs)")
    return found


async def read_multiscale(store: Store) -> Multiscale:
    """Read and parse the group metadata at the root of ``store``."""
    return parse_multiscale(*await _root_attributes(store))


async def bioformats2raw_series(store: Store, root: tuple[dict[str, Any], int]) -> str | None:
    """The path of the first image if ``store``, whose root group has the attributes and Zarr format
    ``root``, holds the bioformats2raw layout, else None.

    That layout (OME-Zarr 0.4 and 0.5, "bioformats2raw.layout": 3) has no multiscales at its root: the
    images are series groups ``0``, ``1``, ... beside an ``OME`` group whose optional ``series`` attribute
    lists their paths in order.
    """
    attributes, zarr_format = root
    ome = attributes.get("ome", attributes) if zarr_format == 3 else attributes
    if not isinstance(ome, dict) or "bioformats2raw.layout" not in ome or ome.get("multiscales"):
        return None
    if ome["bioformats2raw.layout"] != 3:
        raise InvalidMultiscale(f"bioformats2raw layout {str(ome['bioformats2raw.layout'])[:20]} is not supported (3)")
    listing = await _group_attributes(store, "OME/")
    series = None
    if listing is not None:
        listed = listing[0].get("ome", listing[0]) if listing[1] == 3 else listing[0]
        series = listed.get("series") if isinstance(listed, dict) else None
    if series is not None and (not isinstance(series, list) or not series or not isinstance(series[0], str)):
        raise InvalidMultiscale(f"the OME group of {store.uri} lists its series malformed")
    return _level_path(series[0] if series else "0")


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
        return nm_per_unit(x_axis.unit, x_axis.name)

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
            factor = nm_per_unit(self.multiscale.axes[axis].unit, self.multiscale.axes[axis].name)
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

    A bioformats2raw layout opens its first series (``bioformats2raw_series``); ``Volume.store`` is then
    that series' store.

    Raises:
        StoreNotFound: nothing is there.
        InvalidMultiscale: metadata is missing or malformed.
        StoreUnreadable: an array cannot be opened (corrupt or unreachable).
    """
    store = store_or_uri if isinstance(store_or_uri, Store) else open_store(store_or_uri, context)
    root = await _root_attributes(store)
    series = await bioformats2raw_series(store, root)
    if series is not None:  # the image is the first series: opened (and registered) at its own address
        store = open_store(f"{store.uri}/{series}", context)
        root = await _root_attributes(store)
    multiscale = parse_multiscale(*root)
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


# Remote (http, s3) reads: a failed or stalled read (viewer.config.bound_remote_stalls) is retried this often.
REMOTE_RETRIES = {"max_retries": 3, "initial_delay": "0.5s", "max_delay": "4s"}


def make_context(cache_bytes: int = 512 << 20) -> ts.Context:
    """One tensorstore context for the process: shared cache pool, bounded concurrency, bounded retries."""
    return ts.Context(
        {
            "cache_pool": {"total_bytes_limit": cache_bytes},
            "data_copy_concurrency": {"limit": "shared"},
            "file_io_concurrency": {"limit": 32},
            "http_request_retries": REMOTE_RETRIES,
            "s3_request_retries": REMOTE_RETRIES,
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
