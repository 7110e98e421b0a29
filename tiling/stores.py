"""Stores: where an OME-Zarr image's keys live (a local folder, an http(s) URL or an S3 bucket).

A store knows how to name itself to tensorstore (``kvstore_spec``) and how to read one
stored key, whole or by byte range, for the passthrough endpoint. Keys are checked
here, once, so that nothing outside the store root is ever read.

S3-compatible object storage (``s3://bucket/prefix``) is read and written through tensorstore's
``s3`` kvstore driver. Where the endpoint is, its region and whose credentials are used come from
an ``S3Config``: the standard AWS variables, or Lamella's settings (``viewer.config``).
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

import cachetools
import tensorstore as ts

from tiling.errors import (
    InvalidKey,
    InvalidRange,
    KeyNotFound,
    StoreDenied,
    StoreNotFound,
    StoreUnreadable,
    TilingError,
)
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

    async def missing(self, what: str) -> TilingError:
        """The error to raise when the store holds no image (``what`` says so); stores that can tell more say it."""
        return StoreNotFound(what)


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


def open_store(uri: str, context: ts.Context | None = None, s3: S3Config | None = None) -> Store:
    """A store for a local path, an http(s) URL or an ``s3://bucket/prefix`` address (reached as ``s3``,
    default: ``S3Config.from_env()``, says); raises StoreNotFound for a missing folder."""
    scheme = urlsplit(uri).scheme
    if scheme in ("http", "https"):
        return HttpStore(uri, context)
    if scheme == "s3":
        return S3Store(uri, s3 or S3Config.from_env(), context)
    if scheme == "file":
        uri = urlsplit(uri).path
    elif scheme and len(scheme) > 1:
        raise StoreNotFound(f"unsupported store address {uri!r} (use a path, an http(s) URL or s3://bucket/path)")
    path = Path(uri).expanduser()
    if not path.is_dir():
        raise StoreNotFound(f"no folder at {uri}")
    return LocalStore(path)


def is_object_storage(uri: str) -> bool:
    """Whether ``uri`` names a store in an S3-compatible bucket."""
    return urlsplit(uri).scheme == "s3"


# Bucket names: 3-63 lower-case letters, digits, dots and hyphens (AWS's rules; other servers are looser, none wider).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` as (bucket, "some/prefix"); StoreNotFound if it is not one."""
    parts = urlsplit(uri)
    prefix = parts.path.strip("/")
    if parts.scheme != "s3" or _BUCKET.fullmatch(parts.netloc) is None or parts.query or parts.fragment:
        raise StoreNotFound(f"{clip(uri)} is not an s3://bucket/path address")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise StoreNotFound(f"{clip(uri)}: the path in the bucket has an empty, '.' or '..' part")
    return parts.netloc, prefix


# Lamella's own settings (viewer.config.configure_object_storage): they win over the AWS variables.
_SETTINGS: dict[str, str | None] = {"endpoint": None, "region": None}


def set_s3_defaults(endpoint: str | None, region: str | None) -> None:
    """The endpoint and region every S3Config.from_env() uses unless given others (None: the AWS variables')."""
    _SETTINGS.update(endpoint=endpoint or None, region=region or None)


@dataclass(frozen=True, slots=True)
class S3Config:
    """How to reach S3-compatible object storage.

    ``endpoint`` None means Amazon S3 itself (tensorstore then finds the bucket's region).
    ``credentials`` is a tensorstore ``aws_credentials`` provider: ``environment``
    (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN), ``profile`` (~/.aws files) or
    ``anonymous`` (public buckets).
    """

    endpoint: str | None = None
    region: str | None = None
    credentials: str = "anonymous"
    profile: str | None = None

    @classmethod
    def from_env(cls, endpoint: str | None = None, region: str | None = None) -> S3Config:
        """Endpoint and region given (Lamella's settings) or from the AWS variables; credentials from
        AWS_ACCESS_KEY_ID, else an AWS profile (AWS_PROFILE or ~/.aws/credentials), else anonymous."""
        env = os.environ
        endpoint = endpoint or _SETTINGS["endpoint"] or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        region = region or _SETTINGS["region"] or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise StoreNotFound(f"the S3 endpoint {clip(endpoint)} is not an http(s) URL")
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            return cls(endpoint, region, "environment")
        profile = env.get("AWS_PROFILE")
        files = env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")
        if profile or os.path.isfile(files):
            return cls(endpoint, region, "profile", profile)
        return cls(endpoint, region, "anonymous")

    def kvstore_spec(self, bucket: str, path: str) -> dict[str, Any]:
        credentials: dict[str, Any] = {"type": self.credentials}
        if self.profile:
            credentials["profile"] = self.profile
        spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": path, "aws_credentials": credentials}
        if self.endpoint:
            spec["endpoint"] = self.endpoint.rstrip("/")
            # Without a region tensorstore asks AWS for the bucket's; an endpoint of our own has one.
            spec["aws_region"] = self.region or "us-east-1"
        elif self.region:
            spec["aws_region"] = self.region
        return spec


