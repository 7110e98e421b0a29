"""Archives written as a stream: files in, bytes out, nothing kept but the file at hand. Pure code.

Tar (POSIX pax): each member is a header, its bytes and padding, so the archive needs nothing of earlier
members. Zip: Python's ``zipfile`` writing to a stream it cannot seek (local headers, data, then the central
directory at the end), stored without compression; the central directory holds one entry per member, which
is why the folders written here keep their members few (``annotations.annotation_folders``).
"""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


def tar_stream(files: Iterable[tuple[str, bytes]], mtime: float | None = None) -> Iterator[bytes]:
    """A tar archive of ``files`` (path, bytes), member by member."""
    stamp = int(time.time() if mtime is None else mtime)
    written = 0
    for path, data in files:
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mtime = stamp
        info.mode = 0o644
        header = info.tobuf(format=tarfile.PAX_FORMAT)
        padding = bytes(-len(data) % BLOCK)
        written += len(header) + len(data) + len(padding)
        yield header
        yield data
        if padding:
            yield padding
    end = 2 * BLOCK
    yield bytes(end + (-(written + end) % RECORD))


class _Sink(io.RawIOBase):
    """Collects what zipfile writes until it is taken."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        taken = b"".join(self._parts)
        self._parts.clear()
        return taken


def zip_stream(files: Iterable[tuple[str, bytes]], mtime: float | None = None) -> Iterator[bytes]:
    """A zip archive (ZIP64 where sizes or counts need it) of ``files``, member by member."""
    stamp = time.localtime(time.time() if mtime is None else mtime)[:6]
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path, data in files:
            info = zipfile.ZipInfo(path, date_time=stamp)
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
            yield sink.take()
    yield sink.take()
