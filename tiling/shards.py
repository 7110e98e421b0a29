"""Zarr v3 shards encoded whole, straight into the buffer their file is written from.

A block that is exactly one shard (every level-0 block, and level 1 reduced from it in memory)
is encoded here rather than by tensorstore: each inner chunk is copied out of the block into a
cache-sized array and compressed by zstd (imagecodecs, which releases the GIL) directly into the
caller's buffer. Through tensorstore and a memory store the same shard costs about 1.7x the CPU
(its encoder copies every chunk twice more) and arrives as bytes that are copied three times
before they reach the file.

The layout is the one ``tiling.pyramid`` declares for its arrays: ``sharding_indexed`` with inner
codecs ``bytes`` (little endian) and ``zstd``, and at the end an index of (offset, nbytes) uint64
pairs followed by its crc32c. A chunk equal to the fill value (all zero bytes) is not stored, as
tensorstore and zarr-python leave it out.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import google_crc32c
import imagecodecs
import numpy as np

MISSING = 2**64 - 1  # index entry of a chunk that is not stored
INDEX_CHECKSUM_BYTES = 4


def zstd_bound(size: int) -> int:
    """The largest zstd frame of ``size`` input bytes (ZSTD_COMPRESSBOUND)."""
    small = (128 << 10) - size >> 11 if size < 128 << 10 else 0
    return size + (size >> 8) + small


@dataclass(frozen=True)
class ShardLayout:
    """How one array's shards are laid out: shard and inner chunk shapes, dtype and zstd level."""

    shard: tuple[int, ...]
    inner: tuple[int, ...]
    dtype: np.dtype
    zstd_level: int

    def __post_init__(self) -> None:
        if any(s % c for s, c in zip(self.shard, self.inner, strict=True)):
            raise ValueError(f"shard {self.shard} is not a whole number of inner chunks {self.inner}")

    @property
    def grid(self) -> tuple[int, ...]:
        """Inner chunks per shard, per axis."""
        return tuple(s // c for s, c in zip(self.shard, self.inner, strict=True))

    @property
    def max_bytes(self) -> int:
        """The largest encoded shard: every chunk at zstd's bound, and the index."""
        chunks = math.prod(self.grid)
        chunk_bytes = math.prod(self.inner) * np.dtype(self.dtype).itemsize
        return chunks * zstd_bound(chunk_bytes) + chunks * 16 + INDEX_CHECKSUM_BYTES

    @functools.cached_property
    def _fill_frame_bytes(self) -> int:
        """The size of a chunk of fill value once compressed: only a chunk this small may be one."""
        return len(imagecodecs.zstd_encode(np.zeros(self.inner, self.dtype), level=self.zstd_level))

    def encode(self, block: np.ndarray, out: memoryview) -> int:
        """Encode ``block`` into ``out`` and return the bytes used (0: every chunk is fill value, no shard).

        ``block`` is the shard's part of the array: the whole shard, or less at the array's far edge.
        ``out`` must hold ``max_bytes``.
        """
        if block.ndim != len(self.shard) or any(b > s for b, s in zip(block.shape, self.shard, strict=True)):
            raise ValueError(f"block {block.shape} does not fit in shard {self.shard}")
        chunk = np.empty(self.inner, np.dtype(self.dtype).newbyteorder("<"))
        raw = chunk.reshape(-1).view(np.uint8)
        index = np.full((math.prod(self.grid), 2), MISSING, "<u8")
        offset = 0
        for number, position in enumerate(np.ndindex(*self.grid)):
            part = tuple(slice(p * c, min((p + 1) * c, b))
                         for p, c, b in zip(position, self.inner, block.shape, strict=True))
            if any(s.start >= s.stop for s in part):
                continue  # beyond the array's edge
            source = block[part]
            if source.shape != self.inner:
                chunk.fill(0)  # the edge of the array: the rest of the chunk is fill value
            chunk[tuple(slice(0, n) for n in source.shape)] = source
            size = len(imagecodecs.zstd_encode(chunk, level=self.zstd_level, out=out[offset:]))
            if size == self._fill_frame_bytes and not raw.any():
                continue  # compressed first: testing every chunk for zeros would read it once more
            index[number] = offset, size
            offset += size
        if offset == 0:
            return 0
        index_bytes = index.tobytes()
        end = offset + len(index_bytes)
        out[offset:end] = index_bytes
        out[end:end + INDEX_CHECKSUM_BYTES] = google_crc32c.value(index_bytes).to_bytes(INDEX_CHECKSUM_BYTES, "little")
        return end + INDEX_CHECKSUM_BYTES
