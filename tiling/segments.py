"""The segment table of a label image: per segment id, its size, bounding box and centroid.

Measured from level 0, a block of whole chunks at a time (memory bounded by ``BLOCK_VOXELS``, never the
whole volume): each block is cut into runs of one id along x, and runs are summed per id, so the work
is a sort of runs, not of voxels. Id 0 is background, never a segment.

Physical units follow the precomputed ``info`` of the same image (tiling/precomputed.py): voxel ``i`` of
level 0 spans ``[(offset + i), (offset + i + 1)) * voxel size`` nm, with the level's ``voxel_offset``
(0 for an image without translation). A bounding box is the corners of its voxels, lower inclusive and
upper exclusive; a centroid is the mean of voxel centres. Coordinates are x, y, z in nm.

The table is stored, read and queried by ``tiling.segment_store``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tiling.errors import NotSegmentation
from tiling.omezarr import Volume

BLOCK_VOXELS = 1 << 22  # voxels read and measured at once (a 4 M-voxel block costs ~150 MB of work arrays)
REDUCE_EVERY = 1 << 20  # partial rows kept before they are summed per id

TABLE_DTYPE = np.dtype([
    ("id", "<u8"),
    ("voxels", "<u8"),
    ("volume_um3", "<f8"),
    ("bbox_min", "<f8", (3,)),  # nm, x y z, the lowest voxel corner
    ("bbox_max", "<f8", (3,)),  # nm, x y z, the highest voxel corner (exclusive)
    ("centroid", "<f8", (3,)),  # nm, x y z, the mean voxel centre
])


# Measuring


@dataclass
class _Partial:
    """Per-id sums of some runs (z y x columns in voxel indices of level 0)."""

    ids: np.ndarray  # uint64
    counts: np.ndarray  # int64
    sums: np.ndarray  # (n, 3) int64: sum of z, y, x over the voxels
    mins: np.ndarray  # (n, 3) int64
    maxs: np.ndarray  # (n, 3) int64, inclusive


def block_statistics(block: np.ndarray, origin: tuple[int, int, int]) -> _Partial:
    """Per-id counts, coordinate sums and extents of a (z, y, x) block whose first voxel is at ``origin``."""
    shape = block.shape
    flat = np.ascontiguousarray(block).reshape(-1)
    size, width = flat.size, shape[2]
    if size == 0:
        return _empty()
    starts_mask = np.empty(size, bool)
    starts_mask[0] = True
    np.not_equal(flat[1:], flat[:-1], out=starts_mask[1:])
    starts_mask[::width] = True  # a run never crosses a row
    starts = np.flatnonzero(starts_mask)
    lengths = np.diff(starts, append=size)
    labels = flat[starts]
    keep = labels != 0
    starts, lengths, labels = starts[keep], lengths[keep], labels[keep].astype(np.uint64)
    if not len(labels):
        return _empty()
    zy, x0 = np.divmod(starts, width)
    z, y = np.divmod(zy, shape[1])
    x1 = x0 + lengths - 1
    order = np.argsort(labels, kind="stable")
    labels, lengths, z, y, x0, x1 = (a[order] for a in (labels, lengths, z, y, x0, x1))
    groups = np.flatnonzero(np.concatenate(([True], labels[1:] != labels[:-1])))
    ids = labels[groups]
    counts = np.add.reduceat(lengths, groups)
    sums = np.stack([np.add.reduceat(lengths * z, groups), np.add.reduceat(lengths * y, groups),
                     np.add.reduceat(lengths * (x0 + x1), groups) // 2], axis=1)  # a run's x sum is exact
    mins = np.stack([np.minimum.reduceat(z, groups), np.minimum.reduceat(y, groups),
                     np.minimum.reduceat(x0, groups)], axis=1)
    maxs = np.stack([np.maximum.reduceat(z, groups), np.maximum.reduceat(y, groups),
                     np.maximum.reduceat(x1, groups)], axis=1)
    offset = np.asarray(origin, dtype=np.int64)
    return _Partial(ids, counts.astype(np.int64), sums + counts[:, None] * offset, mins + offset, maxs + offset)


def _empty() -> _Partial:
    nothing = np.zeros((0, 3), np.int64)
    return _Partial(np.zeros(0, np.uint64), np.zeros(0, np.int64), nothing, nothing, nothing)


def merge(parts: list[_Partial]) -> _Partial:
    """One row per id from partial rows of several blocks."""
    if not parts:
        return _empty()
    ids = np.concatenate([p.ids for p in parts])
    counts = np.concatenate([p.counts for p in parts])
    sums, mins, maxs = (np.concatenate([getattr(p, name) for p in parts]) for name in ("sums", "mins", "maxs"))
    order = np.argsort(ids, kind="stable")
    ids, counts, sums, mins, maxs = ids[order], counts[order], sums[order], mins[order], maxs[order]
    groups = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1]))) if len(ids) else np.zeros(0, np.intp)
    if len(groups) == len(ids):
        return _Partial(ids, counts, sums, mins, maxs)
    return _Partial(ids[groups], np.add.reduceat(counts, groups), np.add.reduceat(sums, groups, axis=0),
                    np.minimum.reduceat(mins, groups, axis=0), np.maximum.reduceat(maxs, groups, axis=0))


def blocks(shape: tuple[int, int, int], chunk: tuple[int, int, int],
           block_voxels: int = BLOCK_VOXELS) -> Iterator[tuple[slice, slice, slice]]:
    """Boxes of whole chunks covering ``shape`` (z, y, x), each at most about ``block_voxels`` voxels
    (never less than one chunk): x and y grow first, so a block reads whole rows where it can."""
    size = [max(1, c) for c in chunk]
    for axis in (2, 1, 0):
        while size[axis] < shape[axis] and np.prod(size) * 2 <= block_voxels:
            size[axis] = min(shape[axis], size[axis] * 2)
    for z in range(0, shape[0], size[0]):
        for y in range(0, shape[1], size[1]):
            for x in range(0, shape[2], size[2]):
                yield (slice(z, min(z + size[0], shape[0])), slice(y, min(y + size[1], shape[1])),
                       slice(x, min(x + size[2], shape[2])))


@dataclass(frozen=True)
class Geometry:
    """Where level 0's voxels are: voxel size and precomputed voxel offset, x y z."""

    voxel_size_nm: tuple[float, float, float]
    voxel_offset: tuple[int, int, int]

    @classmethod
    def of(cls, volume: Volume) -> Geometry:
        level = volume.geometry[0]
        # As PrecomputedImage._build_info says for level 0: the corner of voxel 0 is at offset * size.
        offset = [round(t / s) for t, s in zip(level.translation_nm, level.voxel_size_nm, strict=True)]
        return cls(tuple(reversed(level.voxel_size_nm)), tuple(reversed(offset)))  # type: ignore[arg-type]


