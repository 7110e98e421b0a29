"""A deterministic, vEM-like demo volume made offline: cells, membranes, mitochondria, vesicles.

Intensities mimic an inverted-contrast FIB-SEM stack: bright cytoplasm, dark membranes,
darker mitochondria with cristae, and small dark vesicles, plus shot-like noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

DEMO_SHAPE = (256, 512, 512)  # z, y, x
DEMO_VOXEL_NM = (8.0, 8.0, 8.0)
CELL_IDS = 1  # the demo's segmentation: cells are 1, 2, ...
MITOCHONDRION_IDS = 1001  # and mitochondria 1001, 1002, ...


def _upsample(field: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    factors = [s / f for s, f in zip(shape, field.shape, strict=True)]
    return ndimage.zoom(field, factors, order=1, mode="nearest", grid_mode=True)[
        tuple(slice(0, s) for s in shape)
    ].astype(np.float32)


def _membrane_distance(
    shape: tuple[int, ...], rng: np.random.Generator, cells: int, labels: np.ndarray | None = None
) -> np.ndarray:
    """Distance (voxels) from each voxel to the nearest Voronoi cell boundary; with ``labels``, also writes
    each voxel's cell there (``CELL_IDS`` onwards, by nearest seed: the membrane is shared out between them)."""
    coarse = tuple(max(1, s // 4) for s in shape)
    seeds = rng.uniform(0, 1, size=(cells, 3)) * np.array(coarse)
    grid = np.stack(np.meshgrid(*[np.arange(s) + 0.5 for s in coarse], indexing="ij"), axis=-1)
    distances, _ = cKDTree(seeds).query(grid.reshape(-1, 3), k=2)
    gap = ((distances[:, 1] - distances[:, 0]) / 2 * 4).reshape(coarse)
    if labels is not None:  # owners at half resolution: cell surfaces in steps of two voxels
        half = tuple(-(-s // 2) for s in shape)
        points = np.stack(np.meshgrid(*[(np.arange(s) + 0.5) / 2 for s in half], indexing="ij"), axis=-1)
        _, owner = cKDTree(seeds).query(points.reshape(-1, 3), k=1, workers=-1)
        owner = (owner.astype(np.uint32) + CELL_IDS).reshape(half)
        labels[...] = owner.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: shape[0], : shape[1], : shape[2]]
    return _upsample(gap.astype(np.float32), shape)


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    coarse = tuple(max(2, s // 4) for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / 4)
    field /= field.std() or 1
    return _upsample(field, shape)


def _add_mitochondria(
    volume: np.ndarray, rng: np.random.Generator, count: int, mask: np.ndarray | None, labels: np.ndarray | None
) -> None:
    depth, height, width = volume.shape
    for number in range(count):
        radii = rng.uniform([10, 14, 30], [18, 24, 60])
        centre = rng.uniform([0, 0, 0], [depth, height, width])
        angle = rng.uniform(0, np.pi)
        lo = np.maximum(0, (centre - radii.max() - 2).astype(int))
        hi = np.minimum(volume.shape, (centre + radii.max() + 2).astype(int))
        if np.any(hi <= lo):
            continue
        z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        dz, dy, dx = z - centre[0], y - centre[1], x - centre[2]
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        r = np.sqrt((dz / radii[0]) ** 2 + (v / radii[1]) ** 2 + (u / radii[2]) ** 2)
        inside = r < 1.0
        envelope = np.abs(r - 1.0) < 0.08
        cristae = (np.sin(u / 3.0) > 0.6) & (r < 0.85)
        box = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        box[inside] = 105
        box[cristae & inside] = 150
        box[envelope] = 55
        if mask is not None:
            mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] |= inside | envelope
        if labels is not None:
            labels[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside | envelope] = MITOCHONDRION_IDS + number


def _add_vesicles(volume: np.ndarray, rng: np.random.Generator, count: int) -> None:
    depth, height, width = volume.shape
    for _ in range(count):
        radius = rng.uniform(3, 7)
        centre = rng.uniform([0, 0, 0], [depth, height, width])
        lo = np.maximum(0, (centre - radius - 2).astype(int))
        hi = np.minimum(volume.shape, (centre + radius + 2).astype(int))
        z, y, x = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        r = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
        box = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        box[np.abs(r - radius) < 1.2] = 70


def make_demo_volume(
    shape: tuple[int, int, int] = DEMO_SHAPE,
    seed: int = 20261121,
    mitochondria: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """The demo EM volume as a (z, y, x) uint8 array; same seed, same bytes.

    With ``mitochondria`` (a boolean array of ``shape``), also marks where the mitochondria are; with
    ``labels`` (uint32 of ``shape``), writes the segmentation the volume was drawn from: every voxel is in a
    cell (ids from ``CELL_IDS``) or in a mitochondrion (ids from ``MITOCHONDRION_IDS``).
    """
    rng = np.random.default_rng(seed)
    cells = max(8, int(np.prod(shape) / 1.2e6))
    gap = _membrane_distance(shape, rng, cells, labels)
    volume = 185 + 14 * _smooth_noise(shape, rng, sigma=10)
    volume -= 120 * np.exp(-((gap / 1.6) ** 2))  # membranes about 3 voxels thick
    _add_mitochondria(volume, rng, count=max(4, cells), mask=mitochondria, labels=labels)
    _add_vesicles(volume, rng, count=max(20, cells * 20))
    volume = ndimage.gaussian_filter(volume, 0.7)
    volume += rng.normal(0, 9, size=shape).astype(np.float32)
    return np.clip(volume, 0, 255).astype(np.uint8)


# The light-microscopy modality: its own grid, placed into the EM by this known affine (nm, x y z).
FLUORESCENCE_VOXEL_NM = (40.0, 24.0, 24.0)  # z, y, x
FLUORESCENCE_SHAPE = (56, 200, 200)  # z, y, x


def fluorescence_affine() -> np.ndarray:
    """Fluorescence physical nm -> EM physical nm: rotated 12 degrees about z, scaled 1.04, shifted."""
    angle = np.deg2rad(12.0)
    scale = 1.04
    matrix = np.eye(4)
    matrix[:2, :2] = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix[2, 2] = scale
    matrix[:3, 3] = [420.0, -380.0, -60.0]
    return matrix


def make_demo_fluorescence(
    mitochondria: np.ndarray, em_voxel_nm: tuple[float, float, float] = DEMO_VOXEL_NM
) -> np.ndarray:
    """A mitochondrial stain seen by a light microscope, on its own grid: (z, y, x) uint16.

    The EM's mitochondria are blurred (a point-spread function about 100 nm wide laterally),
    then sampled at each fluorescence voxel centre mapped into the EM through
    ``fluorescence_affine``, plus background and noise.
    """
    rng = np.random.default_rng(7)
    # Blur at half resolution: the PSF is far wider than an EM voxel, and it is 8x cheaper.
    half = mitochondria.reshape(
        mitochondria.shape[0] // 2, 2, mitochondria.shape[1] // 2, 2, mitochondria.shape[2] // 2, 2
    ).mean(axis=(1, 3, 5), dtype=np.float32)
    signal = ndimage.gaussian_filter(half, sigma=(5.0, 3.0, 3.0))
    half_voxel = np.asarray(em_voxel_nm) * 2
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in FLUORESCENCE_SHAPE], indexing="ij"))
    physical_xyz = (grid.reshape(3, -1).T * FLUORESCENCE_VOXEL_NM)[:, ::-1]
    em_xyz = physical_xyz @ fluorescence_affine()[:3, :3].T + fluorescence_affine()[:3, 3]
    # Half-resolution voxel centres sit at (2i + 0.5) EM voxels.
    index = (em_xyz[:, ::-1] / half_voxel - 0.25).T
    sampled = ndimage.map_coordinates(signal, index, order=1, mode="constant", cval=0.0)
    image = 120 + 3200 * sampled.reshape(FLUORESCENCE_SHAPE)
    image = rng.poisson(np.clip(image, 0, None)).astype(np.float64) + rng.normal(0, 8, FLUORESCENCE_SHAPE)
    return np.clip(image, 0, 65535).astype(np.uint16)
