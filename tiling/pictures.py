"""Pictures of an image: one slice of a region as a JPEG (a tutorial's examples, thumbnails)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from tiling.encoding import encode_jpeg
from tiling.omezarr import Volume

MAX_SIDE = 640  # pixels: the coarsest level whose region fits is read, never more than this on a side


async def slice_picture(volume: Volume, lower: Sequence[int], upper: Sequence[int], window: Sequence[float],
                        max_side: int = MAX_SIDE, quality: int = 85) -> bytes:
    """The middle z slice of region [lower, upper) (level-0 voxels, x y z) as a grey JPEG, contrast from
    ``window``, read from the finest level at which it is at most ``max_side`` pixels on a side."""
    base = volume.geometry[0].voxel_size_nm
    chosen = volume.geometry[-1]
    for level in volume.geometry:
        fy, fx = level.voxel_size_nm[1] / base[1], level.voxel_size_nm[2] / base[2]
        if (upper[0] - lower[0]) / fx <= max_side and (upper[1] - lower[1]) / fy <= max_side:
            chosen = level
            break
    fz, fy, fx = (s / b for s, b in zip(chosen.voxel_size_nm, base, strict=True))
    z = min(int(((lower[2] + upper[2] - 1) / 2) / fz), chosen.shape[0] - 1)
    y0, y1 = int(lower[1] / fy), max(int(lower[1] / fy) + 1, min(int(np.ceil(upper[1] / fy)), chosen.shape[1]))
    x0, x1 = int(lower[0] / fx), max(int(lower[0] / fx) + 1, min(int(np.ceil(upper[0] / fx)), chosen.shape[2]))
    data = await volume.read(chosen.index, (slice(z, z + 1), slice(y0, y1), slice(x0, x1)))
    return await asyncio.to_thread(_encode, data[:1], window, quality)


def _encode(data: np.ndarray, window: Sequence[float], quality: int) -> bytes:
    low, high = float(window[0]), float(window[1])
    scaled = (data.astype(np.float32) - low) * (255.0 / max(high - low, 1e-6))
    return encode_jpeg(np.clip(scaled, 0, 255).astype(np.uint8), quality)
