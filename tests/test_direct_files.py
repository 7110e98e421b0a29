"""Files written past the page cache: exact bytes, atomic replacement, and the buffered fallback."""

import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tiling.direct_files import ALIGNMENT, TEMPORARY_SUFFIX, DirectFiles

SIZES = [1, ALIGNMENT - 1, ALIGNMENT, ALIGNMENT + 1, 3 * ALIGNMENT + 17, (20 << 20) + 5]  # last: beyond the buffer


def write_all(files: DirectFiles, folder: Path) -> dict[Path, bytes]:
    """Every size, from three threads at once, through fewer buffers than files (each reused)."""
    rng = np.random.default_rng(1)
    written = {folder / "c" / str(size) / "0": rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in SIZES}
    with ThreadPoolExecutor(3) as pool:
        for future in list(pool.map(files.write, written, written.values())):
            future.result()
    return written


def test_exact_bytes_and_replacement(tmp_path: Path) -> None:
    files = DirectFiles(writers=2, buffers=2)
    try:
        written = write_all(files, tmp_path)
        for path, data in written.items():
            assert path.read_bytes() == data
        path = next(iter(written))
        files.write(path, b"shorter").result()  # a file written again is replaced whole
        assert path.read_bytes() == b"shorter"

        def fill(buffer: memoryview) -> int:  # contents produced in the caller's thread, in a free buffer
            buffer[:18] = b"made in the caller"
            return 18

        files.write_from(path, fill, 18).result()
        assert path.read_bytes() == b"made in the caller"
        files.write_from(path, fill, 18, direct=False).result()  # through the page cache
        assert path.read_bytes() == b"made in the caller"
        files.write_from(path, lambda buffer: None, 0).result()  # nothing to store (all fill value): no file
        assert not path.exists()
        files.write(path, None).result()  # and removing what is not there is fine
        files.write(path, b"").result()  # an empty file is a file
        assert path.read_bytes() == b""
    finally:
        files.close()
    assert not list(tmp_path.rglob(f"*{TEMPORARY_SUFFIX}"))


def test_a_failed_fill_gives_its_buffer_back(tmp_path: Path) -> None:
    files = DirectFiles(writers=1, buffers=1)
    try:
        def failing(buffer: memoryview) -> int:
            raise ValueError("bad block")

        for _ in range(2):  # with its only buffer lost, the second attempt would wait forever
            with pytest.raises(ValueError, match="bad block"):
                files.write_from(tmp_path / "x", failing, 10)
        files.write(tmp_path / "x", b"fine").result()
        assert (tmp_path / "x").read_bytes() == b"fine"
    finally:
        files.close()


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
def test_direct_where_the_filesystem_allows(tmp_path: Path) -> None:
    files = DirectFiles()
    try:
        write_all(files, tmp_path)
        assert files.direct  # ext4 / xfs under the checkout accept O_DIRECT
    finally:
        files.close()


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs mount: a real filesystem that refuses O_DIRECT (tmpfs accepts it since Linux 6.6)."""
    folder = tmp_path / "ramfs"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "ramfs", "ramfs", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("mounting ramfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_filesystem_refusing_o_direct_gets_ordinary_writes(ramfs: Path) -> None:
    files = DirectFiles()
    try:
        written = write_all(files, ramfs)
        assert not files.direct
        for path, data in written.items():
            assert path.read_bytes() == data
    finally:
        files.close()
