"""Whole files written once, past the page cache (``O_DIRECT``) where the filesystem allows it.

An import writes every level-0 shard exactly once and nothing reads it soon. Written through
the page cache, each 4 KiB takes a cache page: on a VM whose balloon hands freed memory back to
the host that costs about 2 s of CPU per GB on first use (measured on our CI machines with
``dd`` of 1 GiB: 2.4 s of system time buffered, 0.09 s direct), and a large import pushes its
own input out of the cache. Where ``O_DIRECT`` is refused (tmpfs, some network and FUSE
filesystems) files are written the ordinary way, as are those a caller asks to keep cached.

Each thread that writes keeps one page-aligned buffer: a file's contents are produced straight
into it (``write_from``; ``tiling.shards`` encodes a shard there) and written from it.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable
from pathlib import Path

Fill = Callable[[memoryview], int | None]  # writes a file into the buffer: its size (None: no file)

ALIGNMENT = 4096  # a multiple of the logical block size O_DIRECT requires on common devices
TEMPORARY_SUFFIX = ".__lamella"  # a file being written; renamed into place when complete


class DirectFiles:
    """Writes whole files, each replacing its destination atomically; from any number of threads."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.direct = hasattr(os, "O_DIRECT")

    def write(self, path: Path, data: bytes | None) -> None:
        """Replace ``path`` with ``data`` (``None``: remove it)."""
        if data is None:
            self.write_from(path, lambda _: None, 0)
            return

        def fill(buffer: memoryview) -> int:
            buffer[: len(data)] = data
            return len(data)

        self.write_from(path, fill, len(data))

    def write_from(self, path: Path, fill: Fill, max_bytes: int, *, direct: bool = True) -> None:
        """Replace ``path`` with what ``fill`` writes into this thread's buffer (``max_bytes`` at most).

        ``direct=False`` writes through the page cache: for a file that is read again soon.
        """
        buffer = self._aligned(-(-max_bytes // ALIGNMENT) * ALIGNMENT)
        with memoryview(buffer) as view:
            size = fill(view)
            if size is None:
                path.unlink(missing_ok=True)
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
            if not (direct and self.direct and self._write_direct(temporary, view, size)):
                with temporary.open("wb") as file:
                    file.write(view[:size])
        os.replace(temporary, path)

    def _aligned(self, size: int) -> mmap.mmap:
        """This thread's page-aligned buffer of at least ``size`` bytes (kept: fresh pages are costly)."""
        buffer: mmap.mmap | None = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < size:
            buffer = self._local.buffer = mmap.mmap(-1, max(size, 16 << 20))
        return buffer

    def _write_direct(self, path: Path, view: memoryview, size: int) -> bool:
        """Write the first ``size`` bytes of ``view`` (this thread's aligned buffer) with O_DIRECT.

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
