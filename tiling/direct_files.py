"""Whole files written once, past the page cache (``O_DIRECT``) where the filesystem allows it.

An import writes every level-0 shard exactly once and nothing reads it soon. Written through
the page cache, each 4 KiB takes a cache page: on a VM whose balloon hands freed memory back to
the host that costs about 2 s of CPU per GB on first use (measured on our CI machines with
``dd`` of 1 GiB: 2.4 s of system time buffered, 0.09 s direct), and a large import pushes its
own input out of the cache. Where ``O_DIRECT`` is refused (tmpfs, some network and FUSE
filesystems) files are written the ordinary way, as are those a caller asks to keep cached.

A file's contents are produced (``write_from``: ``tiling.shards`` encodes a shard) in the
caller's thread straight into one of a few page-aligned buffers, and written from it by a
background thread: the caller goes on computing while the disk works. A direct write returns
only once the device has the data, and the disk is about as busy as the CPUs in an import (1 GiB
written at ~1 GB/s here), so a caller that waited for its own writes would leave a CPU idle.
"""

from __future__ import annotations

import errno
import mmap
import os
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

Fill = Callable[[memoryview], int | None]  # writes a file into the buffer: its size (None: no file)

ALIGNMENT = 4096  # a multiple of the logical block size O_DIRECT requires on common devices
TEMPORARY_SUFFIX = ".__lamella"  # a file being written; renamed into place when complete


class DirectFiles:
    """Writes whole files in background threads, each replacing its destination atomically.

    ``buffers`` bounds the files filled but not yet written: a caller waits for a free one.
    """

    def __init__(self, writers: int = 2, buffers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(writers, thread_name_prefix="lamella-files")
        self._free: queue.SimpleQueue[mmap.mmap | None] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(None)  # mapped on first use (fresh pages are costly), then kept
        self.direct = hasattr(os, "O_DIRECT")

    def write(self, path: Path, data: bytes | None) -> Future[None]:
        """Replace ``path`` with ``data`` (``None``: remove it), in the background."""
        if data is None:
            return self.write_from(path, lambda _: None, 0)

        def fill(buffer: memoryview) -> int:
            buffer[: len(data)] = data
            return len(data)

        return self.write_from(path, fill, len(data))

    def write_from(self, path: Path, fill: Fill, max_bytes: int, *, direct: bool = True) -> Future[None]:
        """Replace ``path`` with what ``fill`` writes, here, into a free buffer of ``max_bytes``; the
        file is written in the background.

        ``direct=False`` writes through the page cache: for a file that is read again soon.
        """
        padded = -(-max_bytes // ALIGNMENT) * ALIGNMENT
        buffer = self._free.get()
        if buffer is None or len(buffer) < padded:
            buffer = mmap.mmap(-1, max(padded, 16 << 20))
        try:
            with memoryview(buffer) as view:
                size = fill(view)
            return self._pool.submit(self._store, path, buffer, size, direct)
        except BaseException:
            self._free.put(buffer)
            raise

    def close(self, *, cancel: bool = False) -> None:
        """Wait for the writes under way; with ``cancel``, drop those not yet started."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    def _store(self, path: Path, buffer: mmap.mmap, size: int | None, direct: bool) -> None:
        try:
            if size is None:
                path.unlink(missing_ok=True)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
            with memoryview(buffer) as view:
                if not (direct and self.direct and self._write_direct(temporary, view, size)):
                    with temporary.open("wb") as file:
                        file.write(view[:size])
            os.replace(temporary, path)
        finally:
            self._free.put(buffer)

    def _write_direct(self, path: Path, view: memoryview, size: int) -> bool:
        """Write the first ``size`` bytes of ``view`` (a page-aligned buffer) with O_DIRECT.

        False (nothing written) where the filesystem refuses it.
        """
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            self.direct = False
            return False
        padded = -(-size // ALIGNMENT) * ALIGNMENT
        view[size:padded] = bytes(padded - size)
        try:
            written = 0
            while written < padded:
                written += os.write(descriptor, view[written:padded])
            os.ftruncate(descriptor, size)  # the padding is cut off again
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            self.direct = False  # opened, but direct writes refused (alignment): write normally
            return False
        finally:
            os.close(descriptor)
        return True
