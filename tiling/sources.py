"""Input images for import: every common vEM format, any size, read by region.

``open_source`` turns a file, folder, glob or ``zarr://``-style URL into a source: a (z, y, x) or
(y, x) array with ``shape``, ``dtype`` (native byte order), ``voxel_size_nm`` (same axis order, or
None when the file records none), ``read(region)``, ``close()`` and ``warnings``. No source ever
decodes a whole large image; problems become one-line ImportProblems naming the file.

Formats: TIFF/BigTIFF/OME-TIFF (``TiffStackSource``), folders or globs of 2D TIFF/PNG/JPEG slices
(``SliceFolderSource``), large 2D images via libvips (``VipsImageSource``: PNG, JPEG, ... and
compressed 2D TIFF montages of ``VIPS_MIN_PIXELS`` or more), MRC (``MrcSource``),
Zarr v2/v3, OME-Zarr, N5 and Neuroglancer precomputed (``TensorstoreSource``).
"""

from __future__ import annotations

import glob
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import tifffile

from tiling.errors import ImportProblem
from tiling.pyramid import intensity_window
from tiling.source_formats import (
    TENSORSTORE_SCHEMES,
    MrcSource,
    Region,
    RegionSource,
    TensorstoreSource,
    TiffStackSource,
    VipsImageSource,
    check_dtype,
    grey_from_samples,
    open_tiff,
    problem,
    tiff_voxel_size,
    volume_driver,
)

__all__ = [
    "ArraySource",
    "MrcSource",
    "RegionSource",
    "RescaledSource",
    "SliceFolderSource",
    "Source",
    "TensorstoreSource",
    "TiffStackSource",
    "VipsImageSource",
    "open_source",
    "percentile_window",
]

TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".tf8", ".tf2"}
SLICE_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}
MRC_SUFFIXES = {".mrc", ".mrcs", ".rec", ".map", ".st", ".ali", ".ccp4"}
VIPS_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".jp2", ".j2k", ".jpx", ".webp", ".jxl", ".gif", ".pgm", ".pnm", ".ppm",
    ".fits", ".fit", ".v", ".vips", ".heic", ".avif",
}  # fmt: skip
ARCHIVE_SUFFIXES = {".zip", ".gz", ".bz2", ".xz", ".zst", ".tar", ".tgz", ".7z", ".rar"}
PIL_DTYPES = {
    "L": np.uint8, "P": np.uint8, "1": np.uint8, "LA": np.uint8, "RGB": np.uint8, "RGBA": np.uint8,
    "I;16": np.uint16, "I;16L": np.uint16, "I;16B": np.uint16, "I;16N": np.uint16, "I": np.int32, "F": np.float32,
}  # fmt: skip
PIL_SAMPLES = {"LA": 2, "RGB": 3, "P": 3, "RGBA": 4}