def check_labels(volume: Volume) -> None:
    """Raise ``NotSegmentation`` unless ``volume`` holds one channel of unsigned whole numbers."""
    if volume.dtype.kind != "u" or volume.num_channels != 1:
        raise NotSegmentation(f"{volume.store.uri}: labels must be one channel of unsigned integers "
                              f"(found {volume.num_channels} channel(s) of {volume.dtype})")


async def measure(volume: Volume, *, block_voxels: int = BLOCK_VOXELS,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The segment table (``TABLE_DTYPE``, sorted by id) of a label image, from level 0 block by block.

    The next block is read while the current one is measured in a worker thread.

    Raises:
        NotSegmentation: the image is not one channel of unsigned integers.
        StoreUnreadable: a chunk cannot be read.
    """
    check_labels(volume)
    level = volume.geometry[0]
    boxes = list(blocks(level.shape, level.chunk, block_voxels))
    parts: list[_Partial] = []
    pending_rows = 0

    async def read(box: tuple[slice, slice, slice]) -> np.ndarray:
        return (await volume.read(0, box))[0]

    pending = asyncio.ensure_future(read(boxes[0])) if boxes else None
    try:
        for index, box in enumerate(boxes):
            assert pending is not None
            data = await pending
            pending = asyncio.ensure_future(read(boxes[index + 1])) if index + 1 < len(boxes) else None
            part = await asyncio.to_thread(block_statistics, data, (box[0].start, box[1].start, box[2].start))
            parts.append(part)
            pending_rows += len(part.ids)
            if pending_rows > REDUCE_EVERY:
                parts = [await asyncio.to_thread(merge, parts)]
                pending_rows = len(parts[0].ids)
            if progress is not None:
                progress(int(data.size))
    finally:
        if pending is not None:
            pending.cancel()  # a failed block stops the measurement: the read ahead is not wanted
    return to_table(await asyncio.to_thread(merge, parts), Geometry.of(volume))


def to_table(part: _Partial, geometry: Geometry) -> np.ndarray:
    """Physical rows (x y z, nm) from per-id voxel sums (z y x, indices)."""
    size = np.asarray(geometry.voxel_size_nm, np.float64)
    offset = np.asarray(geometry.voxel_offset, np.float64)
    table = np.zeros(len(part.ids), TABLE_DTYPE)
    table["id"] = part.ids
    table["voxels"] = part.counts
    table["volume_um3"] = part.counts * float(np.prod(size)) / 1e9
    table["bbox_min"] = (part.mins[:, ::-1] + offset) * size
    table["bbox_max"] = (part.maxs[:, ::-1] + 1 + offset) * size
    table["centroid"] = (part.sums[:, ::-1] / np.maximum(part.counts, 1)[:, None] + 0.5 + offset) * size
    return table
