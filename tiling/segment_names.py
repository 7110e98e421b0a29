"""Segment names and classes from a table a user gives: CSV with a header, or JSON.

Accepted shapes (ids are decimal segment ids of the label image; 0 is background, never a segment):

- CSV with a header row ``id,name`` or ``id,name,class`` (other columns are refused);
- a JSON object ``{"12": "mitochondrion 1", ...}`` (id -> name);
- a JSON list ``[{"id": 12, "name": "mito 1", "class": "mitochondrion"}, ...]`` (``name`` and ``class``
  optional, one of them given).

Every problem (a malformed row, a duplicate id, an id the labels do not hold) is one
``InvalidSegmentNames`` whose message names the file and the row.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiling.errors import InvalidSegmentNames

MAX_FILE_BYTES = 512 << 20  # a million names of a few hundred characters
MAX_TEXT = 1000  # characters of one name or class
MAX_ID = (1 << 64) - 1


@dataclass(frozen=True)
class SegmentNames:
    """Names and classes by segment id (ids absent from a mapping have none)."""

    names: dict[int, str]
    classes: dict[int, str]

    def check_known(self, ids: np.ndarray, source: str) -> None:
        """Raise ``InvalidSegmentNames`` for the first id not among ``ids`` (sorted segment ids of the labels)."""
        given = np.array(sorted(set(self.names) | set(self.classes)), dtype=np.uint64)
        if not len(given):
            return
        where = np.searchsorted(ids, given)
        found = (where < len(ids)) & (ids[np.minimum(where, len(ids) - 1)] == given) if len(ids) else \
            np.zeros(len(given), bool)
        if not found.all():
            missing = int(given[~found][0])
            raise InvalidSegmentNames(f"{source}: segment {missing} is not in the labels "
                                      f"({int((~found).sum())} unknown id(s))")


def read_names(path: Path) -> SegmentNames:
    """Parse a names file (CSV or JSON, by its first non-blank character).

    Raises:
        InvalidSegmentNames: the file cannot be read or a row is malformed or repeats an id.
    """
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidSegmentNames(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidSegmentNames(f"{path}: not UTF-8 text") from None
    except OSError as error:
        raise InvalidSegmentNames(f"{path}: {error.strerror or error}") from None
    return parse_names(text, str(path))


def parse_names(text: str, source: str) -> SegmentNames:
    """Names from the text of a names file; ``source`` names it in errors."""
    stripped = text.lstrip()
    if not stripped:
        raise InvalidSegmentNames(f"{source}: empty")
    if stripped[0] in "[{":
        return _from_json(stripped, source)
    return _from_csv(text, source)


class _Collector:
    def __init__(self, source: str) -> None:
        self.source = source
        self.names: dict[int, str] = {}
        self.classes: dict[int, str] = {}
        self.seen: set[int] = set()

    def add(self, where: str, raw_id: Any, name: Any, kind: Any) -> None:
        segment = _segment_id(raw_id, f"{self.source}: {where}")
        if segment in self.seen:
            raise InvalidSegmentNames(f"{self.source}: {where}: segment {segment} appears twice")
        self.seen.add(segment)
        name, kind = _text(name, "name", self.source, where), _text(kind, "class", self.source, where)
        if name is None and kind is None:
            raise InvalidSegmentNames(f"{self.source}: {where}: neither a name nor a class")
        if name is not None:
            self.names[segment] = name
        if kind is not None:
            self.classes[segment] = kind

    def result(self) -> SegmentNames:
        return SegmentNames(self.names, self.classes)


def _from_csv(text: str, source: str) -> SegmentNames:
    rows = csv.reader(io.StringIO(text, newline=""), strict=True)
    collector = _Collector(source)
    try:
        header = next(rows, None)
        columns = [c.strip().lower() for c in header or []]
        if columns not in (["id", "name"], ["id", "name", "class"]):
            raise InvalidSegmentNames(f"{source}: row 1: the header must be id,name or id,name,class "
                                      f"(found {','.join(columns)[:80]!r})")
        for row in rows:
            where = f"row {rows.line_num}"
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != len(columns):
                raise InvalidSegmentNames(f"{source}: {where}: {len(row)} fields, the header has {len(columns)}")
            name = row[1] if row[1].strip() else None
            kind = row[2] if len(row) > 2 and row[2].strip() else None
            collector.add(where, row[0], name, kind)
    except csv.Error as error:
        raise InvalidSegmentNames(f"{source}: row {rows.line_num}: {error}") from None
    return collector.result()


def _from_json(text: str, source: str) -> SegmentNames:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidSegmentNames(f"{source}: not JSON: line {error.lineno}: {error.msg}") from None
    collector = _Collector(source)
    if isinstance(value, dict):
        for key, name in value.items():
            collector.add(f"key {key[:40]!r}", key, name, None)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            where = f"item {index}"
            if not isinstance(item, dict) or "id" not in item or set(item) - {"id", "name", "class"}:
                raise InvalidSegmentNames(f"{source}: {where}: expected an object with id, name and/or class")
            collector.add(where, item["id"], item.get("name"), item.get("class"))
    else:
        raise InvalidSegmentNames(f"{source}: expected an object of id -> name or a list of rows")
    return collector.result()


def _segment_id(raw: Any, where: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise InvalidSegmentNames(f"{where}: the id must be a whole number")
    text = raw.strip() if isinstance(raw, str) else str(raw)
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise InvalidSegmentNames(f"{where}: id {text[:30]!r} is not a whole number")
    segment = int(text)
    if segment == 0:
        raise InvalidSegmentNames(f"{where}: id 0 is the background, not a segment")
    if segment > MAX_ID:
        raise InvalidSegmentNames(f"{where}: id {segment} does not fit in 64 bits")
    return segment


def _text(value: Any, field: str, source: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidSegmentNames(f"{source}: {where}: the {field} must be text")
    value = value.strip()
    if len(value) > MAX_TEXT or "\x00" in value or "\n" in value or "\r" in value:
        raise InvalidSegmentNames(f"{source}: {where}: the {field} must be one line of at most {MAX_TEXT} "
                                  "characters")
    return value or None
