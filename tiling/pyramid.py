"""Write OME-Zarr multiscale pyramids (0.5 on sharded Zarr v3, or 0.4 on Zarr v2) with tensorstore.

The image is written beside its destination and moved into place only when complete (after
one flush of the whole tree to disk), so a failed or interrupted write never leaves something a
catalog could point at. Level 0 is copied from a source in shard-aligned blocks by a few threads
(which read the source in turn, in order), and each block, while in memory, is also reduced into
level 1 by the same thread; the further levels are computed from the one
before by tensorstore's ``downsample`` driver, shard by shard, each as soon as the part of the
level before that it reads is stored (so they are written while level 0 still is; on a Dask
cluster, level after level). Memory stays bounded by a few shards whatever the image size.
Blocks that are one whole shard (Zarr v3: every level-0 block, and level 1 reduced from it) are
encoded by ``tiling.shards`` and written by ``tiling.direct_files`` past the page cache (through
it where level 1 is computed from level 0 on disk); tensorstore writes the rest.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import pickle
import shutil
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import tensorstore as ts

from tiling.direct_files import DirectFiles
from tiling.errors import ImportProblem
from tiling.shards import ShardLayout

OmeVersion = Literal["0.4", "0.5"]
SUPPORTED_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"}
MEAN_SLAB_BYTES = 1 << 20  # input per slab of a level-1 mean: it and its sums stay in the CPU cache
# tensorstore does not fsync each write: a shard written whole is flushed once stored, the rest of a
# level with the level's tree once the level is complete.
WRITE_CONTEXT = {"file_io_sync": False}
MEAN_ACCUMULATORS = {
    "uint8": np.uint16, "int8": np.int16, "uint16": np.uint32, "int16": np.int32, "uint32": np.uint64,
    "int32": np.int64, "float32": np.float64,
}  # fmt: skip


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
    # Level 1: on EM (FIB-SEM, ssTEM) and label volumes it compresses as well as level 3 (ratios
    # 1.17-1.28 and ~50 measured on ../shared/data) at about 1.5x the speed; 5+ gains <= 1% on EM.
    zstd_level: int = 1
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


class Scratch:
    """Work arrays reused from block to block.

    A fresh 16 MiB array per block costs about as much in page faults as the arithmetic done in
    it (more on a VM that hands freed memory back to its host), so the level-1 sums reuse theirs.
    """

    def __init__(self) -> None:
        self._arrays: dict[tuple[str, tuple[int, ...], str], np.ndarray] = {}

    def array(self, tag: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (tag, shape, dtype.str)
        found = self._arrays.get(key)
        if found is None:
            found = self._arrays[key] = np.empty(shape, dtype)
        return found


def reduce_block(
    block: np.ndarray, factors: Sequence[int], method: str, scratch: Scratch | None = None
) -> np.ndarray:
    """``block`` downsampled as tensorstore's ``downsample`` driver does, for a block whose origin is a
    multiple of ``factors`` (cells cut by the block's far edge are reduced over what they hold).

    Integer means are rounded half to even, as the driver rounds; float32 means are summed in
    float64. Modes, and means of factors other than 1 and 2, are left to tensorstore itself.
    The result is a new array; ``scratch`` only holds the intermediate sums.
    """
    if method == "stride":
        return block[tuple(slice(None, None, f) for f in factors)]
    if method == "mean" and block.dtype.name in MEAN_ACCUMULATORS and set(factors) <= {1, 2}:
        return _mean_of_pairs(block, factors, scratch or Scratch())
    return ts.downsample(ts.array(block), list(factors), method).read().result()


def _mean_of_pairs(block: np.ndarray, factors: Sequence[int], scratch: Scratch) -> np.ndarray:
    """The mean of 1 or 2 voxels per axis, computed slab by slab along the first axis.

    Each slab (``MEAN_SLAB_BYTES`` of input) is reduced while it and its sums are in the CPU cache:
    the whole block at once streams every intermediate through memory, twice as slow.
    """
    out = np.empty([-(-n // f) for n, f in zip(block.shape, factors, strict=True)], block.dtype)
    plane = block[0].nbytes if block.ndim > 1 else block.itemsize
    step = max(1, MEAN_SLAB_BYTES // max(1, plane) // factors[0]) * factors[0]
    for start in range(0, block.shape[0], step):
        _mean_of_slab(block[start : start + step], factors, scratch,
                      out[start // factors[0] : -(-(start + step) // factors[0])])
    return out


def _mean_of_slab(block: np.ndarray, factors: Sequence[int], scratch: Scratch, out: np.ndarray) -> None:
    accumulator = np.dtype(MEAN_ACCUMULATORS[block.dtype.name])
    total: np.ndarray = block
    count: Any = 1  # voxels per sum: a number, or an array when a cell is cut by an odd edge
    for axis, factor in enumerate(factors):
        if factor == 1:
            continue
        size, pairs = total.shape[axis], total.shape[axis] // 2

        def along(part: slice, axis: int = axis) -> tuple[slice, ...]:
            return (slice(None),) * axis + (part,)

        summed = scratch.array(f"sum{axis}", (*total.shape[:axis], size - pairs, *total.shape[axis + 1 :]),
                               accumulator)
        np.add(total[along(slice(0, 2 * pairs, 2))], total[along(slice(1, 2 * pairs, 2))],
               out=summed[along(slice(0, pairs))], dtype=accumulator)
        if size % 2:
            summed[along(slice(pairs, None))] = total[along(slice(size - 1, None))]
            counts = np.full(size - pairs, 2)
            counts[-1] = 1
            count = count * counts.reshape((-1,) + (1,) * (block.ndim - axis - 1))
        else:
            count *= 2
        total = summed
    if block.dtype.kind == "f" or not isinstance(count, int):
        mean = total / count
        np.copyto(out, mean if block.dtype.kind == "f" else np.rint(mean, out=mean), casting="unsafe")
        return
    if count == 1:
        out[...] = block
        return
    # total / count rounded half to even, in integers (count is a power of two; >> floors negatives too)
    shift = count.bit_length() - 1
    rounded = np.right_shift(total, shift, out=scratch.array("rounded", total.shape, total.dtype))
    rounded &= 1
    rounded += total
    rounded += count // 2 - 1
    rounded >>= shift
    np.copyto(out, rounded, casting="unsafe")


def _voxels(region: tuple[slice, ...]) -> int:
    return math.prod(r.stop - r.start for r in region)


def _reduced_region(region: tuple[slice, ...], factors: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(r.start // f, -(-r.stop // f)) for r, f in zip(region, factors, strict=True))


def _whole_shard_file(
    level: Path, region: tuple[slice, ...], shard: tuple[int, ...], shape: tuple[int, ...], options: PyramidOptions
) -> Path | None:
    """The file of the shard ``region`` covers exactly (None: it covers part of one, or Zarr v2)."""
    exact = all(r.start % s == 0 and r.stop == min(r.start + s, n)
                for r, s, n in zip(region, shard, shape, strict=True))
    return _shard_file(level, region, shard, options) if exact else None


def _shard_file(level: Path, region: tuple[slice, ...], shard: tuple[int, ...], options: PyramidOptions) -> Path | None:
    """The file holding a shard-aligned block (Zarr v3 default keys), None for Zarr v2's chunk files."""
    if options.ome_version == "0.4":
        return None
    return level.joinpath("c", *(str(r.start // s) for r, s in zip(region, shard, strict=True)))


def _level1_from_blocks(levels: list[LevelPlan], options: PyramidOptions) -> bool:
    """Whether every level-0 block starts on a level-1 cell boundary, so each block reduces on its own."""
    if len(levels) < 2:
        return False
    block = options.shard_shape(levels[0].shape)
    return all(b % f == 0 or b >= s for b, f, s in zip(block, levels[1].factors, levels[0].shape, strict=True))


def shard_shapes(levels: list[LevelPlan], options: PyramidOptions) -> list[tuple[int, ...]]:
    """The shard shape of each level.

    Where level 1 is reduced from level-0 blocks in memory, its shards are one reduced block, so
    each is written once and whole: a shard written in parts is read back and rewritten each time.
    """
    shards = [options.shard_shape(level.shape) for level in levels]
    if not _level1_from_blocks(levels, options):
        return shards
    level1 = levels[1].shape
    chunk1 = options.chunk_shape(level1)
    reduced = [-(-b // f) for b, f in zip(shards[0], levels[1].factors, strict=True)]
    fitted = [-(-s // c) * c if r >= s else r for r, c, s in zip(reduced, chunk1, level1, strict=True)]
    if all(f % c == 0 for f, c in zip(fitted, chunk1, strict=True)):
        shards[1] = tuple(fitted)
    return shards


def _fsync(path: str | Path, *, missing_ok: bool = False) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_tree(root: Path, *, recursive: bool = True) -> None:
    """Flush the files and folders under ``root`` (or only those directly in it) to disk."""
    for folder, folders, names in os.walk(root):
        for name in names:
            _fsync(os.path.join(folder, name))
        _fsync(folder)
        if not recursive:
            folders.clear()


def _array_spec(
    path: Path, shape: tuple[int, ...], shard: tuple[int, ...], dtype: np.dtype, axes: list[str],
    options: PyramidOptions,
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
                "configuration": {"chunk_shape": list(shard)},
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
        (path / "zarr.json").write_text(json.dumps(document, indent=2, allow_nan=False))
    else:
        (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        (path / ".zattrs").write_text(json.dumps(attributes, indent=2, allow_nan=False))


def intensity_window(values: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> tuple[float, float]:
    """The display window of a sample: its percentiles, NaN and infinities ignored, ``high`` above ``low``."""
    values = np.asarray(values).ravel()
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [low_pct, high_pct]))
    return low, high if high > low else low + 1.0


def data_window(array: ts.TensorStore) -> tuple[float, float]:
    """The display window of a (coarse) level, sampled to at most ~16M voxels."""
    step = [max(1, math.ceil(s / 256)) for s in array.shape]
    return intensity_window(array[tuple(slice(None, None, st) for st in step)].read().result())


def _stored(future: Any) -> bool:
    """Whether a write is done: a block task is done once the writes it started (its result) are."""
    return future.done() and all(_stored(inner) for inner in _started(future))


def _started(future: Any) -> list[Any]:
    result = future.result() if isinstance(future, Future) and not future.exception() else None
    return result if isinstance(result, list) else []


def _wait(future: Any) -> None:
    """Wait for a write (a tensorstore or concurrent future), and for the writes a block task started."""
    result = future.result()
    for inner in result if isinstance(result, list) else ():
        _wait(inner)


class _Pipeline:
    """Keeps a bounded number of block writes in flight; reports each block once it is stored, in order."""

    def __init__(self, on_done: Callable[[str], None], depth: int = 4) -> None:
        self.writing: deque[tuple[list[Any], str]] = deque()
        self.on_done = on_done
        self.depth = depth

    def submit(self, futures: list[Any], key: str) -> None:
        """Add a block's writes (tensorstore or concurrent futures); wait while too many are in flight."""
        self.writing.append((futures, key))
        while len(self.writing) > self.depth:
            self.step()
        while self.writing and all(_stored(future) for future in self.writing[0][0]):
            self.step()

    def settle(self, *, record: bool) -> None:
        """Wait for every block in flight, whatever its outcome; with ``record``, report those stored."""
        while self.writing:
            futures, key = self.writing.popleft()
            stored = True
            for future in futures:
                try:
                    _wait(future)
                except BaseException:  # failed or cancelled: not stored, nothing to report
                    stored = False
            if record and stored:
                self.on_done(key)

    def step(self) -> bool:
        """Wait until the oldest block in flight is stored and report it; False if there is none."""
        if not self.writing:
            return False
        futures, key = self.writing.popleft()
        for future in futures:
            _wait(future)
        self.on_done(key)
        return True


class _Reductions:
    """Shards of the levels reduced from the level before, released as soon as their input is stored.

    A shard of level M reads a region of level M-1, written in units (the shard-aligned blocks of
    that level, or for level 1 reduced in memory, the reduction of each level-0 block). It is
    released once every unit overlapping its region is stored, so the coarse levels are written
    while level 0 still is, instead of one after another at the end.
    """

    def __init__(self, levels: list[LevelPlan], shards: list[tuple[int, ...]], first: int, done: set[str]) -> None:
        self.levels, self.shards, self.first, self.done = levels, shards, first, done
        self.units: list[tuple[tuple[int, ...], tuple[int, ...], int]] = []  # (cell, grid, key level) per level
        for level in range(len(levels) - 1):
            if level == 1 and first == 2:  # written with the level-0 blocks, one reduced block each
                cell = tuple(-(-b // f) for b, f in zip(shards[0], levels[1].factors, strict=True))
                self.units.append((cell, self.units[0][1], 0))
            else:
                cell = shards[level]
                self.units.append((cell, _grid(levels[level].shape, cell), level))
        self.waiting: dict[tuple[int, tuple[int, ...]], int] = {}  # shard -> units it still waits for

    def released_by(self, key: str) -> list[tuple[str, int, tuple[slice, ...]]]:
        """The shards (key, level, region) that the units stored under ``key`` complete."""
        level, number = (int(part) for part in key.split(":"))
        ready = []
        for unit_level in (level, 1) if level == 0 and self.first == 2 else (level,):
            target = unit_level + 1
            if not self.first <= target < len(self.levels):
                continue
            position = np.unravel_index(number, self.units[unit_level][1])
            for shard in self._dependents(target, tuple(int(p) for p in position)):
                waiting = self.waiting.get((target, shard))
                waiting = self._unstored_inputs(target, shard) if waiting is None else waiting - 1
                if waiting:
                    self.waiting[(target, shard)] = waiting
                    continue
                self.waiting.pop((target, shard), None)
                found = self._shard(target, shard)
                if found[0] not in self.done:
                    ready.append(found)
        return ready

    def ready_at_start(self) -> list[tuple[str, int, tuple[slice, ...]]]:
        """Shards whose input a resumed build already holds, but which it does not."""
        ready = []
        for level in range(self.first, len(self.levels)):
            for shard in np.ndindex(*_grid(self.levels[level].shape, self.shards[level])):
                found = self._shard(level, shard)
                if found[0] not in self.done and not self._unstored_inputs(level, shard):
                    ready.append(found)
        return ready

    def _span(self, level: int, shard: tuple[int, ...]) -> list[range]:
        """Per axis, the input units of a shard of ``level``."""
        cell = self.units[level - 1][0]
        spans = []
        for j, size, factor, cell_edge, extent in zip(shard, self.shards[level], self.levels[level].factors, cell,
                                                      self.levels[level - 1].shape, strict=True):
            start, stop = j * size * factor, min((j + 1) * size * factor, extent)
            spans.append(range(start // cell_edge, (stop - 1) // cell_edge + 1))
        return spans

    def _unstored_inputs(self, level: int, shard: tuple[int, ...]) -> int:
        _, grid, key_level = self.units[level - 1]
        return sum(f"{key_level}:{np.ravel_multi_index(unit, grid)}" not in self.done
                   for unit in itertools.product(*self._span(level, shard)))

    def _dependents(self, level: int, unit: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        cell = self.units[level - 1][0]
        spans = []
        for i, cell_edge, size, factor, extent in zip(unit, cell, self.shards[level], self.levels[level].factors,
                                                      self.levels[level - 1].shape, strict=True):
            reach = size * factor
            spans.append(range(i * cell_edge // reach, (min((i + 1) * cell_edge, extent) - 1) // reach + 1))
        return itertools.product(*spans)

    def _shard(self, level: int, shard: tuple[int, ...]) -> tuple[str, int, tuple[slice, ...]]:
        shape, size = self.levels[level].shape, self.shards[level]
        number = np.ravel_multi_index(shard, _grid(shape, size))
        region = tuple(slice(j * e, min((j + 1) * e, s)) for j, e, s in zip(shard, size, shape, strict=True))
        return f"{level}:{number}", level, region


def _grid(shape: tuple[int, ...], cell: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(-(-s // c) for s, c in zip(shape, cell, strict=True))


class _DoneLog:
    """Blocks already stored in a partial image: what ``resume`` may skip. One line per block, appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys = set(path.read_text().split()) if path.exists() else set()
        self._file = path.open("a")

    def add(self, key: str) -> None:
        self.keys.add(key)
        self._file.write(key + "\n")
        self._file.flush()  # a block is claimed done only after its write finished

    def close(self) -> None:
        self._file.close()


ProgressCallback = Callable[[int], None]
MANIFEST = "lamella-import.json"


def _open_spec(path: Path, options: PyramidOptions) -> dict[str, Any]:
    return {"driver": "zarr" if options.ome_version == "0.4" else "zarr3",
            "kvstore": {"driver": "file", "path": str(path) + "/"}, "open": True, "context": WRITE_CONTEXT}


@functools.lru_cache(maxsize=32)
def _open_cached(build: str, spec_json: str) -> ts.TensorStore:
    # Workers reopen arrays by spec once per build and keep them: tasks arrive by the hundred.
    return ts.open(json.loads(spec_json)).result()


_SOURCES: dict[bytes, SourceArray] = {}


def block_threads() -> int:
    """Threads that read, reduce and encode level-0 blocks: one per CPU this process may use (at
    most 8, for memory), and one more that works while another waits for its turn to read."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, cpus) + 1


@functools.cache
def _process_files() -> DirectFiles:
    """A Dask worker process's shard writer, kept for every block it is given."""
    return DirectFiles()


@dataclass(frozen=True)
class _LevelWriter:
    """Writes blocks of one level: a block that is one whole shard is encoded by ``tiling.shards`` and
    written by ``DirectFiles``; any other block (Zarr v2, part of a shard) by tensorstore."""

    folder: Path
    shape: tuple[int, ...]
    layout: ShardLayout
    options: PyramidOptions
    build: str
    spec_json: str  # the array by spec, for tensorstore's writes on Dask workers
    direct: bool  # past the page cache (see DirectFiles)

    def file(self, region: tuple[slice, ...]) -> Path | None:
        """The shard file the block ``region`` writes whole (None: tensorstore writes it)."""
        return _whole_shard_file(self.folder, region, self.layout.shard, self.shape, self.options)

    def write(
        self, files: DirectFiles, region: tuple[slice, ...], data: np.ndarray, array: ts.TensorStore | None = None
    ) -> Future[None] | ts.WriteFutures:
        """Start writing ``data`` (not changed afterwards) at ``region``: a whole shard is encoded here."""
        path = self.file(region)
        if path is None:
            array = array if array is not None else _open_cached(self.build, self.spec_json)
            return array[region].write(data, can_reference_source_data_indefinitely=True)
        return files.write_from(path, functools.partial(_encode_shard, self.layout, data), self.layout.max_bytes,
                                direct=self.direct)


def _encode_shard(layout: ShardLayout, data: np.ndarray, buffer: memoryview) -> int | None:
    return layout.encode(data, buffer) or None  # nothing but fill value: no file


def _write_source_block(
    region: tuple[slice, ...],
    opener: Callable[[], SourceArray],
    writers: Sequence[_LevelWriter],
    reduce: tuple[list[int], str] | None = None,
) -> int:
    """A Dask task: read a level-0 block, write it and, with ``reduce`` (factors, method), level 1."""
    key = pickle.dumps(opener)
    source = _SOURCES.get(key)
    if source is None:
        source = _SOURCES[key] = opener()
    for future in _write_level0_block(_process_files(), region, np.ascontiguousarray(source.read(region)), writers,
                                      reduce):
        future.result()
    return _voxels(region)


def _write_level0_block(
    files: DirectFiles,
    region: tuple[slice, ...],
    data: np.ndarray,
    writers: Sequence[_LevelWriter],
    reduce: tuple[list[int], str] | None,
    arrays: Sequence[ts.TensorStore | None] = (None, None),
    scratch: Scratch | None = None,
) -> list[Future[None] | ts.WriteFutures]:
    """Start writing a level-0 block and, with ``reduce`` (factors, method), its reduction into level 1."""
    futures = []
    if reduce is not None:
        factors, method = reduce
        futures.append(writers[1].write(files, _reduced_region(region, factors),
                                        reduce_block(data, factors, method, scratch), arrays[1]))
    futures.append(writers[0].write(files, region, data, arrays[0]))
    return futures


class _Turns:
    """Lets tasks run one step at a time, in the order of their tickets: block tasks read the source
    in order, as a single reader would (sources keep a band of rows mapped or decoded for the next block)."""

    def __init__(self) -> None:
        self._next = 0
        self._stopped = False
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def turn(self, ticket: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._next == ticket or self._stopped)
            if self._stopped:
                raise CancelledError
        try:
            yield
        finally:
            with self._changed:
                self._next += 1
                self._changed.notify_all()

    def stop(self) -> None:
        """Tasks still waiting for their turn give up."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.scratch = Scratch()


def _reduce_block(
    build: str, region: tuple[slice, ...], previous_json: str, spec_json: str, factors: list[int], method: str
) -> None:
    reduced = ts.downsample(_open_cached(build, previous_json), factors, method)
    _open_cached(build, spec_json)[region].write(reduced[region]).result()


def write_pyramid(
    source: SourceArray,
    destination: Path,
    *,
    voxel_size: tuple[float, ...],
    options: PyramidOptions | None = None,
    context: ts.Context | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    client: Any = None,
    source_opener: Callable[[], SourceArray] | None = None,
) -> list[LevelPlan]:
    """Write ``source`` as an OME-Zarr pyramid at ``destination`` (which must not exist).

    The image is built in a hidden ``.<name>.partial`` folder beside the destination and moved
    into place when complete. An interrupted build (Ctrl-C) keeps that folder; ``resume=True``
    then skips the shard-aligned blocks it already holds. Any other failure removes it.

    Args:
        source: a (z, y, x) or (y, x) array readable by region.
        destination: the image folder to create.
        voxel_size: physical size per axis, in ``options.unit``.
        progress: called with the number of level-0 voxels written after each block.
        resume: continue a partial build of the same source and options, if there is one.
        client: a dask.distributed Client; blocks then run as tasks on its workers, which
            reopen the source with ``source_opener`` (picklable) and the arrays by spec.

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
    if client is not None and source_opener is None:
        raise ValueError("a distributed build needs a source_opener the workers can call")
    axes = ["z", "y", "x"][-len(shape) :]
    context = ts.Context(WRITE_CONTEXT, context)
    levels = plan_pyramid(shape, tuple(voxel_size), options.chunk_shape(shape))
    manifest = {"shape": list(shape), "dtype": dtype.name, "voxel_size": list(voxel_size),
                "options": {k: v for k, v in asdict(options).items() if k != "extra_attributes"}}

    partial = destination.with_name(f".{destination.name}.partial")
    resuming = resume and (partial / MANIFEST).exists() and json.loads((partial / MANIFEST).read_text()) == manifest
    if not resuming:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    done = _DoneLog(partial / "blocks-done.txt")
    flusher = ThreadPoolExecutor(1)  # fsyncs finished files while the rest is computed
    flushed: list[Future[None]] = []
    whole_files: dict[str, list[Path]] = {}  # block key -> the shard files it writes whole
    regions: dict[str, tuple[slice, ...]] = {}  # level-0 block key -> its region, for progress
    unstored: list[int] = []  # per level, its blocks not yet stored
    reductions: _Reductions | None = None  # shards of coarser levels to release as their input is stored
    released: deque[tuple[str, int, tuple[slice, ...]]] = deque()

    def level_stored(level: int) -> None:
        flushed.append(flusher.submit(sync_tree, partial / str(level)))

    def finished(key: str) -> None:
        done.add(key)
        for path in whole_files.pop(key, ()):  # written whole, once: to disk now, not all at the end
            flushed.append(flusher.submit(_fsync, path, missing_ok=True))  # all-zero: not stored
        level = int(key.split(":")[0])
        unstored[level] -= 1
        if not unstored[level]:
            level_stored(level)
            if level == 0 and from_level0 == 2:  # level 1 was written with level 0
                level_stored(1)
        if reductions is not None:
            released.extend(reductions.released_by(key))

    def stored(key: str) -> None:
        finished(key)
        if progress is not None and key in regions:
            progress(_voxels(regions.pop(key)))

    threads = block_threads()
    pipeline = _Pipeline(stored, depth=2 * threads + 2)  # blocks being computed, written, and the next ones
    files = DirectFiles(writers=2, buffers=threads + 2)  # a shard being filled by each thread, two written
    blocks = ThreadPoolExecutor(threads, thread_name_prefix="lamella-blocks")
    turns = _Turns()
    shards = shard_shapes(levels, options)
    try:
        if resuming:
            arrays = [
                ts.open(_open_spec(partial / str(i), options), context=context).result() for i in range(len(levels))
            ]
        else:
            arrays = [
                ts.open(_array_spec(partial / str(i), level.shape, shard, dtype, axes, options),
                        context=context).result()
                for i, (level, shard) in enumerate(zip(levels, shards, strict=True))
            ]
            (partial / MANIFEST).write_text(json.dumps(manifest, allow_nan=False))
        specs = [json.dumps(_open_spec(partial / str(i), options)) for i in range(len(levels))]
        method = options.label_downsample if options.labels else "mean"
        # Level 1 from each level-0 block while it is in memory; the rest from the level before.
        in_memory = _level1_from_blocks(levels, options)
        factors1 = list(levels[1].factors) if in_memory else []
        from_level0 = 2 if in_memory else 1  # the first level reduced from the level before

        def todo(level: int) -> list[tuple[str, tuple[slice, ...]]]:
            regions = _blocks(levels[level].shape, shards[level])
            return [(f"{level}:{n}", region) for n, region in enumerate(regions) if f"{level}:{n}" not in done.keys]

        build = uuid.uuid4().hex
        # Level 0, and level 1 where it is reduced from level-0 blocks in memory. Level 2 then reads level 1
        # back from disk, which costs less CPU than writing it through the page cache (0.4 s per GiB imported).
        writers = [
            _LevelWriter(partial / str(i), levels[i].shape,
                         ShardLayout(shards[i], options.chunk_shape(levels[i].shape), dtype, options.zstd_level),
                         options, build, specs[i], direct=in_memory)
            for i in range(from_level0)
        ]
        first = todo(0)
        regions.update(first)
        for key, region in first:
            whole = [writers[0].file(region), in_memory and writers[1].file(_reduced_region(region, factors1))]
            whole_files[key] = [path for path in whole if path]
        if progress is not None:
            progress(int(np.prod(shape)) - sum(_voxels(region) for _, region in first))
        unstored[:] = [len(first), *(0 if in_memory and i == 1 else len(todo(i)) for i in range(1, len(levels)))]
        for level, count in enumerate(unstored):
            if not count and not (level == 1 and in_memory and unstored[0]):
                level_stored(level)  # a resumed build that holds all of it
        reduce = (factors1, method) if in_memory else None
        if client is not None:
            _run_distributed(client, finished, progress, [
                (key, client.submit(_write_source_block, region, source_opener, writers, reduce, pure=False))
                for key, region in first
            ])
        else:
            reduced = {i: ts.downsample(arrays[i - 1], list(levels[i].factors), method)
                       for i in range(from_level0, len(levels))}
            reductions = _Reductions(levels, shards, from_level0, done.keys)
            if resuming:
                released.extend(reductions.ready_at_start())

            def write_released() -> None:
                while released:
                    key, level, region = released.popleft()
                    path = _shard_file(partial / str(level), region, shards[level], options)  # one whole shard
                    whole_files[key] = [path] if path else []
                    pipeline.submit([arrays[level][region].write(reduced[level][region])], key)

            per_thread = _PerThread()

            def write_block(ticket: int, region: tuple[slice, ...]) -> list[Future[None] | ts.WriteFutures]:
                with turns.turn(ticket):
                    data = np.ascontiguousarray(source.read(region))
                return _write_level0_block(files, region, data, writers, reduce, arrays, per_thread.scratch)

            for ticket, (key, region) in enumerate(first):  # blocks are read, reduced and encoded in parallel
                pipeline.submit([blocks.submit(write_block, ticket, region)], key)
                write_released()
            while True:
                write_released()
                if not pipeline.step():
                    break
            if any(unstored):
                raise RuntimeError(f"pyramid blocks left unwritten: {unstored}")  # a scheduling bug, never input
        if client is not None:  # on a cluster the coarse levels follow one another
            for i in range(from_level0, len(levels)):
                _run_distributed(client, finished, None, [
                    (key, client.submit(_reduce_block, build, region, specs[i - 1], specs[i],
                                        list(levels[i].factors), method, pure=False))
                    for key, region in todo(i)
                ])
        for future in flushed:
            future.result()
        window = None if options.labels else data_window(arrays[-1])
        _write_group(partial, multiscale_metadata(levels, axes, options, window), options.ome_version)
        done.close()
        (partial / MANIFEST).unlink()
        (partial / "blocks-done.txt").unlink()
        sync_tree(partial, recursive=False)  # the group metadata and the level folders' entries
        destination.parent.mkdir(parents=True, exist_ok=True)
        partial.rename(destination)
        _fsync(destination.parent)  # the rename itself
    except KeyboardInterrupt:
        turns.stop()
        blocks.shutdown(cancel_futures=True)  # the writes they started go on
        pipeline.settle(record=True)  # blocks already stored count as done
        files.close()
        flusher.shutdown()
        done.close()  # keep the partial image: resume=True continues it
        raise
    except BaseException:
        turns.stop()
        blocks.shutdown(cancel_futures=True)
        pipeline.settle(record=False)  # nothing may add files to what is removed next
        files.close()
        flusher.shutdown()
        done.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        blocks.shutdown()
        files.close()
        flusher.shutdown()
    return levels


def _run_distributed(
    client: Any, finished: Callable[[str], None], progress: ProgressCallback | None, tasks: list[tuple[str, Any]]
) -> None:
    """Wait for one level's block tasks, recording each as done as soon as it finishes."""
    from distributed import as_completed

    keys = {future.key: key for key, future in tasks}
    for future in as_completed([future for _, future in tasks]):
        result = future.result()
        finished(keys[future.key])
        if progress is not None and result:
            progress(result)


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
    temporary.write_text(json.dumps(document, indent=2, allow_nan=False))
    temporary.replace(path)  # atomic: readers never see half a document
