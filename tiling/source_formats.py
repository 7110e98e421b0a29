"""File-format sources for import: TIFF/OME-TIFF, images libvips opens, MRC, and tensorstore volumes.

Every source is a (z, y, x) or (y, x) array read by region; none ever decodes a whole large
image at once. ``tiling.sources`` dispatches a location to one of these (use ``open_source``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import mmap
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts
import tifffile
from numpy.lib.array_utils import byte_bounds

from tiling.errors import ImportProblem
from tiling.pyramid import SUPPORTED_DTYPES

BAND_CACHE_BYTES = 256 << 20  # one decoded row band of a strip-compressed image, reused across x blocks
MAPPED_LIMIT_BYTES = 128 << 20  # file pages a memory-mapped input may keep mapped, at least (see MappedPages)
MAPPED_SLAB_BYTES = 64 << 20  # span of the file copied between two checks of that
MAPPED_AROUND_BYTES = 2 << 20  # what a fault may map beyond the page touched: a PMD-sized folio
# Mapped bytes allowed per byte of the rows a region spans. A file read from disk (ext4, large folios)
# maps ~1.45x its band's rows; at 1.25 each band was let go and mapped again ~6 times (3.5x slower reads).
MAPPED_BAND_FACTOR = 2.0
FULL_VALIDATE_BYTES = 64 << 20  # MRC data statistics are checked only below this (it reads everything)
# 2D compressed TIFFs from here on are read through libvips: its cache of decoded strips keeps a
# 80000-pixel-wide striped montage at 210 MB/s where tifffile re-decodes each strip per block (7 MB/s).
VIPS_MIN_PIXELS = 1 << 27  # about 11600 x 11600
MAX_PLAUSIBLE_PIXEL_NM = 1e5  # coarser "calibrations" are print DPI (72 dpi = 353 µm), not microscopy
LENGTH_UNITS_NM = {
    "m": 1e9, "meter": 1e9, "cm": 1e7, "centimeter": 1e7, "mm": 1e6, "millimeter": 1e6,
    "µm": 1e3, "μm": 1e3, "um": 1e3, "\\u00b5m": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3,
    "nm": 1.0, "nanometer": 1.0, "å": 0.1, "a": 0.1, "angstrom": 0.1, "pm": 1e-3, "picometer": 1e-3,
}  # fmt: skip
READ_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, EOFError, KeyError)

Region = tuple[slice, ...]
Voxel = tuple[float, ...] | None


def one_line(error: object, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def problem(location: object, what: str, error: object | None = None) -> ImportProblem:
    """An ImportProblem whose single-line message starts with the file and says what is wrong."""
    return ImportProblem(f"{location}: {what}" + (f" ({one_line(error)})" if error is not None else ""))


def check_dtype(location: object, dtype: np.dtype) -> None:
    if dtype.name not in SUPPORTED_DTYPES:
        supported = ", ".join(sorted(SUPPORTED_DTYPES))
        raise problem(location, f"unsupported data type {dtype.name} (supported: {supported})")


def unit_to_nm(unit: object) -> float | None:
    """Nanometres per ``unit`` (OME, ImageJ, N5 and tensorstore spellings), None if not a length unit."""
    return LENGTH_UNITS_NM.get(str(unit).strip().lower()) if unit is not None else None


def normalise_region(region: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[Region, tuple[int, ...]]:
    """Contiguous in-bounds slices covering ``region``, and the steps to apply afterwards."""
    if not isinstance(region, tuple):
        region = (region,)
    if len(region) > len(shape):
        raise IndexError(f"region {region} has more axes than the image {shape}")
    box, steps = [], []
    for item, size in zip((*region, *(slice(None),) * (len(shape) - len(region))), shape, strict=True):
        if not isinstance(item, slice):
            raise TypeError(f"a region is a tuple of slices, got {item!r}")
        start, stop, step = item.indices(size)
        if step < 1:
            raise ValueError("regions cannot have negative steps")
        count = len(range(start, stop, step))
        box.append(slice(start, start + (count - 1) * step + 1 if count else start))
        steps.append(step)
    return tuple(box), tuple(steps)


class RegionSource:
    """Base of the file sources: region bookkeeping, error wrapping and an optional row-band cache.

    Subclasses set ``shape``, ``dtype`` (native byte order), ``voxel_size_nm`` and implement
    ``_read(box)`` for contiguous in-bounds boxes. With ``_band_cache`` set, a read is served from
    the (z, y) band spanning the full width, decoded once: strips and slices cannot be decoded in
    part, and the pyramid writer reads x blocks of the same band one after another.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    voxel_size_nm: Voxel = None
    _band_cache = False

    def __init__(self, location: object) -> None:
        self.location = str(location)
        self.warnings: list[str] = []
        self._band_key: Region | None = None
        self._band: np.ndarray | None = None

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        box, steps = normalise_region(region, self.shape)
        if any(s.stop <= s.start for s in box):
            return np.zeros([len(range(s.start, s.stop, st)) for s, st in zip(box, steps, strict=True)], self.dtype)
        try:
            data = self._read_cached(box) if self._band_cache else self._read(box)
        except ImportProblem:
            raise
        except READ_ERRORS as error:
            where = ", ".join(f"{s.start}:{s.stop}" for s in box)
            raise problem(self.location, f"cannot read pixels [{where}]", error) from None
        data = np.asarray(data, dtype=self.dtype)
        if any(step != 1 for step in steps):
            data = data[tuple(slice(None, None, step) for step in steps)]
        return data

    def _read_cached(self, box: Region) -> np.ndarray:
        band = (*box[:-1], slice(0, self.shape[-1]))
        nbytes = math.prod(s.stop - s.start for s in band) * self.dtype.itemsize * self._samples()
        if band == box or nbytes > BAND_CACHE_BYTES:
            return self._read(box)
        if band != self._band_key or self._band is None:
            self._band, self._band_key = None, None  # free the old band before decoding the next
            self._band = self._read(band)
            self._band_key = band
        return self._band[..., box[-1]].copy()

    def _samples(self) -> int:
        return 1

    def _read(self, box: Region) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        self._band = None

    def __enter__(self) -> RegionSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MappedPages:
    """Copies regions out of a memory-mapped file and lets go of the pages read, keeping RSS bounded.

    The pages stay in the page cache; only this process's mapping of them is dropped, so a 1 TB
    stack never becomes resident. Dropping happens once a row band is finished (a read reaching the
    last column, as the pyramid writer's x-ordered reads do), not after every read: the next block
    of the same rows shares their pages, and each madvise call flushes TLBs. It also happens as soon
    as more of the file is mapped than the rows a band spans (at least ``MAPPED_LIMIT_BYTES``): where
    the page cache holds the file in large folios (ext4 and XFS do, for files read from disk), the
    kernel maps a whole folio, up to 2 MiB, for each row touched, and one block of a stack could map
    most of the file. Regions are copied in slabs spanning ``MAPPED_SLAB_BYTES`` of the file, and
    the mapped size is checked after each.
    """

    def __init__(self, root: np.memmap) -> None:
        self._mapping = getattr(root, "_mmap", None)
        if not hasattr(mmap, "MADV_DONTNEED"):
            self._mapping = None
        self._base = byte_bounds(root)[0] - int(getattr(root, "offset", 0)) % mmap.ALLOCATIONGRANULARITY
        self._low, self._high, self._pending = 0, 0, 0
        try:
            self._statm: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._statm = None  # no /proc: let go after every MAPPED_LIMIT_BYTES copied instead
        self._baseline = self._file_resident()

    def _mapped(self) -> int:
        """Bytes of the file mapped since the last release (without /proc: bytes copied since then)."""
        return self._pending if self._statm is None else self._file_resident() - self._baseline

    def _file_resident(self) -> int:
        """Bytes of files this process has mapped and resident (its libraries too), or 0 if unknown."""
        if self._statm is None:
            return 0
        return int(os.pread(self._statm, 256, 0).split()[2]) * mmap.PAGESIZE

    def copy(self, view: np.ndarray, *, row_end: bool) -> np.ndarray:
        if self._mapping is None or view.size == 0:
            return np.array(view)
        data = np.empty(view.shape, view.dtype)
        first, last = byte_bounds(view[0] if view.ndim > 2 else view)  # the rows of one plane
        rows = (last - first) * (len(view) if view.ndim > 2 else 1)  # the full rows the region spans
        limit = max(MAPPED_LIMIT_BYTES, int(rows * MAPPED_BAND_FACTOR))  # a band of them in 4 KiB pages fits
        step = max(1, MAPPED_SLAB_BYTES // max(1, abs(view.strides[0]))) if view.ndim > 1 else len(view)
        for start in range(0, len(view), step):
            part = view[start : start + step]
            data[start : start + step] = part
            low, high = (bound - self._base for bound in byte_bounds(part))
            self._low, self._high = (low, high) if not self._pending else (min(low, self._low), max(high, self._high))
            self._pending += part.nbytes
            if self._mapped() > limit or (row_end and start + step >= len(view)):
                self._release()
        return data

    def _release(self) -> None:
        assert self._mapping is not None
        # Faults map pages around the one touched (a whole folio, up to 2 MiB): let those go too.
        low, high = max(0, self._low - MAPPED_AROUND_BYTES), min(self._high + MAPPED_AROUND_BYTES, len(self._mapping))
        start = low - low % mmap.PAGESIZE
        self._mapping.madvise(mmap.MADV_DONTNEED, start, high - start)
        self._pending = 0
        self._baseline = self._file_resident()  # libraries other threads load meanwhile do not count

    def close(self) -> None:
        if self._statm is not None:
            os.close(self._statm)
            self._statm = None


def grey_from_samples(location: str, data: np.ndarray, samples: int) -> np.ndarray:
    """The grey plane of (..., samples) pixels: alpha is dropped, RGB must have equal channels."""
    if samples in (1, 2):
        return data[..., 0]
    rgb = data[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise problem(location, "is a colour image (RGB channels differ); convert it to one grey channel first")
    return rgb[..., 0]


def colour_note(samples: int) -> str:
    if samples == 2:
        return "grey image with alpha: alpha channel dropped"
    return "RGB image read as one grey channel (channels must be equal)" + (", alpha dropped" if samples == 4 else "")


# --- TIFF -------------------------------------------------------------------------------------------


class _LogCapture(logging.Handler):
    """Collects tifffile's log records while a file is parsed (it logs, not raises, on damage)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger("tifffile")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def raise_errors(self, path: Path) -> None:
        """tifffile logs damage (a broken page chain, a series that no longer fits) as errors."""
        errors = [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]
        if errors:
            raise problem(path, "damaged or truncated TIFF", errors[0])

    def __enter__(self) -> _LogCapture:
        self._propagate, self._level = self._logger.propagate, self._logger.level
        self._logger.addHandler(self)
        self._logger.propagate = False  # one-line CLI errors: keep tifffile's own lines off stderr
        self._logger.setLevel(logging.WARNING)  # even where tifffile was silenced (the CLI does)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate
        self._logger.setLevel(self._level)


class TiffStackSource(RegionSource):
    """A TIFF, BigTIFF or OME-TIFF holding one grey 2D or 3D image (multi-page or one page).

    Uncompressed contiguous data is memory-mapped. Anything else is read through tifffile's
    zarr store, which decodes only the pages, strips or tiles that a region touches.
    """

    def __init__(self, path: Path | str) -> None:
        super().__init__(path)
        self.path = Path(path)
        self._store: Any = None
        self._memmap: np.ndarray | None = None
        self._pages: MappedPages | None = None
        with _LogCapture() as log:
            try:
                self._tiff = tifffile.TiffFile(self.path)
            except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, EOFError) as error:
                raise problem(self.path, "not a readable TIFF", error) from None
            try:
                self._open_series(log)
            except BaseException:
                self.close()
                raise
        notes = dict.fromkeys(one_line(r.getMessage()) for r in log.records)  # one per kind, not one per page
        self.warnings += list(notes)[:10]

    def _open_series(self, log: _LogCapture) -> None:
        try:
            series = self._tiff.series[0]
            shape, axes, dtype = tuple(int(s) for s in series.shape), series.axes, np.dtype(series.dtype)
        except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError, EOFError) as error:
            raise problem(self.path, "not a readable TIFF", error) from None
        log.raise_errors(self.path)
        self._sample_count, self._sample_axis = 1, axes.find("S")  # last (contiguous) or first (planar)
        if self._sample_axis >= 0:
            self._sample_count = shape[self._sample_axis]
            if self._sample_count not in (2, 3, 4):
                raise problem(self.path, f"expected a grey image, got {self._sample_count} samples per pixel")
            self.warnings.append(colour_note(self._sample_count))
            shape = shape[: self._sample_axis] + shape[self._sample_axis + 1 :]
            axes = axes.replace("S", "")
        if len(shape) not in (2, 3):
            raise problem(self.path, f"expected a single-channel 2D or 3D image, got shape {shape} (axes {axes})")
        check_dtype(self.path, dtype)
        self.shape, self.dtype = shape, dtype.newbyteorder("=")
        if len(self._tiff.series) > 1:
            self.warnings.append(f"file holds {len(self._tiff.series)} image series; importing the first")
        self._check_extent(series)
        log.raise_errors(self.path)
        if series.dataoffset is not None:  # uncompressed and contiguous: map it, decode nothing
            self._memmap = tifffile.memmap(self.path, series=0, mode="r")
            self._pages = MappedPages(self._memmap)
        else:
            import zarr  # here: it takes a third of a second to import, and only compressed TIFFs need it

            self._store = series.aszarr(level=0)
            self._array = zarr.open_array(self._store, mode="r")
            self._band_cache = not series.keyframe.is_tiled
        self.voxel_size_nm = tiff_voxel_size(self._tiff, series, len(shape), self.warnings)
        if self._sample_count > 2:  # fail now, not hours into an import, on an obvious colour image
            middle = [slice(s // 2, s // 2 + 1) for s in shape[:-2]]
            self.read((*middle, *(slice(max(0, s // 2 - 128), s // 2 + 128) for s in shape[-2:])))

    def _check_extent(self, series: Any) -> None:
        """Pixel data that ends beyond the end of the file (a truncated copy or download)."""
        size = self.path.stat().st_size
        if series.dataoffset is not None:
            end = series.dataoffset + series.nbytes
            if end > size:
                raise problem(self.path, f"pixel data is truncated (the file has {size} bytes, the data needs {end})")
            return
        for index, page in enumerate(series.pages):
            if page is None:
                raise problem(self.path, f"pixel data is truncated (page {index} is missing)")
            ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False) if c]
            limit = page.parent.filehandle.size
            if ends and max(ends) > limit:
                raise problem(self.path, f"pixel data is truncated (page {index} ends at byte {max(ends)} of {limit})")

    def _samples(self) -> int:
        return self._sample_count

    @property
    def is_large_plane(self) -> bool:
        """One compressed (not memory-mappable) 2D image of at least ``VIPS_MIN_PIXELS``: a montage."""
        return (len(self.shape) == 2 and self._memmap is None and math.prod(self.shape) >= VIPS_MIN_PIXELS
                and len(self._tiff.series) == 1 and len(self._tiff.pages) == 1)

    def _read(self, box: Region) -> np.ndarray:
        row_end = box[-1].stop == self.shape[-1]
        if self._sample_count > 1:
            box = (*box[: self._sample_axis], slice(None), *box[self._sample_axis :])
        if self._pages is not None and self._memmap is not None:
            data = self._pages.copy(self._memmap[box], row_end=row_end)
        else:
            data = np.asarray(self._array[box])
        if self._sample_count == 1:
            return data
        return grey_from_samples(self.location, np.moveaxis(data, self._sample_axis, -1), self._sample_count)

    def close(self) -> None:
        super().close()
        if self._pages is not None:
            self._pages.close()
        self._memmap, self._pages = None, None
        if self._store is not None:
            self._store.close()
            self._store = None
        if hasattr(self, "_tiff"):
            self._tiff.close()


def open_tiff(path: Path | str) -> RegionSource:
    """A TIFF as a source: tifffile's, or libvips' region reads for a large 2D montage.

    Metadata (voxel size, warnings) always come from tifffile. Uncompressed montages stay memory-
    mapped (three times faster than libvips here); one libvips cannot read stays with tifffile.
    """
    tiff = TiffStackSource(path)
    if not tiff.is_large_plane:
        return tiff
    try:
        vips = VipsImageSource(path)
    except ImportProblem:
        return tiff
    if (vips.shape, vips.dtype) != (tiff.shape, tiff.dtype):
        vips.close()
        return tiff
    vips.voxel_size_nm, vips.warnings = tiff.voxel_size_nm, tiff.warnings
    tiff.close()
    return vips


def tiff_voxel_size(tiff: tifffile.TiffFile, series: Any, ndim: int, notes: list[str]) -> Voxel:
    """Voxel size in nm, in (z, y, x) or (y, x) order, from the best calibration the file records.

    Tried in turn: OME-XML PhysicalSize*, ImageJ (unit + resolution tags + spacing), FEI/Thermo and
    Zeiss SEM tags, then resolution tags in cm or inch if they are microscopic (not print DPI).
    """
    z: float | None = None
    yx: tuple[float, float] | None = None
    source = ""
    if tiff.is_ome and tiff.ome_metadata:
        try:
            images = tifffile.xml2dict(tiff.ome_metadata)["OME"]["Image"]
            pixels = (images[0] if isinstance(images, list) else images)["Pixels"]
        except (KeyError, IndexError, TypeError, ValueError):
            pixels = {}
        sizes = {}
        for axis in "XYZ":
            value, unit = pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm")
            factor = unit_to_nm(unit)
            if value is not None and factor is None:
                notes.append(f"OME PhysicalSize{axis} unit {unit!r} is not a length unit; ignored")
            sizes[axis] = float(value) * factor if value is not None and factor and float(value) > 0 else None
        if sizes["X"] and sizes["Y"]:
            yx, z, source = (sizes["Y"], sizes["X"]), sizes["Z"], "OME"
    page = series.keyframe
    if yx is None and tiff.is_imagej and tiff.imagej_metadata:
        meta = tiff.imagej_metadata
        factor = unit_to_nm(meta.get("unit"))
        resolution = _resolution_per_unit(page)
        if factor and resolution:
            yx, source = (factor / resolution[1], factor / resolution[0]), "ImageJ"
            spacing = meta.get("spacing")
            z = float(spacing) * factor if spacing and float(spacing) > 0 else None
    if yx is None and tiff.is_fei and tiff.fei_metadata:
        scan = tiff.fei_metadata.get("Scan") or tiff.fei_metadata.get("EScan") or {}
        width, height = scan.get("PixelWidth"), scan.get("PixelHeight") or scan.get("PixelWidth")
        if width and height and float(width) > 0:
            yx, source = (float(height) * 1e9, float(width) * 1e9), "FEI"  # metres
    if yx is None and tiff.is_sem and tiff.sem_metadata:
        entry = tiff.sem_metadata.get("ap_image_pixel_size") or tiff.sem_metadata.get("ap_pixel_size")
        factor = unit_to_nm(entry[2]) if entry and len(entry) > 2 else None
        if factor and isinstance(entry[1], (int, float)) and entry[1] > 0:
            yx, source = (entry[1] * factor, entry[1] * factor), "Zeiss SEM"
    if yx is None:
        unit = page.tags.get("ResolutionUnit")
        factor = {2: 2.54e7, 3: 1e7}.get(int(unit.value) if unit else 0)  # nm per inch, per centimetre
        resolution = _resolution_per_unit(page)
        if factor and resolution:
            size = (factor / resolution[1], factor / resolution[0])
            if max(size) <= MAX_PLAUSIBLE_PIXEL_NM:
                yx, source = size, "resolution tags"
            else:
                notes.append(f"resolution tags give {max(size):.0f} nm per pixel (print DPI?); ignored")
    if yx is None:
        return None
    if ndim == 2:
        return yx
    if z is None:
        notes.append(f"{source} metadata records no z spacing; assumed equal to x")
    return (z or yx[1], *yx)


def _resolution_per_unit(page: Any) -> tuple[float, float] | None:
    """(x, y) pixels per resolution unit from the XResolution/YResolution tags."""
    x_tag, y_tag = page.tags.get("XResolution"), page.tags.get("YResolution")
    if not x_tag or not y_tag:
        return None
    (xn, xd), (yn, yd) = x_tag.value, y_tag.value
    if not (xn and xd and yn and yd) or (xn == xd and yn == yd):  # 1/1 is "not set"
        return None
    return xn / xd, yn / yd


# --- libvips ----------------------------------------------------------------------------------------

VIPS_DTYPES = {
    "uchar": np.uint8, "char": np.int8, "ushort": np.uint16, "short": np.int16,
    "uint": np.uint32, "int": np.int32, "float": np.float32,
}  # fmt: skip
# Not csv/matrix/svg/pdf: libvips reads those too, but text and drawings are not microscopy.
VIPS_LOADERS = (
    "tiffload", "pngload", "jpegload", "jp2kload", "webpload", "jxlload", "heifload", "gifload",
    "ppmload", "fitsload", "vipsload", "niftiload", "analyzeload", "openslideload", "magickload",
)  # fmt: skip


class VipsImageSource(RegionSource):
    """A 2D image of any size that libvips opens (TIFF, PNG, JPEG, JPEG 2000, WebP, ...), streamed.

    Regions are cropped from a random-access image; formats that cannot be read in part (PNG,
    JPEG) are decoded once by libvips into memory or, when large, a temporary file.
    """

    def __init__(self, path: Path | str, *, access: str = "random") -> None:
        import pyvips  # loads libvips: only for the formats that need it

        super().__init__(path)
        self.path = Path(path)
        try:
            self._image = pyvips.Image.new_from_file(str(self.path), access=access, fail_on="error")
            loader = str(self._image.get("vips-loader"))
        except pyvips.Error as error:
            raise problem(self.path, "not an image format libvips can read", error) from None
        if not loader.startswith(VIPS_LOADERS):
            raise problem(self.path, f"unsupported format (libvips would read it with {loader})")
        image = self._image
        if image.format not in VIPS_DTYPES:
            raise problem(self.path, f"unsupported data type {image.format} (vips band format)")
        self._vips_dtype = np.dtype(VIPS_DTYPES[image.format])
        self.dtype = self._vips_dtype
        if image.bands > 1:
            if image.bands > 4 or image.interpretation in ("cmyk", "lab", "labq", "labs", "lch", "xyz", "fourier"):
                raise problem(self.path, f"expected a grey image, got {image.bands} bands ({image.interpretation})")
            self.warnings.append(colour_note(image.bands))
        if "n-pages" in image.get_fields() and int(image.get("n-pages")) > 1:
            self.warnings.append(f"file has {image.get('n-pages')} pages; importing the first")
        check_dtype(self.path, self.dtype)
        self.shape = (int(image.height), int(image.width))
        self.read((slice(self.shape[0] - 1, None), slice(self.shape[1] - 1, None)))  # truncated files fail now
        if image.bands > 2:  # an obvious colour image fails now, the rest when read
            for y in (0, self.shape[0] // 2, max(0, self.shape[0] - 256)):
                for x in (0, self.shape[1] // 2, max(0, self.shape[1] - 256)):
                    self.read((slice(y, y + 256), slice(x, x + 256)))

    def _samples(self) -> int:
        return int(self._image.bands)

    def _read(self, box: Region) -> np.ndarray:
        import pyvips

        (y, x), bands = box, int(self._image.bands)
        try:
            region = self._image.crop(x.start, y.start, x.stop - x.start, y.stop - y.start)
            pixels = region.write_to_memory()
        except pyvips.Error as error:
            raise RuntimeError(str(error)) from error  # one of READ_ERRORS
        data = np.ndarray(buffer=pixels, dtype=self._vips_dtype, shape=(y.stop - y.start, x.stop - x.start, bands))
        return grey_from_samples(self.location, data, bands) if bands > 1 else data[..., 0]

    def close(self) -> None:
        super().close()
        self._image = None


# --- MRC --------------------------------------------------------------------------------------------

IMOD_STAMP = 1146047817  # "IMOD" in the header's extra bytes


class MrcSource(RegionSource):
    """An MRC/CCP4 file (.mrc .mrcs .rec .map .st .ali), memory-mapped.

    Legacy and slightly off headers open leniently; what strict MRC2014 validation reports is kept
    in ``warnings``. A stack of one section is 2D. Voxel sizes follow the axis mapping (Å to nm).
    """

    def __init__(self, path: Path | str) -> None:
        import mrcfile

        super().__init__(path)
        self.path = Path(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self._mrc = mrcfile.mmap(self.path, mode="r", permissive=True)
            except (ValueError, OSError, EOFError) as error:
                raise problem(self.path, "MRC header is corrupt", error) from None
        messages = [one_line(w.message) for w in caught]
        try:
            self._open(messages)
        except BaseException:
            self._mrc.close()
            raise

    def _open(self, messages: list[str]) -> None:
        data, header = self._mrc.data, self._mrc.header
        if header is None or data is None:
            first = messages[0] if messages else None
            raise problem(self.path, "MRC header is corrupt or the data are truncated", first)
        self.warnings += messages
        self.warnings += self._validation(data)
        if data.ndim == 4:  # a volume stack (space group 401-630)
            if data.shape[0] != 1:
                raise problem(self.path, f"is a stack of {data.shape[0]} volumes; import one volume at a time")
            data = data[0]
        dtype = data.dtype.newbyteorder("=")
        if dtype == np.int8 and self._imod_unsigned(header):
            data, dtype = data.view(np.uint8), np.dtype(np.uint8)
            self.warnings.append("IMOD header marks the 8-bit data as unsigned; read as uint8")
        if dtype.name not in ("int8", "uint8", "int16", "uint16", "float32"):
            raise problem(self.path, f"unsupported MRC data type {dtype.name} (mode {int(header.mode)})")
        if data.size == 0:
            raise problem(self.path, f"MRC header describes an empty image {data.shape}")
        with np.errstate(all="ignore"):  # a zero cell or grid size gives inf/nan, handled below
            size = self._mrc.voxel_size
            sizes = [float(v) / 10 for v in (size.x, size.y, size.z)]  # Å to nm
        axes = [int(header.mapc), int(header.mapr), int(header.maps)]
        if sorted(axes) == [1, 2, 3]:  # column, row, section axes in the cell's x, y, z
            if axes != [1, 2, 3]:
                self.warnings.append(f"MRC axis order (mapc, mapr, maps) = {tuple(axes)}; data are not reoriented")
            per_axis = (sizes[axes[2] - 1], sizes[axes[1] - 1], sizes[axes[0] - 1])
        else:
            per_axis = (sizes[2], sizes[1], sizes[0])
        if data.ndim == 3 and data.shape[0] == 1:
            data = data[0]
        self._data = data
        self._pages = MappedPages(self._mrc.data) if isinstance(self._mrc.data, np.memmap) else None
        self.shape, self.dtype = tuple(int(s) for s in data.shape), dtype
        voxel = per_axis[-data.ndim :]
        if any(v <= 0 or not math.isfinite(v) for v in voxel[-2:]):
            self.voxel_size_nm = None
        else:
            self.voxel_size_nm = tuple(v if v > 0 and math.isfinite(v) else voxel[-1] for v in voxel)

    def _validation(self, data: np.ndarray) -> list[str]:
        """mrcfile's MRC2014 validation; its data statistics read everything, so only for small files."""
        import mrcfile

        out = io.StringIO()
        if data.nbytes <= FULL_VALIDATE_BYTES:
            self._mrc.validate(print_file=out)
            return [one_line(line) for line in out.getvalue().splitlines() if line.strip()]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(self.path, header_only=True, permissive=True) as header_only:
                header_only.validate(print_file=out)
        skip = ("Data statistics", "Data block could not be read")
        return [one_line(line) for line in out.getvalue().splitlines() if line.strip() and not line.startswith(skip)]

    @staticmethod
    def _imod_unsigned(header: Any) -> bool:
        extra = np.frombuffer(header.extra2.tobytes()[40:48], dtype=header.nx.dtype)
        return int(extra[0]) == IMOD_STAMP and not int(extra[1]) & 1

    def _read(self, box: Region) -> np.ndarray:
        if self._pages is None:
            return np.array(self._data[box])
        return self._pages.copy(self._data[box], row_end=box[-1].stop == self.shape[-1])

    def close(self) -> None:
        super().close()
        if self._pages is not None:
            self._pages.close()
            self._pages = None
        self._mrc.close()


# --- tensorstore: Zarr v2/v3, N5, Neuroglancer precomputed ------------------------------------------

TENSORSTORE_SCHEMES = {
    "zarr": "zarr", "zarr2": "zarr", "zarr3": "zarr3", "n5": "n5", "precomputed": "neuroglancer_precomputed",
}  # fmt: skip
TS_CACHE_BYTES = 64 << 20  # chunks that straddle the writer's blocks are decoded once


def _json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None


def volume_driver(path: Path) -> str | None:
    """The tensorstore driver for a folder holding a Zarr, N5 or precomputed volume, else None."""
    if any((path / name).is_file() for name in (".zarray", ".zgroup", ".zattrs")):
        return "zarr"
    if (path / "zarr.json").is_file():
        return "zarr3"
    if (path / "attributes.json").is_file():
        return "n5"
    info = _json(path / "info") if (path / "info").is_file() else None
    if info is not None and isinstance(info.get("scales"), list):
        return "neuroglancer_precomputed"
    return None


class TensorstoreSource(RegionSource):
    """A Zarr v2/v3, N5 or Neuroglancer precomputed volume on local disk, read through tensorstore.

    ``location`` is ``zarr://``, ``zarr3://``, ``n5://`` or ``precomputed://`` followed by a path, or a
    plain folder path (format detected). An OME-Zarr or N5 multiscale group opens its finest level.
    Precomputed (x, y, z, channel) and N5 (x, y, z as listed in attributes.json) are shown as (z, y, x).
    """

    def __init__(self, location: str, *, driver: str | None = None) -> None:
        super().__init__(location)
        scheme, _, rest = location.partition("://")
        if driver is None and rest and scheme.lower() in TENSORSTORE_SCHEMES:
            driver, location = TENSORSTORE_SCHEMES[scheme.lower()], rest.removeprefix("file://")
        if "://" in location:
            raise problem(self.location, "only local paths are supported for Zarr, N5 and precomputed volumes")
        path = Path(location).expanduser()
        if not path.exists():
            raise problem(self.location, "no such file or folder")
        driver = driver or volume_driver(path)
        if driver is None:
            raise problem(self.location, "no Zarr, N5 or precomputed metadata found")
        self.driver = driver
        try:
            array_path, axes, voxel = self._resolve(path, driver)
        except ImportProblem:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
            raise problem(self.location, f"malformed {driver} metadata", repr(error)) from None
        spec: dict[str, Any] = {"driver": driver, "kvstore": {"driver": "file", "path": str(array_path) + "/"}}
        if driver == "neuroglancer_precomputed":
            spec["scale_index"] = 0
        try:
            context = ts.Context({"cache_pool": {"total_bytes_limit": TS_CACHE_BYTES}})
            store = ts.open(spec, read=True, open=True, context=context).result()
        except ValueError as error:
            raise problem(self.location, f"cannot open the {driver} volume", error) from None
        store = store[ts.d[:].translate_to[0]]
        if driver == "neuroglancer_precomputed":
            if store.shape[-1] != 1:
                raise problem(self.location, f"has {store.shape[-1]} channels; expected one")
            store = store[..., 0]
        if driver in ("neuroglancer_precomputed", "n5"):  # x-first on disk; rows last here
            store = store[ts.d[:].transpose[::-1]]
            axes = axes[::-1] if axes else None
            voxel = tuple(reversed(voxel)) if voxel else None
        self._store, self.voxel_size_nm = self._squeeze(store, axes, voxel)
        self.shape = tuple(int(s) for s in self._store.shape)
        self.dtype = np.dtype(self._store.dtype.numpy_dtype).newbyteorder("=")
        check_dtype(self.location, self.dtype)

    def _squeeze(self, store: Any, axes: list[str] | None, voxel: Voxel) -> tuple[Any, Voxel]:
        """Drop single-element non-spatial (and leading) axes; refuse real channels or time points."""
        names = axes or ["space"] * store.rank
        index: list[Any] = []
        keep: list[int] = []
        for i, (name, size) in enumerate(zip(names, store.shape, strict=True)):
            if name != "space" and size > 1:
                raise problem(self.location, f"has {size} {name} points; expected a single-channel image")
            if name != "space":
                index.append(0)
            else:
                index.append(slice(None))
                keep.append(i)
        while len(keep) > 2 and store.shape[keep[0]] == 1:
            index[keep.pop(0)] = 0
        if len(keep) not in (2, 3):
            raise problem(self.location, f"expected a 2D or 3D image, got shape {tuple(store.shape)}")
        spatial = tuple(voxel[i] for i in keep) if voxel and len(voxel) == store.rank else None
        return store[tuple(index)], spatial

    def _resolve(self, path: Path, driver: str) -> tuple[Path, list[str] | None, Voxel]:
        """The array to open, the kind of each axis ('space', 'channel', 'time'), and voxel sizes."""
        if driver == "neuroglancer_precomputed":
            info = _json(path / "info") or {}
            scales = info.get("scales") or [{}]
            resolution = scales[0].get("resolution")
            return path, None, tuple(float(r) for r in resolution) if resolution else None
        if driver == "n5":
            return self._resolve_n5(path)
        return self._resolve_zarr(path, driver)

    def _resolve_n5(self, path: Path) -> tuple[Path, list[str] | None, Voxel]:
        attributes = _json(path / "attributes.json") or {}
        if "dimensions" not in attributes and (path / "s0" / "attributes.json").is_file():
            group, path = attributes, path / "s0"
            attributes = _json(path / "attributes.json") or {}
        else:
            group = _json(path.parent / "attributes.json") or {}
        if "dimensions" not in attributes:
            raise problem(self.location, "N5 group without an s0 array; point at an array")
        voxel = _n5_resolution(attributes, self.warnings)
        if voxel is None:  # n5-viewer: the group holds the s0 pixel size, levels their factors
            voxel = _n5_resolution(group, self.warnings)
            factors = attributes.get("downsamplingFactors")
            if voxel and isinstance(factors, list) and len(factors) == len(voxel):
                voxel = tuple(v * float(f) for v, f in zip(voxel, factors, strict=True))
        return path, None, voxel

    def _resolve_zarr(self, path: Path, driver: str) -> tuple[Path, list[str] | None, Voxel]:
        for _ in range(3):  # group -> (bioformats2raw image) -> multiscale -> level 0
            kind, attributes = _zarr_node(path, driver)
            if kind == "array":
                return path, *self._ome_level(path.parent, path.name, driver)
            if kind != "group":
                raise problem(self.location, f"no {driver} array or group metadata found")
            multiscales = attributes.get("multiscales")
            if isinstance(multiscales, list) and multiscales:
                return path / multiscales[0]["datasets"][0]["path"], *self._ome_level(path, None, driver)
            if "bioformats2raw.layout" in attributes and _zarr_node(path / "0", driver)[0] == "group":
                path = path / "0"
                continue
            break
        raise problem(self.location, "Zarr group without OME multiscales metadata; point at an array")

    def _ome_level(self, group: Path, name: str | None, driver: str) -> tuple[list[str] | None, Voxel]:
        """Axis kinds and nm scale of one level of an OME multiscale group (None, None if not OME)."""
        kind, attributes = _zarr_node(group, driver)
        multiscales = attributes.get("multiscales") if kind == "group" else None
        if not isinstance(multiscales, list) or not multiscales:
            return None, None
        multiscale = multiscales[0]
        datasets = multiscale.get("datasets", [])
        dataset = datasets[0] if name is None else next((d for d in datasets if d.get("path") == name), None)
        if dataset is None:
            return None, None
        axes = multiscale.get("axes")
        if not axes:
            return None, None
        kinds, factors = [], []
        for axis in axes:
            entry = axis if isinstance(axis, dict) else {"name": axis}
            axis_name = str(entry.get("name", ""))
            kind_ = entry.get("type") or ("space" if axis_name in "zyx" else "channel" if axis_name == "c" else "time")
            kinds.append("space" if kind_ == "space" else str(kind_))
            factors.append(unit_to_nm(entry.get("unit")) if kind_ == "space" else 1.0)
        scale = [1.0] * len(axes)
        for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
            for transform in transforms or []:
                if transform.get("type") == "scale" and len(transform.get("scale", [])) == len(axes):
                    scale = [a * float(b) for a, b in zip(scale, transform["scale"], strict=True)]
        if any(f is None for f in factors):
            self.warnings.append("OME axes have no length unit; voxel size not taken from the metadata")
            return kinds, None
        return kinds, tuple(s * float(f) for s, f in zip(scale, factors, strict=True))  # type: ignore[arg-type]

    def _read(self, box: Region) -> np.ndarray:
        return np.asarray(self._store[box].read().result())

    def close(self) -> None:
        super().close()
        self._store = None


def _zarr_node(path: Path, driver: str) -> tuple[str | None, dict[str, Any]]:
    """('array' | 'group' | None, attributes) of a Zarr v2 or v3 node."""
    if driver == "zarr3":
        document = _json(path / "zarr.json") or {}
        attributes = document.get("attributes") or {}
        return document.get("node_type"), attributes.get("ome", attributes)
    attributes = _json(path / ".zattrs") or {}
    if (path / ".zarray").is_file():
        return "array", attributes
    if (path / ".zgroup").is_file() or attributes:
        return "group", attributes
    return None, attributes


def _n5_resolution(attributes: dict[str, Any], notes: list[str]) -> Voxel:
    """N5 pixel size in nm, in attributes.json (x-first) order: pixelResolution or resolution + units."""
    pixel = attributes.get("pixelResolution")
    values, units = None, None
    if isinstance(pixel, dict):
        values, units = pixel.get("dimensions"), pixel.get("unit")
    elif isinstance(pixel, list):
        values = pixel
    elif isinstance(attributes.get("resolution"), list):
        values, units = attributes["resolution"], attributes.get("units")
    if not values or not all(isinstance(v, (int, float)) and v > 0 for v in values):
        return None
    unit_list = units if isinstance(units, list) else [units] * len(values)
    if any(u is None for u in unit_list):
        notes.append("N5 resolution has no unit; assumed nanometres")
    factors = [1.0 if u is None else unit_to_nm(u) for u in unit_list]
    if any(f is None for f in factors) or len(factors) != len(values):
        notes.append(f"N5 resolution unit {units!r} is not a length unit; ignored")
        return None
    return tuple(float(v) * float(f) for v, f in zip(values, factors, strict=True))  # type: ignore[arg-type]
