"""A region of an image as a precomputed source of its own: what a volunteer's task view loads.

The region (level-0 voxels, x y z, upper exclusive) is widened at each scale to whole chunks of that scale's grid,
so a viewer of the cropped source fetches only chunks that meet the region. In x and y the grid is the image's
own; in z its chunks are at most ``THIN_DEPTH`` slices deep (and no deeper than the region), a divisor of the
stored chunk's depth, so that each lies within one stored chunk: a task view shows one slice, and a whole
64-slice chunk is eight times the bytes to send and to decode for it. Coarser scales are kept only while the
finer one needs more than ``FEW_CHUNKS`` chunks for a slice of the region: a viewer that has the few chunks of a
small region's finest scale shows all of it at any zoom, and fetches coarser ones only as stand-ins (each a
request more before the first image, on connections a browser opens only six of).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from typing import Any

from tiling.chunks import ChunkKey
from tiling.errors import InvalidChunkKey, InvalidKey, UnknownScale
from tiling.integers import clip

THIN_DEPTH = 8  # slices: a region chunk's largest depth
FEW_CHUNKS = 4  # chunks of one slice of the region at a scale that make coarser scales needless
REGION = re.compile(r"(0|[1-9][0-9]{0,8})(?:_(0|[1-9][0-9]{0,8})){5}", re.ASCII)


@dataclass(frozen=True)
class Region:
    lower: tuple[int, int, int]  # x y z
    upper: tuple[int, int, int]

    @classmethod
    def parse(cls, text: str) -> Region:
        """``x0_y0_z0_x1_y1_z1``; InvalidKey unless canonical decimal with lower < upper."""
        if REGION.fullmatch(text) is None:
            raise InvalidKey("a region is x0_y0_z0_x1_y1_z1 in voxels (canonical decimal)")
        values = [int(part) for part in text.split("_")]
        lower, upper = tuple(values[:3]), tuple(values[3:])
        if any(high <= low for low, high in zip(lower, upper, strict=True)):
            raise InvalidKey("a region needs lower < upper on every axis")
        return cls(lower, upper)  # type: ignore[arg-type]

    def format(self) -> str:
        return "_".join(str(v) for v in (*self.lower, *self.upper))

    def check_within(self, size_xyz: list[int]) -> None:
        if any(high > size for high, size in zip(self.upper, size_xyz, strict=True)):
            raise InvalidKey(f"the region reaches outside the image (x y z sizes {size_xyz})")


def region_info(info: dict[str, Any], region: Region) -> dict[str, Any]:
    """``info`` with each scale cropped to the whole chunks that meet ``region``."""
    cropped = copy.deepcopy(info)
    base = info["scales"][0]["resolution"]
    for scale in cropped["scales"]:
        factor = [r / b for r, b in zip(scale["resolution"], base, strict=True)]
        chunk = list(scale["chunk_sizes"][0])
        depth = math.ceil(region.upper[2] / factor[2]) - math.floor(region.lower[2] / factor[2])
        chunk[2] = thin_depth(chunk[2], depth)
        scale["chunk_sizes"] = [chunk]
        size = scale["size"]
        low, high = [], []
        for lo, hi, f, c, s in zip(region.lower, region.upper, factor, chunk, size, strict=True):
            first = math.floor(lo / f) // c * c
            low.append(min(first, max(s - 1, 0) // c * c))
            high.append(max(min(math.ceil(math.ceil(hi / f) / c) * c, s), low[-1] + 1))
        scale["voxel_offset"] = [o + lo for o, lo in zip(scale["voxel_offset"], low, strict=True)]
        scale["size"] = [h - lo for h, lo in zip(high, low, strict=True)]
    kept = cropped["scales"][:1]
    while len(kept) < len(cropped["scales"]) and _slice_chunks(kept[-1]) > FEW_CHUNKS:
        kept.append(cropped["scales"][len(kept)])
    cropped["scales"] = kept
    return cropped


def _slice_chunks(scale: dict[str, Any]) -> int:
    (cx, cy, _), (sx, sy, _) = scale["chunk_sizes"][0], scale["size"]
    return math.ceil(sx / cx) * math.ceil(sy / cy)


def thin_depth(stored: int, depth: int) -> int:
    """The depth of a region's chunks: the largest divisor of the stored depth up to ``THIN_DEPTH`` and the
    region's own depth (at that scale)."""
    limit = max(1, min(stored, THIN_DEPTH, depth))
    return max(d for d in range(1, limit + 1) if stored % d == 0)


def check_chunk(cropped: dict[str, Any], scale_key: str, name: str) -> tuple[int, int, int]:
    """The chunk shape (z, y, x) of the cropped scale, once chunk ``name`` of ``scale_key`` lies within it
    (else InvalidChunkKey; UnknownScale for a scale the region's source does not have)."""
    scale = next((s for s in cropped["scales"] if s["key"] == scale_key), None)
    if scale is None:
        raise UnknownScale(f"the region's source has no scale {clip(scale_key)}")
    key = ChunkKey.parse(name)
    for axis, begin, end, offset, size in zip("xyz", reversed(key.begin), reversed(key.end), scale["voxel_offset"],
                                              scale["size"], strict=True):
        if begin < offset or end > offset + size:
            raise InvalidChunkKey(f"chunk {name} is outside the region on {axis}")
    x, y, z = scale["chunk_sizes"][0]
    return z, y, x
