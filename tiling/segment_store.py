"""A label image's stored segment table: written atomically, read through a bounded cache, queried.

The table is kept in ``<derived dir>/segments/table.npz`` (tiling/derived.py): the rows of
``tiling.segments.TABLE_DTYPE`` sorted by id, and a small JSON document (geometry, and names and
classes aligned with the rows), replaced whole (temporary file, then rename). ``SegmentTables``
reads it with a bounded cache checked against the file's modification time and size.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
from cachetools import LRUCache

from tiling.errors import SegmentsNotFound
from tiling.segment_names import SegmentNames
from tiling.segments import TABLE_DTYPE, Geometry

SEGMENTS_FOLDER = "segments"
TABLE_FILE = "table.npz"
FORMAT = 1
SortColumn = Literal["id", "voxels", "volume_um3", "name", "class"]


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
    segment: int | None = None  # one id
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
        if query.segment is not None:  # rows are sorted by id
            at = int(np.searchsorted(rows["id"], np.uint64(query.segment)))
            found = at < len(rows) and int(rows["id"][at]) == query.segment
            return np.array([at] if found else [], dtype=np.intp)
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
