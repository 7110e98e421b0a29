"""A moving image resampled on the reference image's grid through a non-linear transform.

Neuroglancer applies affine transforms itself; a thin-plate spline it cannot, so the server
resamples: ``WarpedVolume`` looks like an opened ``Volume`` (same levels as the reference,
dtype and channels of the moving image) and computes each requested region on demand,
which ``PrecomputedImage`` then encodes and caches like any stored chunk.
"""

from __future__ import annotations

import asyncio

import numpy as np
from scipy import ndimage

from tiling.omezarr import LevelGeometry, Volume
from tiling.transforms import ThinPlateSpline

# Reference voxels per axis whose moving position is computed exactly; the rest interpolate.
CONTROL_SPACING = 8


class WarpedVolume:
    """``moving`` seen on ``reference``'s levels through ``spline`` (reference → moving, nm)."""

    def __init__(
        self,
        moving: Volume,
        reference_geometry: list[LevelGeometry],
        spline: ThinPlateSpline,
        *,
        labels: bool = False,
    ) -> None:
        self.moving = moving
        self.geometry = reference_geometry
        self.spline = spline
        self.order = 0 if labels else 1  # label ids are picked, never blended
        self.dtype = moving.dtype
        self.num_channels = moving.num_channels

    async def read(self, level: int, zyx: tuple[slice, slice, slice]) -> np.ndarray:
        """``(c, z, y, x)`` of the moving image sampled at the reference voxel centres of ``zyx``."""
        target = self.geometry[level]
        coordinates, source_level = await asyncio.to_thread(self._moving_coordinates, target, zyx)
        source = self.moving.geometry[source_level]
        shape = coordinates.shape[1:]
        # The moving voxels the region needs, with one voxel of margin for interpolation.
        low = np.floor(np.nanmin(coordinates.reshape(3, -1), axis=1)).astype(int) - 1
        high = np.ceil(np.nanmax(coordinates.reshape(3, -1), axis=1)).astype(int) + 2
        low = np.maximum(low, 0)
        high = np.minimum(high, source.shape)
        out = np.zeros((self.num_channels, *shape), dtype=self.dtype)
        if np.any(high <= low):
            return out  # the region maps outside the moving image
        window = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
        data = await self.moving.read(source_level, window)  # type: ignore[arg-type]
        return await asyncio.to_thread(self._sample, data, coordinates - low[:, None, None, None], out)

    def _moving_coordinates(self, target: LevelGeometry, zyx: tuple[slice, slice, slice]) -> tuple[np.ndarray, int]:
        """Moving-level voxel coordinates (3, z, y, x) for each reference voxel centre, and that level.

        The spline is evaluated on a coarse lattice and interpolated in between: thin-plate
        splines are smooth, so this costs a fraction of a voxel and saves most of the work.
        """
        axes = [np.arange(region.start, region.stop, dtype=np.float64) for region in zyx]
        lattice = [
            np.unique(np.append(np.arange(region.start, region.stop, CONTROL_SPACING), region.stop - 1)).astype(
                np.float64
            )
            for region in zyx
        ]
        grid = np.stack(np.meshgrid(*lattice, indexing="ij"), axis=-1).reshape(-1, 3)
        physical_zyx = grid * target.voxel_size_nm + target.translation_nm
        moving_xyz = self.spline.inverse(physical_zyx[:, ::-1])
        moving_zyx = moving_xyz[:, ::-1].reshape(*(len(axis) for axis in lattice), 3)
        source_level = self._level_for(target)
        source = self.moving.geometry[source_level]
        moving_index = (moving_zyx - source.translation_nm) / source.voxel_size_nm
        # Interpolate the lattice at every voxel of the region (linear, separable).
        positions = [
            np.interp(indices, coarse, np.arange(len(coarse), dtype=np.float64))
            for indices, coarse in zip(axes, lattice, strict=True)
        ]
        mesh = np.meshgrid(*positions, indexing="ij")
        coordinates = np.stack(
            [ndimage.map_coordinates(moving_index[..., k], mesh, order=1, mode="nearest") for k in range(3)]
        )
        return coordinates, source_level

    def _level_for(self, target: LevelGeometry) -> int:
        """The coarsest moving level still at least as fine as the reference level (in x and y)."""
        wanted = min(target.voxel_size_nm[1:])
        chosen = 0
        for level in self.moving.geometry:
            if min(level.voxel_size_nm[1:]) <= wanted * 1.01:
                chosen = level.index
        return chosen

    def _sample(self, data: np.ndarray, coordinates: np.ndarray, out: np.ndarray) -> np.ndarray:
        # A voxel covers +-1/2 around its centre: clamp that margin onto the edge voxels and
        # mark what lies beyond as outside (also makes single-plane images one voxel thick).
        coords = coordinates.copy()
        outside = np.zeros(coords.shape[1:], dtype=bool)
        for axis in range(3):
            size = data.shape[axis + 1]
            outside |= (coords[axis] < -0.5) | (coords[axis] > size - 0.5)
            np.clip(coords[axis], 0, size - 1, out=coords[axis])
        wide = np.issubdtype(self.dtype, np.integer) and self.dtype.itemsize > 2
        work = np.float64 if wide or self.dtype == np.float64 else np.float32
        for channel in range(self.num_channels):
            values = data[channel].astype(work, copy=False)
            sampled = ndimage.map_coordinates(values, coords, order=self.order, mode="nearest")
            sampled[outside] = 0
            if np.issubdtype(self.dtype, np.integer):
                info = np.iinfo(self.dtype)
                sampled = np.clip(np.rint(sampled), info.min, info.max)
            out[channel] = sampled.astype(self.dtype)
        return out
