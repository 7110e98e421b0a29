"""Input images for import: 3D TIFF (multi-page or a folder of 2D slices), MRC, and arrays.

Each source is a (z, y, x) or (y, x) array read by region, with the voxel size its file
records (in nanometres) when it records one. Problems become ImportProblem naming the file.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import tifffile
from PIL import Image

from tiling.errors import ImportProblem

SLICE_SUFFIXES = {".tif", ".tiff", ".png"}
MRC_SUFFIXES = {".mrc", ".mrcs", ".rec", ".map", ".st", ".ali"}


@dataclass
class ArraySource:
    """An in-memory array (the demo, tests)."""

    array: np.ndarray
    voxel_size_nm: tuple[float, ...] | None = None

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


class TiffStackSource:
    """A multi-page TIFF (or OME-TIFF) holding one 2D or 3D grey image."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tiff = tifffile.TiffFile(path)
            series = self._tiff.series[0]
            self.shape = tuple(series.shape)
            self.dtype = np.dtype(series.dtype)
            self.voxel_size_nm = _tiff_voxel_size(self._tiff)
        except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as error:
            raise ImportProblem(f"{path}: not a readable TIFF ({error})") from None
        if len(self.shape) not in (2, 3) or (len(self.shape) == 3 and series.axes.endswith("S")):
            self._tiff.close()
            raise ImportProblem(f"{path}: expected a single-channel 2D or 3D image, got axes {series.axes}")
        self._series = series
        self._memmap: np.ndarray | None = None
        self._whole: np.ndarray | None = None
        if series.dataoffset is not None:  # uncompressed and contiguous: map it, read nothing
            try:
                self._memmap = tifffile.memmap(path, series=0, mode="r")
            except (ValueError, OSError) as error:
                self._tiff.close()
                raise ImportProblem(f"{path}: pixel data is missing or truncated ({error})") from None
        self._pages_per_plane = len(series.pages) == self.shape[0] if len(self.shape) == 3 else False

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        try:
            if self._memmap is not None:
                return np.asarray(self._memmap[region])
            if self._pages_per_plane:
                z, *rest = region
                planes = self._tiff.asarray(key=list(range(*z.indices(self.shape[0]))), series=0)
                return planes.reshape(-1, *self.shape[1:])[(slice(None), *rest)]
            if self._whole is None:
                self._whole = self._series.asarray()
            return self._whole[region]
        except (ValueError, OSError, IndexError, RuntimeError) as error:
            raise ImportProblem(f"{self.path}: cannot read pixel data ({error})") from None

    def close(self) -> None:
        self._tiff.close()


def _tiff_voxel_size(tiff: tifffile.TiffFile) -> tuple[float, ...] | None:
    """Voxel size in nm from OME-XML, else from resolution tags with a metric unit."""
    if tiff.is_ome and tiff.ome_metadata:
        pixels = re.search(r"<Pixels[^>]*>", tiff.ome_metadata)
        if pixels:
            attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
            factor = {"nm": 1.0, "µm": 1e3, "um": 1e3, "Å": 0.1, "mm": 1e6}
            sizes = []
            for axis in "ZYX":
                value = attrs.get(f"PhysicalSize{axis}")
                unit = attrs.get(f"PhysicalSize{axis}Unit", "µm")
                sizes.append(float(value) * factor.get(unit, 1e3) if value else None)
            if sizes[1] and sizes[2]:
                return (sizes[0] or sizes[2], sizes[1], sizes[2])
    page = tiff.pages[0]
    unit = page.tags.get("ResolutionUnit")
    x_res, y_res = page.tags.get("XResolution"), page.tags.get("YResolution")
    per_unit = {2: 2.54e7, 3: 1e7}.get(int(unit.value) if unit else 0)  # inch, centimetre in nm
    if per_unit and x_res and y_res:
        (xn, xd), (yn, yd) = x_res.value, y_res.value
        if xn and yn:
            x, y = per_unit * xd / xn, per_unit * yd / yn
            return (x, y, x)
    return None


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class SliceFolderSource:
    """A folder (or glob) of 2D TIFF/PNG slices, in natural sort order, as one (z, y, x) stack."""

    def __init__(self, paths: list[Path], origin: str) -> None:
        if not paths:
            raise ImportProblem(f"{origin}: no TIFF or PNG slices found")
        self.paths = sorted(paths, key=_natural_key)
        first = self._read_slice(self.paths[0])
        self.shape = (len(self.paths), *first.shape)
        self.dtype = first.dtype
        self.voxel_size_nm = None

    def _read_slice(self, path: Path) -> np.ndarray:
        try:
            if path.suffix.lower() in (".tif", ".tiff"):
                data = tifffile.imread(path)
            else:
                with Image.open(path) as image:
                    if image.mode not in ("L", "I;16", "I;16B", "I", "F"):
                        image = image.convert("L")
                    data = np.asarray(image)
        except Exception as error:  # any decoder failure is a bad slice
            raise ImportProblem(f"{path}: not a readable image ({error})") from None
        if data.ndim != 2:
            raise ImportProblem(f"{path}: expected a 2D grey slice, got shape {data.shape}")
        if hasattr(self, "shape") and (data.shape != self.shape[1:] or data.dtype != self.dtype):
            raise ImportProblem(
                f"{path}: slice is {data.shape} {data.dtype}, the stack is {self.shape[1:]} {self.dtype}"
            )
        return data

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        z, y, x = region
        return np.stack([self._read_slice(p)[y, x] for p in self.paths[z]])

    def close(self) -> None:
        pass


class MrcSource:
    """An MRC/CCP4 file, memory-mapped; legacy headers open leniently with a warning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._mrc = mrcfile.mmap(path, mode="r", permissive=True)
            data = self._mrc.data
        except (ValueError, OSError, EOFError) as error:
            raise ImportProblem(f"{path}: not a readable MRC file ({error})") from None
        if data is None:
            self._mrc.close()
            raise ImportProblem(f"{path}: MRC header is corrupt (no data could be mapped)")
        self.warnings = [str(w.message) for w in caught]
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        self._data = data
        self.shape = data.shape
        self.dtype = data.dtype.newbyteorder("=")
        size = self._mrc.voxel_size
        x, y, z = (float(size.x) / 10, float(size.y) / 10, float(size.z) / 10)  # Å to nm
        self.voxel_size_nm = None if x <= 0 or y <= 0 else ((z if z > 0 else x, y, x) if data.ndim == 3 else (y, x))

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self._data[region], dtype=self.dtype)

    def close(self) -> None:
        self._mrc.close()


def open_source(location: str) -> TiffStackSource | SliceFolderSource | MrcSource:
    """Open a file, folder or glob as an import source.

    Raises:
        ImportProblem: nothing there, an unknown format, or an unreadable file.
    """
    path = Path(location).expanduser()
    if any(ch in location for ch in "*?["):
        matches = [p for p in Path(path.anchor or ".").glob(str(path.relative_to(path.anchor or ".")))]
        return SliceFolderSource([p for p in matches if p.suffix.lower() in SLICE_SUFFIXES], location)
    if path.is_dir():
        slices = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES]
        return SliceFolderSource(slices, location)
    if not path.is_file():
        raise ImportProblem(f"{location}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return TiffStackSource(path)
    if suffix in MRC_SUFFIXES:
        return MrcSource(path)
    raise ImportProblem(f"{location}: unsupported format {suffix!r} (TIFF, PNG slices or MRC)")