SIZES_KEPT = 65536  # object sizes remembered per S3 store (keys of registered images never change)


class S3Store(Store):
    """An OME-Zarr in an S3-compatible bucket, read through tensorstore's ``s3`` kvstore driver.

    A byte range is read as a ranged GET once the object's size is known (an HTTP answer must
    say it); the first read of an object learns it by reading the object whole.
    """

    def __init__(self, uri: str, config: S3Config, context: ts.Context | None = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.config = config
        self.context = context
        self._kvstore: ts.KvStore | None = None
        self._sizes: cachetools.LRUCache[str, int] = cachetools.LRUCache(SIZES_KEPT)

    def kvstore_spec(self, path: str = "") -> dict[str, Any]:
        prefix = "/".join(part for part in (self.prefix, path.strip("/")) if part)
        return self.config.kvstore_spec(self.bucket, prefix + "/" if prefix else "")

    async def kvstore(self) -> ts.KvStore:
        if self._kvstore is None:
            try:
                self._kvstore = await ts.KvStore.open(self.kvstore_spec(), context=self.context)
            except ValueError as error:
                raise StoreUnreadable(f"cannot open {self.uri}: {s3_problem(error)}") from None
        return self._kvstore

    async def read(self, key: str, byte_range: ByteRange | None = None) -> StoredValue:
        check_key(key)
        kvstore = await self.kvstore()
        size = self._sizes.get(key)
        if byte_range is not None and size is not None:
            start, stop = resolve_range(byte_range, size)
            result = await self._read(kvstore, key, slice(start, stop))
            data = bytes(result.value)
            if len(data) != stop - start:
                raise StoreUnreadable(f"{key!r} of {self.uri} changed while it was read")
            return StoredValue(data=data, total_size=size, etag=_etag(result), start=start)
        result = await self._read(kvstore, key, None)
        value = bytes(result.value)
        self._sizes[key] = len(value)
        start, stop = resolve_range(byte_range, len(value))
        return StoredValue(data=value[start:stop], total_size=len(value), etag=_etag(result), start=start)

    async def missing(self, what: str) -> TilingError:
        """Why ``what`` is not found: the bucket itself may not exist (S3 answers a read from a missing bucket as
        from a missing key)."""
        kvstore = await self.kvstore()
        try:
            await kvstore.list(ts.KvStore.KeyRange("zarr.json", "zarr.json\0"))
        except Exception as error:  # tensorstore raises ValueError/OSError for HTTP failures
            return s3_error(error, f"cannot use {self.uri}")
        return StoreNotFound(what)

    async def _read(self, kvstore: ts.KvStore, key: str, byte_range: slice | None) -> ts.KvStore.ReadResult:
        try:
            result = await kvstore.read(key, byte_range=byte_range)
        except Exception as error:  # tensorstore raises ValueError/OSError for HTTP failures
            raise s3_error(error, f"cannot read {key!r} from {self.uri}") from None
        if result.state != "value":
            raise KeyNotFound(f"no stored key {key!r}")
        return result


def _etag(result: ts.KvStore.ReadResult) -> str:
    """The object's S3 ETag, as tensorstore keeps it in the generation (the same for every range)."""
    generation = bytes(result.stamp.generation)
    return '"' + hashlib.blake2b(generation, digest_size=12).hexdigest() + '"'


def s3_problem(error: BaseException) -> str:
    """tensorstore's message for a failed S3 request in a few words: without the bracketed details
    (response body, request id, source locations) and the status code's name."""
    text = str(error).replace("\n", " ") or type(error).__name__
    text = text.split(" [", 1)[0]
    text = re.sub(r"^[A-Z_]+: (?=\S)", "", text)  # tensorstore's status name (NOT_FOUND: ...)
    status = re.search(r"http_response_code='(\d+)'", str(error))
    if status and text in ("Unknown", ""):
        text = f"HTTP {status.group(1)}"
    return text[:200]


_DENIED = re.compile(r"http_response_code='(401|403)'|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|"
                     r"PERMISSION_DENIED|UNAUTHENTICATED")


def s3_error(error: BaseException, what: str) -> StoreNotFound | StoreUnreadable:
    """A failed S3 request as StoreNotFound (no such bucket), StoreDenied (the credentials, or their absence,
    refused) or StoreUnreadable (unreachable, or any other failure)."""
    problem = s3_problem(error)
    if "NoSuchBucket" in str(error):
        return StoreNotFound(f"{what}: the bucket does not exist")
    if _DENIED.search(str(error)):
        return StoreDenied(f"{what}: access denied ({problem}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           "or whether the bucket is public)")
    return StoreUnreadable(f"{what}: {problem}")