class Source(Protocol):
    """What ``open_source`` returns and ``write_pyramid`` reads."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    @property
    def voxel_size_nm(self) -> tuple[float, ...] | None: ...

    @property
    def warnings(self) -> list[str]: ...

    def read(self, region: tuple[slice, ...]) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass
class ArraySource:
    """An in-memory array (the demo, tests)."""

    array: np.ndarray
    voxel_size_nm: tuple[float, ...] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        return self.array[region]

    def close(self) -> None:
        pass


def natural_key(path: Path) -> list[object]:
    """Sort key putting s2 before s10 (ASCII digit runs: a name part such as "²" is text, not a number)."""
    parts = re.split(r"([0-9]+)", str(path))
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(parts)]


class SliceFolderSource(RegionSource):
    """A folder (or glob) of 2D TIFF/PNG/JPEG slices, in natural sort order, as one (z, y, x) stack.

    Every slice's header is checked when opened, so a slice of another size or type is reported
    before anything is written. TIFF slices are read by region; PNG/JPEG slices are decoded whole,
    once per row band (see RegionSource).
    """

    _band_cache = True

    def __init__(self, paths: list[Path], origin: str) -> None:
        super().__init__(origin)
        if not paths:
            raise problem(origin, "no TIFF or PNG slices found")
        self.paths = sorted(paths, key=natural_key)
        shape, dtype = _slice_header(self.paths[0])
        for path in self.paths[1:]:
            other_shape, other_dtype = _slice_header(path)
            if (other_shape, other_dtype) != (shape, dtype):
                raise problem(path, f"slice is {other_shape} {other_dtype}, the stack is {shape} {dtype}")
        check_dtype(self.paths[0], dtype)
        self.shape = (len(self.paths), *shape)
        self.dtype = dtype
        self.voxel_size_nm = None
        if self.paths[0].suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(self.paths[0]) as tiff:
                notes: list[str] = []
                yx = tiff_voxel_size(tiff, tiff.series[0], 2, notes)
            if yx:
                self.voxel_size_nm = (yx[1], *yx)
                self.warnings += [*notes, "slice files record no z spacing; assumed equal to x"]

    def _read(self, box: Region) -> np.ndarray:
        z, y, x = box
        return np.stack([_read_slice(path, y, x) for path in self.paths[z]])


def _slice_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a 2D slice without decoding its pixels."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(path) as tiff:
                series = tiff.series[0]
                shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
            if "S" in axes and shape[axes.index("S")] in (2, 3, 4):  # RGB: must be grey, checked when read
                shape = tuple(n for n, axis in zip(shape, axes, strict=True) if axis != "S")
        else:
            from PIL import Image  # PIL.UnidentifiedImageError is an OSError

            with Image.open(path) as image:
                if image.mode not in PIL_DTYPES:
                    raise problem(path, f"unsupported image mode {image.mode}")
                shape, dtype = (image.height, image.width), np.dtype(PIL_DTYPES[image.mode])
    except ImportProblem:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, EOFError) as error:
        raise problem(path, "not a readable image", error) from None
    if len(shape) != 2:
        raise problem(path, f"expected a 2D grey slice, got shape {shape}")
    return shape, dtype.newbyteorder("=")


def _read_slice(path: Path, y: slice, x: slice) -> np.ndarray:
    if path.suffix.lower() in TIFF_SUFFIXES:
        with TiffStackSource(path) as source:
            return source.read((y, x))
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode == "P":
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            elif image.mode == "1":
                image = image.convert("L")
            data = np.asarray(image)
    except (ValueError, OSError, EOFError) as error:
        raise problem(path, "not a readable image", error) from None
    if data.ndim == 3:
        data = grey_from_samples(str(path), data, data.shape[-1])
    return data[y, x]


class RescaledSource:
    """A source with [low, high] mapped linearly onto 0..255 uint8 (clipped; NaN becomes 0)."""

    def __init__(self, source: Source, low: float, high: float) -> None:
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise ValueError(f"need finite low < high, got {low}, {high}")
        self.source, self.low, self.high = source, float(low), float(high)
        self.shape: tuple[int, ...] = tuple(source.shape)
        self.dtype = np.dtype(np.uint8)
        self.voxel_size_nm = source.voxel_size_nm
        self.warnings = [*getattr(source, "warnings", []), f"intensities {low:g}..{high:g} mapped to 0..255"]

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        values = np.array(self.source.read(region), dtype=np.float32)  # a copy: the source's array is untouched
        values -= self.low
        values *= 255.0 / (self.high - self.low)
        np.clip(values, 0, 255, out=values)
        np.nan_to_num(values, copy=False, nan=0.0)
        np.rint(values, out=values)
        return values.astype(np.uint8)

    def close(self) -> None:
        self.source.close()


def sample_regions(shape: tuple[int, ...], max_samples: int, tile: int = 256) -> list[tuple[slice, ...]]:
    """Evenly spread tiles (on evenly spread slices) holding at most about ``max_samples`` voxels."""
    if math.prod(shape) <= max_samples:
        return [tuple(slice(0, s) for s in shape)]
    *lead, height, width = shape
    depth = lead[0] if lead else 1
    edge = max(1, min(tile, math.isqrt(max_samples)))
    th, tw = min(edge, height), min(edge, width)
    tiles = max(1, max_samples // (th * tw))
    slices = min(depth, max(1, math.isqrt(tiles)))
    per_slice = max(1, tiles // slices)
    rows = min(math.ceil(height / th), max(1, math.isqrt(per_slice)))
    cols = min(math.ceil(width / tw), max(1, per_slice // rows))

    def spread(count: int, size: int, extent: int) -> list[int]:
        return [round(i * (size - extent) / (count - 1)) if count > 1 else (size - extent) // 2 for i in range(count)]

    regions: list[tuple[slice, ...]] = []
    for z in spread(slices, depth, 1):
        for y in spread(rows, height, th):
            for x in spread(cols, width, tw):
                plane = (slice(y, y + th), slice(x, x + tw))
                regions.append((slice(z, z + 1), *plane) if lead else plane)
    return regions


def percentile_window(
    source: Source, low_pct: float = 0.5, high_pct: float = 99.5, max_samples: int = 1 << 20
) -> tuple[float, float]:
    """(low, high) intensity percentiles estimated from at most about ``max_samples`` voxels.

    Reads a few full-resolution tiles spread over the image (never the whole of a large one);
    NaN and infinities are ignored; ``high`` is always above ``low``.
    """
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
    parts = [np.asarray(source.read(region)).ravel() for region in sample_regions(tuple(source.shape), max_samples)]
    return intensity_window(np.concatenate(parts), low_pct, high_pct)


def _sniff(path: Path) -> str | None:
    """The format of a file without a known suffix, from its first bytes."""
    with path.open("rb") as file:
        head = file.read(1024)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        return "vips"
    if head[208:211] == b"MAP":
        return "mrc"
    return None


def open_source(location: str) -> Source:
    """Open a file, folder, glob or ``zarr://``/``zarr3://``/``n5://``/``precomputed://`` path as a source.

    Raises:
        ImportProblem: nothing there, an unknown format, an unreadable, truncated or corrupt file,
            slices that do not match, an empty folder, or an unsupported data type.
    """
    try:
        return _open(location)
    except ImportProblem:
        raise
    except OSError as error:
        raise problem(location, "cannot be read", error) from None


def _open(location: str) -> Source:
    scheme, separator, _ = location.partition("://")
    if separator and scheme.lower() in TENSORSTORE_SCHEMES:
        return TensorstoreSource(location)
    path = Path(location).expanduser()
    if any(ch in location for ch in "*?[") and not path.exists():
        matches = [Path(m) for m in glob.glob(os.path.expanduser(location), recursive=True)]
        slices = [p for p in matches if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES]
        if not slices:
            raise problem(location, "no TIFF or PNG slices match")
        return SliceFolderSource(slices, location)
    if path.is_dir():
        if volume_driver(path):
            return TensorstoreSource(str(path))
        slices = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES]
        if not slices:
            raise problem(location, "no TIFF or PNG slices found (nor Zarr, N5 or precomputed metadata)")
        return SliceFolderSource(slices, location)
    if not path.is_file():
        raise problem(location, "no such file or folder")
    suffix = path.suffix.lower()
    kind = (
        "tiff" if suffix in TIFF_SUFFIXES
        else "mrc" if suffix in MRC_SUFFIXES
        else "vips" if suffix in VIPS_SUFFIXES
        else None
    )  # fmt: skip
    if kind is None and suffix in ARCHIVE_SUFFIXES:
        raise problem(location, f"is a compressed archive ({suffix}); unpack it first")
    kind = kind or _sniff(path)
    if kind == "tiff":
        return open_tiff(path)
    if kind == "mrc":
        return MrcSource(path)
    if kind == "vips":
        return VipsImageSource(path)
    raise problem(
        location,
        f"unsupported format {suffix or '(no suffix)'!r} "
        "(TIFF, PNG/JPEG, MRC, Zarr, N5, precomputed, or a folder of slices)",
    )
