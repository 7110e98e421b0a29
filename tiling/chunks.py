"""Neuroglancer precomputed chunk names: ``<x0>-<x1>_<y0>-<y1>_<z0>-<z1>`` (end exclusive).

``ChunkKey`` is the only place these strings are parsed or formatted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tiling.errors import InvalidChunkKey

_CHUNK_NAME = re.compile(r"^(\d{1,10})-(\d{1,10})_(\d{1,10})-(\d{1,10})_(\d{1,10})-(\d{1,10})$")


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """A chunk's box in voxels of one scale, stored as (z, y, x) begin/end pairs."""

    begin: tuple[int, int, int]
    end: tuple[int, int, int]

    @classmethod
    def parse(cls, name: str) -> ChunkKey:
        match = _CHUNK_NAME.match(name)
        if match is None:
            raise InvalidChunkKey(f"malformed chunk name {name!r} (expected x0-x1_y0-y1_z0-z1)")
        x0, x1, y0, y1, z0, z1 = (int(v) for v in match.groups())
        return cls(begin=(z0, y0, x0), end=(z1, y1, x1))

    def format(self) -> str:
        (z0, y0, x0), (z1, y1, x1) = self.begin, self.end
        return f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}"

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(b, e) for b, e in zip(self.begin, self.end, strict=True))  # type: ignore[return-value]

    def check(self, shape: tuple[int, int, int], chunk: tuple[int, int, int]) -> None:
        """Require the box to be one whole grid chunk of a scale, clipped at the volume edge."""
        for axis, begin, end, size, step in zip("zyx", self.begin, self.end, shape, chunk, strict=True):
            if begin >= size:
                raise InvalidChunkKey(f"chunk starts at {axis}={begin}, outside the {size} voxels")
            if begin % step:
                raise InvalidChunkKey(f"chunk start {axis}={begin} is not a multiple of {step}")
            expected = min(begin + step, size)
            if end != expected:
                raise InvalidChunkKey(f"chunk end {axis}={end} should be {expected}")
