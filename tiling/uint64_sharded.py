"""Neuroglancer's uint64 sharded format, written one whole shard at a time. Pure code: no database.

Format: upstream ``src/datasource/precomputed/sharded.md``. Keys go through the ``identity`` hash, so a key's
minishard is bits ``[preshift, preshift + minishard_bits)`` of the key and its shard the bits above: a shard
holds one aligned range of ``2 ** (preshift + minishard_bits)`` keys and its minishards are consecutive
sub-ranges. Given keys in ascending order, ``ShardWriter`` finishes each shard as soon as the keys pass its
range, so what is held at any time is one shard; ``ShardSizer`` picks the widest range whose fullest shard
stays within a byte budget, from one pass over the keys and their sizes.

Layout of one shard file: the shard index (``2 ** minishard_bits`` pairs of uint64le [start, end) of each
minishard index, relative to the end of the shard index), then per minishard its chunks in key order and
its index (uint64le ``[3, n]``: delta-encoded keys, start offsets delta-encoded from the end of the previous
chunk, sizes).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

MINISHARD_KEY_BITS = 8  # about 256 chunks in one minishard (an index of 6 KiB), where keys are dense
MAX_MINISHARD_BITS = 14  # a shard index of at most 256 KiB
SHARD_BYTES = 4 << 20  # what a shard may hold, when the keys allow it
MIN_SHARD_KEY_BITS = 8  # the narrowest shard covers 256 keys
MAX_SHARD_KEY_BITS = 40
_WIDTHS = tuple(range(MIN_SHARD_KEY_BITS, MAX_SHARD_KEY_BITS + 1))  # shard widths considered (log2 keys)


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """A sharding specification with the identity hash."""

    preshift_bits: int
    minishard_bits: int
    shard_bits: int

    @property
    def key_bits(self) -> int:
        return self.preshift_bits + self.minishard_bits

    def info(self) -> dict[str, Any]:
        """The ``sharding`` member of an ``info`` file."""
        return {"@type": "neuroglancer_uint64_sharded_v1", "hash": "identity", "preshift_bits": self.preshift_bits,
                "minishard_bits": self.minishard_bits, "shard_bits": self.shard_bits,
                "minishard_index_encoding": "raw", "data_encoding": "raw"}

    def shard_of(self, key: int) -> int:
        return (key >> self.key_bits) & ((1 << self.shard_bits) - 1)

    def minishard_of(self, key: int) -> int:
        return (key >> self.preshift_bits) & ((1 << self.minishard_bits) - 1)

    def file_name(self, shard: int) -> str:
        """``<shard>.shard``: lower-case hexadecimal, zero-padded to ``ceil(shard_bits / 4)`` digits."""
        return f"{shard:0{(self.shard_bits + 3) // 4}x}.shard"


class ShardSizer:
    """Finds the shard layout from keys in ascending order and their sizes: for each candidate width (log2 of
    the keys a shard spans), the bytes and chunks of its fullest shard. A key costs one addition; each finished
    range of the narrowest width a few more."""

    def __init__(self, budget: int = SHARD_BYTES) -> None:
        self.budget = budget
        self.max_key = 0
        self._bucket = -1
        self._sum = 0
        self._count = 0
        self._open = [[-1, 0, 0] for _ in _WIDTHS]  # per width: [its range being summed, bytes, chunks]
        self._fullest = [[0, 0] for _ in _WIDTHS]  # per width: [most bytes, most chunks] in one shard

    def add(self, key: int, size: int) -> None:
        bucket = key >> MIN_SHARD_KEY_BITS
        if bucket != self._bucket:
            self._close()
            self._bucket = bucket
        self._sum += size
        self._count += 1
        self.max_key = max(self.max_key, key)

    def _close(self) -> None:
        if self._bucket < 0:
            return
        for i, width in enumerate(_WIDTHS):
            entry, fullest = self._open[i], self._fullest[i]
            above = self._bucket >> (width - MIN_SHARD_KEY_BITS)
            if above != entry[0]:
                entry[:] = [above, 0, 0]
            entry[1] += self._sum
            entry[2] += self._count
            fullest[0], fullest[1] = max(fullest[0], entry[1]), max(fullest[1], entry[2])
        self._sum = self._count = 0

    def spec(self) -> ShardSpec:
        """The widest shards whose fullest (with its indexes) stays within the budget, else the narrowest; as
        many minishards as put about ``2 ** MINISHARD_KEY_BITS`` chunks in each."""
        self._close()
        self._bucket = -1
        chosen = _WIDTHS[0], self._fullest[0][1]
        for width, (size, chunks) in zip(_WIDTHS, self._fullest, strict=True):
            minishards = _minishard_bits(width, chunks)
            if size + 24 * chunks + (16 << minishards) <= self.budget:
                chosen = width, chunks
        width, chunks = chosen
        minishards = _minishard_bits(width, chunks)
        return ShardSpec(width - minishards, minishards, max(0, self.max_key.bit_length() - width))


def _minishard_bits(width: int, chunks: int) -> int:
    return min(width, MAX_MINISHARD_BITS, max(0, (chunks - 1).bit_length() - MINISHARD_KEY_BITS))


class ShardWriter:
    """Chunks in ascending key order in, finished shard files out (``(file name, bytes)``). A shard is encoded as
    its chunks arrive: what is held is its bytes so far and two numbers per chunk of the current minishard."""

    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        self._last = -1
        self._shard = -1
        self._body = bytearray()  # the shard after its index: chunks, and the finished minishards' indexes
        self._index = np.zeros((1 << spec.minishard_bits, 2), dtype="<u8")
        self._minishard = -1
        self._end = 0  # where the current minishard's last chunk ends in the body (0 before its first)
        self._keys = array("Q")
        self._starts = array("Q")  # per chunk, its start less the end of the chunk before it in the minishard
        self._sizes = array("Q")

    def add(self, key: int, data: bytes, before: bytes = b"") -> Iterator[tuple[str, bytes]]:
        """Add one chunk; yields the previous shard when this key starts a new one. ``before`` is stored just
        ahead of the chunk, outside it (a multi-resolution mesh's fragments precede its manifest)."""
        if key <= self._last:
            raise ValueError(f"keys must ascend: {key} after {self._last}")
        self._last = key
        shard = key >> self.spec.key_bits
        if shard != self._shard:
            yield from self.finish()
            self._shard = shard
        minishard = self.spec.minishard_of(key)
        if minishard != self._minishard:
            self._close_minishard()
            self._minishard, self._end = minishard, 0
        self._body += before
        start = len(self._body)
        self._keys.append(key)
        self._starts.append(start - self._end)
        self._sizes.append(len(data))
        self._body += data
        self._end = len(self._body)

    def _close_minishard(self) -> None:
        """Append the current minishard's index: keys delta-encoded, starts delta-encoded from the end of the
        chunk before (the first from the start of the body), sizes."""
        if not self._keys:
            return
        table = np.zeros((3, len(self._keys)), dtype="<u8")
        table[0] = np.diff(np.frombuffer(self._keys, dtype=np.uint64), prepend=np.uint64(0))
        table[1] = np.frombuffer(self._starts, dtype=np.uint64)
        table[2] = np.frombuffer(self._sizes, dtype=np.uint64)
        start = len(self._body)
        self._body += table.tobytes()
        self._index[self._minishard] = (start, len(self._body))
        self._keys, self._starts, self._sizes = array("Q"), array("Q"), array("Q")

    def finish(self) -> Iterator[tuple[str, bytes]]:
        """The shard being filled, if any."""
        self._close_minishard()
        if self._body:
            name = self.spec.file_name(self.spec.shard_of(self._shard << self.spec.key_bits))
            data = self._index.tobytes() + self._body
            self._body = bytearray()
            self._index[:] = 0
            yield name, data
        self._minishard = -1
