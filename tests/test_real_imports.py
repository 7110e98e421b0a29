"""Real EM from ../shared/data imported through ``lamella import``: valid OME-Zarr, level 0 voxel for voxel,
level 1 against a downsample of the source computed here with numpy (factors read from the metadata)."""

from __future__ import annotations

import gc
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner
from ome_zarr_models import open_ome_zarr
from PIL import Image

from tests.conftest import SHARED_DATA, Sample, Server, shared_file
from viewer.cli import main

FLY = SHARED_DATA / "fibsem_drosophila_medulla_250cube_neuroproof"
WORM = SHARED_DATA / "fibsem_celegans_empiar10982_neubias_crop"
EMDB = SHARED_DATA / "mrc_emdb_maps_mrcfile_testdata"
MONTAGE = SHARED_DATA / "mrc_serialem_grid_montage_mobie" / "julian-test.mrc"


def lamella_import(data_dir: Path, *args: str) -> None:
    result = CliRunner().invoke(main, ["import", *args, "--quiet", "--data-dir", str(data_dir)])
    gc.unfreeze()  # the CLI freezes what it imported for its own short life; this process goes on
    assert result.exit_code == 0, result.output + (result.stderr or "")


def read_mrc(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as mrc:
        return np.array(mrc.data)


def mrc_voxel_nm(path: Path) -> tuple[float, ...]:
    """Voxel size per data axis from the header: sections, rows, columns lie along cell axes maps, mapr, mapc."""
    with mrcfile.open(path, permissive=True, header_only=True) as mrc:
        header, size = mrc.header, mrc.voxel_size
        cell = {1: float(size.x), 2: float(size.y), 3: float(size.z)}  # Å
        axes = (int(header.maps), int(header.mapr), int(header.mapc))
        volume = int(header.nz) > 1
    return tuple(cell[a] / 10 for a in axes[0 if volume else 1 :])


def int8_map(scratch: Path) -> Path:
    """EMD-3001's densities as 8-bit (MRC mode 0) with its voxel size: legacy maps of that mode are common."""
    source = shared_file(EMDB / "EMD-3001.map")
    data = read_mrc(source)
    path = scratch / "emd-3001-int8.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(np.clip(np.rint(data / np.abs(data).max() * 127), -128, 127).astype(np.int8))
        mrc.voxel_size = tuple(v * 10 for v in mrc_voxel_nm(source)[::-1])  # x, y, z in Å, as the data lie
    return path


def unzipped_worm(scratch: Path) -> Path:
    with zipfile.ZipFile(shared_file(WORM / "xyz_8bit__em_volume_tiff_series.zip")) as archive:
        archive.extractall(scratch)
    return scratch / "image_data" / "xyz_8bit__em_volume_tiff_series"


@dataclass(frozen=True)
class Case:
    name: str
    location: Path | Callable[[Path], Path]  # a file or folder, or made in a scratch folder
    read: Callable[[Path], np.ndarray]  # the pixels, read without Lamella
    voxel_nm: Callable[[Path], tuple[float, ...]]
    args: tuple[str, ...] = ()
    levels: int = field(default=2)  # at least


CASES = [
    Case("fly-png", FLY / "original" / "grayscale_maps",
         lambda p: np.stack([np.asarray(Image.open(f)) for f in sorted(p.glob("iso.*.png"))]),
         lambda _: (10.0, 10.0, 10.0), ("--voxel-size", "10,10,10")),
    Case("fly-tiff", FLY / "raw_uint8_zyx.tif", tifffile.imread, lambda _: (10.0, 10.0, 10.0),
         ("--voxel-size", "10,10,10")),
    Case("worm-tiff", WORM / "c_elegans_em_zyx_uint8.tif", tifffile.imread, lambda _: (1.0, 1.0, 1.0)),
    Case("worm-slices", unzipped_worm, lambda p: np.stack([tifffile.imread(f) for f in sorted(p.glob("*.tif"))]),
         lambda _: (1.0, 1.0, 1.0)),  # no calibration in either: 1 nm assumed
    Case("emd-3197", EMDB / "EMD-3197.map", read_mrc, mrc_voxel_nm, levels=1),  # 20³ fits one chunk
    Case("emd-3001", EMDB / "EMD-3001.map", read_mrc, mrc_voxel_nm),
    Case("emd-3001-int8", int8_map, read_mrc, mrc_voxel_nm),
    Case("montage", MONTAGE, read_mrc, mrc_voxel_nm),
]


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("real-imports")


def whole_cells(volume: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """(cells..., voxels per cell) over the cells the volume fills completely."""
    trimmed = volume[tuple(slice(0, (s // f) * f) for s, f in zip(volume.shape, factors, strict=True))]
    split = [dim for s, f in zip(trimmed.shape, factors, strict=True) for dim in (s // f, f)]
    ndim = volume.ndim
    cells = trimmed.reshape(split).transpose(*range(0, 2 * ndim, 2), *range(1, 2 * ndim, 2))
    return cells.reshape(*cells.shape[:ndim], -1)


def mean_downsample(volume: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    return whole_cells(volume.astype(np.float64), factors).mean(axis=-1)


def mode_downsample(volume: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """The most frequent label of each cell; of equally frequent ones the smallest (tensorstore's rule)."""
    cells = np.sort(whole_cells(volume, factors), axis=-1)
    counts = (cells[..., :, None] == cells[..., None, :]).sum(axis=-1)
    first_most = np.argmax(counts, axis=-1)[..., None]  # sorted, so the first of a tie is the smallest
    return np.take_along_axis(cells, first_most, axis=-1)[..., 0]


def levels_of(group: zarr.Group) -> tuple[list[np.ndarray], list[tuple[float, ...]]]:
    multiscale = group.attrs["ome"]["multiscales"][0]
    scales = [tuple(d["coordinateTransformations"][0]["scale"]) for d in multiscale["datasets"]]
    return [group[d["path"]] for d in multiscale["datasets"]], scales


def factors_between(scales: list[tuple[float, ...]]) -> tuple[int, ...]:
    return tuple(round(b / a) for a, b in zip(scales[0], scales[1], strict=True))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_real_data_through_the_cli(case: Case, real_dir: Path, tmp_path: Path) -> None:
    location = case.location(tmp_path) if callable(case.location) else shared_file(case.location)
    expected = case.read(location)
    lamella_import(real_dir, str(location), "--dataset", "real", "--name", case.name, *case.args)
    group = zarr.open_group(real_dir / "images" / "real" / f"{case.name}.ome.zarr", mode="r")
    assert type(open_ome_zarr(group)).__name__ == "Image"  # ome-zarr-models' validation of OME-Zarr 0.5
    arrays, scales = levels_of(group)
    assert arrays[0].dtype == expected.dtype and arrays[0].shape == expected.shape
    np.testing.assert_array_equal(arrays[0][...], expected)
    np.testing.assert_allclose(scales[0], case.voxel_nm(location), rtol=1e-6)
    assert len(arrays) >= case.levels
    if len(arrays) == 1:
        return
    factors = factors_between(scales)
    assert set(factors) <= {1, 2} and 2 in factors
    mean = mean_downsample(expected, factors)
    level1 = arrays[1][tuple(slice(0, s) for s in mean.shape)]
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(level1, mean, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    else:
        assert np.abs(level1 - mean).max() <= 0.5  # the mean, rounded
        np.testing.assert_array_equal(level1, np.rint(mean))  # ties to even, as tensorstore's downsample rounds


def test_groundtruth_labels_mode_pyramid(real_dir: Path) -> None:
    """Proofread bodies (uint32) as labels of their image: level 1 is each 2x2x2 cell's most frequent body."""
    labels = shared_file(FLY / "groundtruth_bodies_uint32_zyx.tif")
    lamella_import(real_dir, str(FLY / "raw_uint8_zyx.tif"), "--dataset", "gt", "--name", "raw",
                   "--voxel-size", "10,10,10")
    lamella_import(real_dir, str(labels), "--dataset", "gt", "--labels", "raw", "--name", "bodies",
                   "--downsample", "mode")
    image = zarr.open_group(real_dir / "images" / "gt" / "raw.ome.zarr", mode="r")
    assert image["labels"].attrs["ome"]["labels"] == ["bodies"]
    group = image["labels/bodies"]
    assert type(open_ome_zarr(group)).__name__ == "ImageLabel"
    arrays, scales = levels_of(group)
    bodies = tifffile.imread(labels)
    assert arrays[0].dtype == np.uint32
    np.testing.assert_array_equal(arrays[0][...], bodies)
    factors = factors_between(scales)
    assert factors == (2, 2, 2) and group.attrs["ome"]["multiscales"][0]["type"] == "mode"
    np.testing.assert_array_equal(arrays[1][...], mode_downsample(bodies, factors))


def test_fibsem_served_levels(server: Server, sample: Sample) -> None:
    """The cube as the server gives it to zarr-python: level 1 the mean, centred translation, a window."""
    if sample.fibsem is None:
        pytest.skip("../shared/data is absent")
    url = server.get("/api/datasets/fibsem/images/raw").json()["urls"]["zarr"][len("zarr3://"):]
    group = zarr.open_group(url, mode="r")
    np.testing.assert_array_equal(group["0"][:], sample.fibsem)
    level1 = group["1"][:]
    assert level1.shape == (125, 125, 125)
    assert np.abs(level1 - mean_downsample(sample.fibsem, (2, 2, 2))).max() <= 0.5  # mean, rounded
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert datasets[1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [20.0, 20.0, 20.0]},
        {"type": "translation", "translation": [5.0, 5.0, 5.0]},
    ]
    window = group.attrs["ome"]["omero"]["channels"][0]["window"]
    assert 26 <= window["start"] < window["end"] <= 217  # the cube's value range
