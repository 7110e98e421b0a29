"""The segment table of a label image: per segment id, its size, bounding box and centroid.

Measured from level 0, a block of whole chunks at a time (memory bounded by ``BLOCK_VOXELS``, never the
whole volume): each block is cut into runs of one id along x, and runs are summed per id, so the work
is a sort of runs, not of voxels. Id 0 is background, never a segment.

Physical units follow the precomputed ``info`` of the same image (tiling/precomputed.py): voxel ``i`` of
level 0 spans ``[(offset + i), (offset + i + 1)) * voxel size`` nm, with the level's ``voxel_offset``
(0 for an image without translation). A bounding box is the corners of its voxels, lower inclusive and
upper exclusive; a centroid is the mean of voxel centres. Coordinates are x, y, z in nm.

The table is kept in ``<derived dir>/segments/table.npz`` (tiling/derived.py): a structured array sorted
by id and a small JSON document (geometry and names), replaced atomically (temp file and rename).
``SegmentTables`` reads it with a bounded cache checked against the file's modification time.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from cachetools import LRUCache

from tiling.errors import NotSegmentation, SegmentsNotFound
from tiling.omezarr import Volume
from tiling.segment_names import SegmentNames

SEGMENTS_FOLDER = "segments"
TABLE_FILE = "table.npz"
FORMAT = 1
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
SortColumn = Literal["id", "voxels", "volume_um3", "name", "class"]


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


# Storing


def table_path(derived: Path) -> Path:
    """The table file of a label image whose derived folder is ``derived`` (tiling.derived.derived_dir)."""
    return derived / SEGMENTS_FOLDER / TABLE_FILE


def write_table(derived: Path, table: np.ndarray, geometry: Geometry, names: SegmentNames | None = None) -> Path:
    """Store ``table`` (and names) under ``derived/segments/``, replacing any earlier one atomically.

    The names must already have been checked against the table's ids (``SegmentNames.check_known``).
    """
    path = table_path(derived)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "voxel_size_nm": list(geometry.voxel_size_nm),
        "voxel_offset": list(geometry.voxel_offset),
        # Aligned with the rows ("" for none): a million names load in a fraction of a second.
        "names": _aligned_list(table["id"], names.names) if names and names.names else None,
        "classes": _aligned_list(table["id"], names.classes) if names and names.classes else None,
    }
    encoded = np.frombuffer(orjson.dumps(meta), dtype=np.uint8)
    handle, temporary = tempfile.mkstemp(prefix=".table-", suffix=".npz.tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, rows=table, meta=encoded)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _aligned_list(ids: np.ndarray, values: dict[int, str]) -> list[str]:
    aligned = [""] * len(ids)
    where = np.searchsorted(ids, np.fromiter(values, np.uint64, len(values)))
    for position, value in zip(where.tolist(), values.values(), strict=True):
        aligned[position] = value
    return aligned


@dataclass(frozen=True)
class SegmentQuery:
    """Which rows of a table, in which order: size bounds, a name substring, a box (x y z nm) that the rows'
    bounding boxes intersect, a sort column and direction."""

    min_voxels: int | None = None
    max_voxels: int | None = None
    min_volume_um3: float | None = None
    max_volume_um3: float | None = None
    name: str | None = None  # case-insensitive substring of the name or the class
    box: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None  # (low, high) x y z nm
    sort: SortColumn = "id"
    descending: bool = False


class SegmentTable:
    """One loaded table: rows sorted by id, names and classes aligned with them, and answers built from them."""

    def __init__(self, rows: np.ndarray, meta: dict[str, Any]) -> None:
        self.rows = rows
        self.voxel_size_nm = tuple(meta["voxel_size_nm"])
        named, classed = meta.get("names"), meta.get("classes")
        self.names = self._aligned(named)
        self.classes = self._aligned(classed)
        self.has_names, self.has_classes = named is not None, classed is not None
        self._orders: dict[str, np.ndarray] = {}
        self._lowered: np.ndarray | None = None
        self._properties: bytes | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.rows)

    def _aligned(self, values: list[str] | None) -> np.ndarray:
        if values is None:
            return np.full(len(self.rows), "", dtype=np.dtypes.StringDType())
        return np.array(values, dtype=np.dtypes.StringDType())

    def order(self, column: SortColumn) -> np.ndarray:
        """Row indices sorted by ``column`` (ties by id), computed once per table."""
        with self._lock:
            cached = self._orders.get(column)
            if cached is None:
                if column == "id":
                    cached = np.arange(len(self.rows))
                elif column in ("name", "class"):
                    cached = np.argsort(self.names if column == "name" else self.classes, kind="stable")
                else:
                    cached = np.argsort(self.rows[column], kind="stable")
                self._orders[column] = cached
            return cached

    def select(self, query: SegmentQuery) -> np.ndarray:
        """Indices of the rows ``query`` asks for, in its order."""
        rows = self.rows
        keep = np.ones(len(rows), bool)
        for column, low, high in (("voxels", query.min_voxels, query.max_voxels),
                                  ("volume_um3", query.min_volume_um3, query.max_volume_um3)):
            if low is not None:
                keep &= rows[column] >= low
            if high is not None:
                keep &= rows[column] <= high
        if query.name:
            needle = query.name.lower()
            if self._lowered is None:
                self._lowered = np.strings.lower(np.strings.add(np.strings.add(self.names, "\n"), self.classes))
            keep &= np.strings.find(self._lowered, needle) >= 0
        if query.box is not None:
            low, high = (np.asarray(corner, np.float64) for corner in query.box)
            keep &= ((rows["bbox_min"] < high) & (rows["bbox_max"] > low)).all(axis=1)
        order = self.order(query.sort)
        if query.descending:
            order = order[::-1]
        return order[keep[order]]

    def record(self, index: int) -> dict[str, Any]:
        """One row as JSON: the id as a decimal string (ids may pass 2**53), coordinates x y z in nm."""
        row = self.rows[index]
        return {
            "id": str(int(row["id"])),
            "name": str(self.names[index]) or None,
            "class": str(self.classes[index]) or None,
            "voxels": int(row["voxels"]),
            "volume_um3": float(row["volume_um3"]),
            "bbox_min_nm": row["bbox_min"].tolist(),
            "bbox_max_nm": row["bbox_max"].tolist(),
            "centroid_nm": row["centroid"].tolist(),
        }

    CSV_HEADER = ("id,name,class,voxels,volume_um3,bbox_min_x_nm,bbox_min_y_nm,bbox_min_z_nm,bbox_max_x_nm,"
                  "bbox_max_y_nm,bbox_max_z_nm,centroid_x_nm,centroid_y_nm,centroid_z_nm\r\n")

    def csv_lines(self, indices: np.ndarray) -> str:
        """CSV rows (RFC 4180, CRLF) of the rows at ``indices``."""
        lines = []
        for index in indices.tolist():
            row = self.rows[index]
            numbers = [*row["bbox_min"].tolist(), *row["bbox_max"].tolist(), *row["centroid"].tolist()]
            lines.append(",".join([str(int(row["id"])), _csv_text(str(self.names[index])),
                                   _csv_text(str(self.classes[index])), str(int(row["voxels"])),
                                   repr(float(row["volume_um3"])), *(repr(v) for v in numbers)]) + "\r\n")
        return "".join(lines)

    def segment_properties(self) -> bytes:
        """The Neuroglancer ``segment_properties`` info (precomputed segment_properties.md, inline), encoded once."""
        with self._lock:
            if self._properties is None:
                self._properties = orjson.dumps(self._properties_document(), option=orjson.OPT_SERIALIZE_NUMPY)
            return self._properties

    def _properties_document(self) -> dict[str, Any]:
        rows = self.rows
        properties: list[dict[str, Any]] = []
        if self.has_names:
            properties.append({"id": "name", "type": "label", "values": self.names.tolist()})
        if self.has_classes:
            # Tags hold no spaces and match case-insensitively: the class as written is the tag's description.
            kinds, inverse = np.unique(self.classes, return_inverse=True)
            tags: list[str] = []
            descriptions: list[str] = []
            by_tag: dict[str, int] = {}
            tag_of_kind = []
            for kind in kinds.tolist():
                if not kind:  # no class
                    tag_of_kind.append(-1)
                    continue
                tag = "_".join(kind.split()).lstrip("#") or "_"
                if tag.lower() not in by_tag:
                    by_tag[tag.lower()] = len(tags)
                    tags.append(tag)
                    descriptions.append(kind)
                tag_of_kind.append(by_tag[tag.lower()])
            lists = [[i] for i in range(len(tags))] + [[]]  # index -1: none
            properties.append({"id": "class", "type": "tags", "tags": tags, "tag_descriptions": descriptions,
                               "values": [lists[t] for t in np.asarray(tag_of_kind)[inverse].tolist()]})
        voxels = rows["voxels"]
        wide = len(rows) and int(voxels.max()) > np.iinfo(np.uint32).max
        properties.append({"id": "voxels", "type": "number", "data_type": "float32" if wide else "uint32",
                           "description": "voxels in the segment (level 0)", "values": np.ascontiguousarray(voxels)})
        properties.append({"id": "volume_um3", "type": "number", "data_type": "float32",
                           "description": "volume in cubic micrometres",
                           "values": rows["volume_um3"].astype(np.float32)})  # written as float32's shortest form
        return {"@type": "neuroglancer_segment_properties",
                "inline": {"ids": rows["id"].astype(np.dtypes.StringDType()).tolist(), "properties": properties}}


def _csv_text(value: str) -> str:
    if not value:
        return ""
    if any(c in value for c in ',"\r\n') or value[0] in "=+-@\t":
        # Quoted; a leading formula character is neutralised for spreadsheets (OWASP CSV injection).
        value = ("'" + value) if value[0] in "=+-@\t" else value
        return '"' + value.replace('"', '""') + '"'
    return value


def load_table(path: Path) -> SegmentTable:
    """Read a stored table.

    Raises:
        SegmentsNotFound: there is none.
    """
    try:
        with np.load(path, allow_pickle=False) as stored:
            rows = stored["rows"]
            meta = orjson.loads(stored["meta"].tobytes())
    except FileNotFoundError:
        raise SegmentsNotFound("this label image has no segment table (lamella segments computes it)") from None
    if rows.dtype != TABLE_DTYPE or meta.get("format") != FORMAT or \
            any(len(meta[k]) != len(rows) for k in ("names", "classes") if meta.get(k) is not None):
        raise SegmentsNotFound("this label image's segment table is of another format (lamella segments "
                               "computes it again)")
    return SegmentTable(rows, meta)


class SegmentTables:
    """Loaded tables of this process, bounded in rows, each checked against its file's mtime and size on use."""

    def __init__(self, max_rows: int = 4_000_000) -> None:
        self._cache: LRUCache[Path, tuple[tuple[int, int], SegmentTable]] = LRUCache(
            maxsize=max_rows, getsizeof=lambda entry: max(1, len(entry[1])))
        self._lock = threading.Lock()

    @staticmethod
    def stamp(path: Path) -> tuple[int, int] | None:
        try:
            status = path.stat()
        except FileNotFoundError:
            return None
        return status.st_mtime_ns, status.st_size

    def exists(self, derived: Path) -> bool:
        return self.stamp(table_path(derived)) is not None

    def get(self, derived: Path) -> tuple[SegmentTable, str]:
        """The table of ``derived`` and an ETag naming its stored version (call in a worker thread).

        Raises:
            SegmentsNotFound: there is none.
        """
        path = table_path(derived)
        stamp = self.stamp(path)
        if stamp is None:
            raise SegmentsNotFound("this label image has no segment table (lamella segments computes it)")
        etag = f'"{stamp[0]:x}-{stamp[1]:x}"'
        with self._lock:
            cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1], etag
        table = load_table(path)
        with self._lock:
            if len(table) + 1 <= self._cache.maxsize:
                self._cache[path] = (stamp, table)
        return table, etag
