"""Stores: where an OME-Zarr image's keys live (a local folder or an http(s) URL).

A store knows how to name itself to tensorstore (``kvstore_spec``) and how to read one
stored key, whole or by byte range, for the passthrough endpoint. Keys are checked
here, once, so that nothing outside the store root is ever read.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tensorstore as ts

from tiling.errors import InvalidKey, InvalidRange, KeyNotFound, StoreNotFound, StoreUnreadable
from tiling.integers import clip, parse_natural

_KEY_PART = re.compile(r"[A-Za-z0-9._\-]+")
MAX_KEY_LENGTH = 1024
MAX_KEY_PART_LENGTH = 255  # NAME_MAX of common file systems: a longer part cannot be a file (ENAMETOOLONG)
MAX_POSITION_DIGITS = 19  # byte positions below 10**19: beyond any file or object size
# errno values of open() that mean "no value here" rather than "the store cannot be read".
_NO_VALUE = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG, errno.ENXIO}


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Bytes from ``start`` to ``end`` inclusive (``end`` None: to the end)."""

    start: int
    end: int | None


@dataclass(frozen=True, slots=True)
class SuffixRange:
    """The last ``length`` bytes."""

    length: int


@dataclass(frozen=True, slots=True)
class RefusedRange:
    """A single bytes range we will not serve (malformed, not canonical, ends before it starts).

    ``resolve_range`` raises it as InvalidRange once the value's size is known, so that every
    416 answer can say that size.
    """

    reason: str


ByteRange = OffsetRange | SuffixRange | RefusedRange


def parse_range_header(header: str | None) -> ByteRange | None:
    """Parse a ``Range`` header; None when absent or not ours, never an exception.

    Another unit or several ranges are answered with the whole value (RFC 9110 §14.2 lets a
    server ignore Range). A single bytes range must be ``first-[last]`` or ``-suffix`` in
    canonical ASCII numbers (no leading zero, at most 19 digits), else it is a RefusedRange.
    """
    if not header:
        return None
    unit, equals, ranges = header.partition("=")
    unit = unit.strip(" \t")
    if not equals or not unit.isascii() or unit.lower() != "bytes" or "," in ranges:
        return None
    try:
        return _parse_byte_range(ranges.strip(" \t"))
    except InvalidRange as error:
        return RefusedRange(str(error))


def _parse_byte_range(text: str) -> OffsetRange | SuffixRange:
    first, dash, last = text.partition("-")
    first, last = first.rstrip(" \t"), last.lstrip(" \t")
    if not dash or (first == "" and last == ""):
        raise InvalidRange(f"malformed byte range {clip(text)}")
    if first == "":
        length = _position(last)
        if length == 0:
            raise InvalidRange("a suffix range of zero bytes cannot be satisfied")
        return SuffixRange(length)
    start = _position(first)
    end = _position(last) if last else None
    if end is not None and end < start:
        raise InvalidRange(f"byte range {start}-{end} ends before it starts")
    return OffsetRange(start, end)


def _position(text: str) -> int:
    return parse_natural(text, 10**MAX_POSITION_DIGITS - 1, InvalidRange, "byte position")


@dataclass(frozen=True, slots=True)
class StoredValue:
    """Bytes of one stored key (possibly a slice) with what HTTP needs to describe them."""

    data: bytes
    total_size: int
    etag: str
    start: int = 0

    @property
    def is_partial(self) -> bool:
        return len(self.data) != self.total_size

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.start + len(self.data) - 1}/{self.total_size}"


def resolve_range(byte_range: ByteRange | None, size: int) -> tuple[int, int]:
    """Turn a byte range into ``[start, stop)`` within a value of ``size`` bytes.

    Raises InvalidRange, carrying ``size``, for a refused or unsatisfiable range.
    """
    if byte_range is None:
        return 0, size
    if isinstance(byte_range, RefusedRange):
        raise InvalidRange(byte_range.reason, size=size)
    if size == 0:  # no range of an empty value can be written in a Content-Range
        raise InvalidRange("the value is empty", size=size)
    if isinstance(byte_range, SuffixRange):
        return max(0, size - byte_range.length), size
    if byte_range.start >= size:
        raise InvalidRange(f"byte range starts at {byte_range.start}, beyond the {size} bytes", size=size)
    stop = size if byte_range.end is None else min(size, byte_range.end + 1)
    return byte_range.start, stop


def check_key(key: str) -> str:
    """Return ``key`` if it is the one spelling of a path inside a store, else raise InvalidKey.

    Parts are non-empty, not "." or "..", of ASCII letters, digits and ``._-`` only (so their
    length is their size in bytes) and short enough to be file names.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"empty key, or longer than {MAX_KEY_LENGTH} characters")
    for part in key.split("/"):
        if part in (".", "..") or _KEY_PART.fullmatch(part) is None:
            raise InvalidKey(f"key {clip(key)} is not a relative store key (a/b/c of letters, digits and ._-)")
        if len(part) > MAX_KEY_PART_LENGTH:
            raise InvalidKey(f"key {clip(key)} has a part longer than {MAX_KEY_PART_LENGTH} bytes")
    return key


class Store:
    """Where one image's keys live."""

    uri: str

    def kvstore_spec(self, path: str = "") -> dict[str, Any]:
        raise NotImplementedError

    async def read(self, key: str, byte_range: ByteRange | None = None) -> StoredValue:
        """Read one key (raises InvalidKey, KeyNotFound, InvalidRange, StoreUnreadable)."""
        raise NotImplementedError

    def local_path(self, key: str) -> Path | None:
        """The file behind ``key`` if the store is a local folder, else None."""
        return None

    def check_files(self, keys: Iterable[str]) -> None:
        """Raise StoreUnreadable if tensorstore must not open one of ``keys`` (see LocalStore)."""


