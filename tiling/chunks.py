"""Neuroglancer precomputed chunk names: ``<x0>-<x1>_<y0>-<y1>_<z0>-<z1>`` (end exclusive).

Coordinates include the scale's ``voxel_offset``, so they are negative for an image placed at
negative coordinates: Neuroglancer and tensorstore then ask for names like ``-100--68_0-32_0-32``.
Each name has one spelling (see ``tiling.integers``). ``ChunkKey`` is the only place these
strings are parsed or formatted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tiling.errors import InvalidChunkKey
from tiling.integers import clip, parse_integer

MAX_COORDINATE = 9_999_999_999  # ten digits, far beyond any volume
# ASCII digits only (re's \d takes any script's); parse_integer checks each number's spelling.
_CHUNK_NAME = re.compile(r"(-?[0-9]+)-(-?[0-9]+)_(-?[0-9]+)-(-?[0-9]+)_(-?[0-9]+)-(-?[0-9]+)")
# The names that are canonical by construction (no leading zero, no "-0", at most ten digits): the
# hot path of every chunk request; anything else goes through parse_integer for its exact complaint.
_NUMBER = r"(0|-?[1-9][0-9]{0,9})"
_CANONICAL = re.compile(f"{_NUMBER}-{_NUMBER}_{_NUMBER}-{_NUMBER}_{_NUMBER}-{_NUMBER}")


@dataclass(frozen=True, slots=True)
class ChunkKey:
    """A chunk's box in voxels of one scale, stored as (z, y, x) begin/end pairs."""

    begin: tuple[int, int, int]
    end: tuple[int, int, int]

    @classmethod
    def parse(cls, name: str) -> ChunkKey:
        """The box ``name`` spells; InvalidChunkKey unless the name is canonical and the box not empty."""
        canonical = _CANONICAL.fullmatch(name)
        if canonical is not None:
            x0, x1, y0, y1, z0, z1 = map(int, canonical.groups())
        else:
            match = _CHUNK_NAME.fullmatch(name)
            if match is None:
                raise InvalidChunkKey(f"malformed chunk name {clip(name)} (expected x0-x1_y0-y1_z0-z1)")
            x0, x1, y0, y1, z0, z1 = (
                parse_integer(text, MAX_COORDINATE, InvalidChunkKey, "chunk coordinate") for text in match.groups()
            )
        if x0 >= x1 or y0 >= y1 or z0 >= z1:
            raise InvalidChunkKey(f"chunk name {clip(name)} names an empty box")
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
            if begin < 0 or begin >= size:
                raise InvalidChunkKey(f"chunk starts at {axis}={begin}, outside the {size} voxels")
            if begin % step:
                raise InvalidChunkKey(f"chunk start {axis}={begin} is not a multiple of {step}")
            expected = min(begin + step, size)
            if end != expected:
                raise InvalidChunkKey(f"chunk end {axis}={end} should be {expected}")
