"""Putting a finished OME-Zarr image into an S3-compatible bucket (tensorstore's ``s3`` kvstore driver).

An import into a bucket is built on disk first (``tiling.pyramid``: resumable, moved into place only
when complete), then uploaded object by object with the image's root metadata (``zarr.json``, or
``.zattrs``/``.zgroup`` for Zarr v2) written last: until then the prefix holds no OME-Zarr group, so no
reader (and no ``lamella add``) can take the upload for an image. While an upload is under way the
prefix also holds an ``UPLOADING`` marker object, removed last.

An upload that fails removes what it wrote (best effort: a bucket that stops answering keeps what it
had). An interrupted one (Ctrl-C) keeps it, and ``resume=True`` skips the objects already there: S3
writes an object whole or not at all, so one that is listed is complete.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from pathlib import Path

import tensorstore as ts

from tiling.errors import ImportProblem
from tiling.stores import S3Store, s3_error

MARKER = "UPLOADING"
ROOT_METADATA = ("zarr.json", ".zattrs", ".zgroup")  # at the image root: written last
IN_FLIGHT_BYTES = 64 << 20  # objects being written at once, at most about this many bytes (and 16 objects)
IN_FLIGHT_OBJECTS = 16


def image_keys(folder: Path) -> list[str]:
    """Every file of the image at ``folder`` as a store key, the root metadata last."""
    keys = []
    for parent, folders, names in os.walk(folder):
        folders.sort()
        relative = Path(parent).relative_to(folder)
        keys.extend((relative / name).as_posix() for name in sorted(names))
    return sorted(keys, key=lambda key: key in ROOT_METADATA)


def prepare_upload(store: S3Store, *, resume: bool) -> None:
    """Check that the bucket answers, lets us write and has no image at ``store`` yet; leave the marker.

    Raises ImportProblem if an image is already there, or if an unfinished upload is there and
    ``resume`` is not given; StoreDenied or StoreUnreadable if the bucket cannot be used.
    """
    kvstore = _open(store)
    existing = set(_list(store, kvstore))
    if existing & set(ROOT_METADATA):
        raise ImportProblem(f"{store.uri} already holds an image")
    if existing and not resume:
        what = "an unfinished upload (run the same command with --resume)" if MARKER in existing else "objects"
        raise ImportProblem(f"{store.uri} already holds {what}")
    _wait(kvstore.write(MARKER, b"an import by lamella is writing this image\n"), store, f"cannot write to {store.uri}")


def upload_image(
    folder: Path, store: S3Store, *, resume: bool = False, progress: Callable[[int], None] | None = None
) -> int:
    """Write every file of the image at ``folder`` under ``store``, the root metadata last, then remove the
    marker. With ``resume``, objects already there are kept. Returns the number of objects written;
    ``progress`` is called with the bytes of each object written."""
    kvstore = _open(store)
    present = set(_list(store, kvstore)) if resume else set()
    keys = image_keys(folder)
    root = [key for key in keys if key in ROOT_METADATA]
    body = [key for key in keys if key not in ROOT_METADATA and key not in present]
    written = _write_all(folder, store, kvstore, body, progress)
    written += _write_all(folder, store, kvstore, root, progress)  # only once everything else is stored
    _wait(kvstore.delete_range(ts.KvStore.KeyRange(MARKER, MARKER + "\0")), store, f"cannot finish {store.uri}")
    return written


def remove_upload(store: S3Store) -> None:
    """Delete every object under ``store`` (best effort: an unreachable bucket keeps them)."""
    try:
        kvstore = _open(store)
        kvstore.delete_range(ts.KvStore.KeyRange()).result(timeout=120)
    except Exception:  # cleaning up after another failure, which is the one reported
        pass


def _write_all(
    folder: Path, store: S3Store, kvstore: ts.KvStore, keys: list[str], progress: Callable[[int], None] | None
) -> int:
    pending: deque[tuple[str, int, ts.Future]] = deque()
    in_flight = 0

    def settle_one() -> None:
        nonlocal in_flight
        key, size, future = pending.popleft()
        _wait(future, store, f"cannot write {key!r} to {store.uri}")
        in_flight -= size
        if progress is not None:
            progress(size)

    for key in keys:
        data = (folder / key).read_bytes()
        while pending and (in_flight + len(data) > IN_FLIGHT_BYTES or len(pending) >= IN_FLIGHT_OBJECTS):
            settle_one()
        pending.append((key, len(data), kvstore.write(key, data)))
        in_flight += len(data)
    while pending:
        settle_one()
    return len(keys)


def _open(store: S3Store) -> ts.KvStore:
    try:
        return ts.KvStore.open(store.kvstore_spec(), context=store.context).result()
    except ValueError as error:
        raise s3_error(error, f"cannot open {store.uri}") from None


def _list(store: S3Store, kvstore: ts.KvStore) -> list[str]:
    keys = _wait(kvstore.list(), store, f"cannot list {store.uri}")
    return [key.decode() for key in keys]


def _wait(future: ts.Future, store: S3Store, what: str) -> object:
    try:
        return future.result()
    except (ValueError, OSError) as error:
        raise s3_error(error, what) from None