class LocalStore(Store):
    """A folder on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = str(self.root)

    def kvstore_spec(self, path: str = "") -> dict[str, Any]:
        return {"driver": "file", "path": str(self.root / path) + "/"}

    def local_path(self, key: str) -> Path:
        check_key(key)
        try:
            path = (self.root / key).resolve()
        except RuntimeError:  # a symlink loop (Python 3.11, 3.12; later ones leave it to open: ELOOP)
            raise KeyNotFound(f"no stored key {key!r} (a symlink loop)") from None
        # Symlinks inside the store must not lead out of it.
        if not path.is_relative_to(self.root):
            raise InvalidKey(f"key {key!r} leads outside the store")
        return path

    def check_files(self, keys: Iterable[str]) -> None:
        """Raise StoreUnreadable if one of ``keys`` (not checked: they come from metadata) is
        there but is neither a regular file nor a folder.

        tensorstore's file driver opens what a chunk key names and waits there: a FIFO would
        hold the read, and one of its few I/O threads, for ever. A missing key is fine (fill
        value), and so is a folder (tensorstore reads it as missing).
        """
        for key in keys:
            try:
                mode = os.stat(self.root / key).st_mode
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as error:
                raise StoreUnreadable(f"cannot read {key!r} of {self.uri}: {error.strerror}") from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise StoreUnreadable(f"{key!r} of {self.uri} is not a regular file")

    async def read(self, key: str, byte_range: ByteRange | None = None) -> StoredValue:
        path = self.local_path(key)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _read_file, path, key, byte_range)


def _read_file(path: Path, key: str, byte_range: ByteRange | None) -> StoredValue:
    # O_NONBLOCK: opening a FIFO waits for a writer (for ever) without it; reads of regular files ignore it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as error:
        raise _open_error(error, key) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # a directory, FIFO, socket or device holds no value
            raise KeyNotFound(f"no stored key {key!r}")
        start, stop = resolve_range(byte_range, info.st_size)
        data = os.pread(fd, stop - start, start)
    except OSError as error:
        raise StoreUnreadable(f"cannot read {key!r}: {error.strerror}") from None
    finally:
        os.close(fd)
    if len(data) != stop - start:
        raise StoreUnreadable(f"{key!r} changed while it was read")
    etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
    return StoredValue(data=data, total_size=info.st_size, etag=etag, start=start)


def _open_error(error: OSError, key: str) -> KeyNotFound | StoreUnreadable:
    if error.errno in _NO_VALUE:
        return KeyNotFound(f"no stored key {key!r}")
    return StoreUnreadable(f"cannot read {key!r}: {error.strerror}")


class HttpStore(Store):
    """An OME-Zarr published at an http(s) URL (as archives do)."""

    def __init__(self, url: str, context: ts.Context | None = None) -> None:
        self.uri = url.rstrip("/")
        self._context = context
        self._kvstore: ts.KvStore | None = None

    def kvstore_spec(self, path: str = "") -> dict[str, Any]:
        base = self.uri + ("/" + path if path else "")
        return {"driver": "http", "base_url": base + "/"}

    async def read(self, key: str, byte_range: ByteRange | None = None) -> StoredValue:
        check_key(key)
        try:
            if self._kvstore is None:
                self._kvstore = await ts.KvStore.open(self.kvstore_spec(), context=self._context)
            result = await self._kvstore.read(key)
        except Exception as error:  # tensorstore raises ValueError/OSError for HTTP failures
            raise StoreUnreadable(f"cannot read {key!r} from {self.uri}: {error}") from None
        if result.state != "value":
            raise KeyNotFound(f"no stored key {key!r}")
        value = bytes(result.value)
        start, stop = resolve_range(byte_range, len(value))
        etag = '"' + hashlib.blake2b(value, digest_size=12).hexdigest() + '"'
        return StoredValue(data=value[start:stop], total_size=len(value), etag=etag, start=start)


def open_store(uri: str, context: ts.Context | None = None) -> Store:
    """A store for a local path or an http(s) URL; raises StoreNotFound for a missing folder."""
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        return HttpStore(uri, context)
    if scheme == "file":
        uri = urlsplit(uri).path
    elif scheme and len(scheme) > 1:
        raise StoreNotFound(f"unsupported store address {uri!r} (use a path or an http(s) URL)")
    path = Path(uri).expanduser()
    if not path.is_dir():
        raise StoreNotFound(f"no folder at {uri}")
    return LocalStore(path)
