"""Import sources on real files: ../shared/data where present, and files generated in tmp_path."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tensorstore as ts
import tifffile
from PIL import Image

from tiling.errors import ImportProblem
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import (
    ArraySource,
    MrcSource,
    RescaledSource,
    SliceFolderSource,
    TensorstoreSource,
    TiffStackSource,
    VipsImageSource,
    open_source,
    percentile_window,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FLY = "fibsem_drosophila_medulla_250cube_neuroproof"
WORM = "fibsem_celegans_empiar10982_neubias_crop"


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is only on development and CI machines)")
    return path


def read_all(source: object) -> np.ndarray:
    return source.read(tuple(slice(0, n) for n in source.shape))  # type: ignore[attr-defined]


def read_blocks(source: object, block: tuple[int, ...]) -> np.ndarray:
    """The whole image assembled from region reads, as write_pyramid reads it."""
    shape = source.shape  # type: ignore[attr-defined]
    out = np.zeros(shape, source.dtype)  # type: ignore[attr-defined]
    for start in np.ndindex(*(-(-s // b) for s, b in zip(shape, block, strict=True))):
        region = tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(start, block, shape, strict=True))
        out[region] = source.read(region)  # type: ignore[attr-defined]
    return out


def problem_of(location: object) -> str:
    with pytest.raises(ImportProblem) as caught:
        source = open_source(str(location))
        read_all(source)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- real data ---------------------------------------------------------------------------------------


def test_fibsem_png_slices_equal_the_stacked_tiff() -> None:
    folder = shared(FLY, "original", "grayscale_maps")
    stacked = shared(FLY, "raw_uint8_zyx.tif")
    with open_source(str(folder)) as slices, open_source(str(stacked)) as tiff:  # type: ignore[attr-defined]
        assert isinstance(slices, SliceFolderSource) and isinstance(tiff, TiffStackSource)
        assert slices.shape == tiff.shape == (250, 250, 250)
        assert slices.dtype == tiff.dtype == np.uint8
        expected = tifffile.imread(stacked)
        np.testing.assert_array_equal(read_blocks(tiff, (64, 100, 90)), expected)
        np.testing.assert_array_equal(read_blocks(slices, (100, 128, 128)), expected)


def test_fibsem_png_glob_in_natural_order() -> None:
    folder = shared(FLY, "original", "grayscale_maps")
    expected = tifffile.imread(shared(FLY, "raw_uint8_zyx.tif"))
    with open_source(str(folder / "iso.26*.png")) as source:  # type: ignore[attr-defined]
        assert source.shape == (100, 250, 250)
        np.testing.assert_array_equal(read_all(source), expected[:100])
    with open_source(str(folder / "iso.28[0-4]?.png")) as source:  # type: ignore[attr-defined]
        np.testing.assert_array_equal(source.read((slice(40, 50), slice(0, 80), slice(100, 250))),
                                      expected[240:250, 0:80, 100:250])


def test_celegans_zip_of_slices_equals_the_stacked_tiff(tmp_path: Path) -> None:
    with zipfile.ZipFile(shared(WORM, "xyz_8bit__em_volume_tiff_series.zip")) as archive:
        archive.extractall(tmp_path)
    folder = tmp_path / "image_data" / "xyz_8bit__em_volume_tiff_series"
    stacked = tifffile.imread(shared(WORM, "c_elegans_em_zyx_uint8.tif"))
    with open_source(str(folder)) as slices, open_source(str(shared(WORM, "c_elegans_em_zyx_uint8.tif"))) as tiff:  # type: ignore[attr-defined]
        assert slices.shape == tiff.shape == (21, 256, 256)
        np.testing.assert_array_equal(read_blocks(slices, (8, 100, 256)), stacked)
        np.testing.assert_array_equal(read_blocks(tiff, (5, 64, 64)), stacked)
        assert tiff.voxel_size_nm is None  # the crop's calibration is absent on purpose
    assert "is a compressed archive" in problem_of(shared(WORM, "xyz_8bit__em_volume_tiff_series.zip"))


@pytest.mark.parametrize(("name", "voxel"), [("EMD-3197.map", (1.14, 1.14, 1.14)), ("EMD-3001.map", None)])
def test_emdb_maps_with_legacy_headers(name: str, voxel: tuple[float, ...] | None) -> None:
    path = shared("mrc_emdb_maps_mrcfile_testdata", name)
    with mrcfile.open(path, permissive=True) as mrc:
        expected = np.asarray(mrc.data)
        header_voxel = mrc.voxel_size
    with open_source(str(path)) as source:  # type: ignore[attr-defined]
        assert isinstance(source, MrcSource)
        assert source.warnings and any("nversion" in w for w in source.warnings)
        assert source.shape == expected.shape and source.dtype == np.float32
        np.testing.assert_array_equal(read_blocks(source, (7, 16, 32)), expected)
        if voxel:
            np.testing.assert_allclose(source.voxel_size_nm, voxel, rtol=1e-5)
        else:  # EMD-3001: columns run along cell z, rows along x, sections along y
            np.testing.assert_allclose(source.voxel_size_nm, (header_voxel.y / 10, header_voxel.x / 10,
                                                              header_voxel.z / 10), rtol=1e-5)
            assert any("axis order" in w for w in source.warnings)


def test_serialem_montage_is_2d_int16() -> None:
    path = shared("mrc_serialem_grid_montage_mobie", "julian-test.mrc")
    with mrcfile.open(path, permissive=True) as mrc:
        expected = np.asarray(mrc.data)
    with open_source(str(path)) as source:  # type: ignore[attr-defined]
        assert source.shape == (1348, 1348) and source.dtype == np.int16
        np.testing.assert_allclose(source.voxel_size_nm, (1788.8, 1788.8), rtol=1e-4)
        assert any("statistics" in w for w in source.warnings)
        np.testing.assert_array_equal(read_blocks(source, (512, 512)), expected)


def test_groundtruth_labels_uint32() -> None:
    path = shared(FLY, "groundtruth_bodies_uint32_zyx.tif")
    expected = tifffile.imread(path)
    with open_source(str(path)) as source:  # type: ignore[attr-defined]
        assert source.dtype == np.uint32 and source.shape == (250, 250, 250)
        np.testing.assert_array_equal(read_blocks(source, (128, 128, 250)), expected)


def test_fei_rgb_tiff_and_rgb_pngs() -> None:
    """Equal RGB channels read as grey; FEI's PixelWidth is the pixel size; colour is refused."""
    path = shared("clem_cryo_fib_sem_lm_3dct_landmarks", "IB_030.tif")
    with open_source(str(path)) as source:  # type: ignore[attr-defined]
        assert source.shape == (941, 1024) and source.dtype == np.uint8
        np.testing.assert_allclose(source.voxel_size_nm, (185.405, 185.405))
        assert any("RGB" in w for w in source.warnings)
        np.testing.assert_array_equal(read_all(source), tifffile.imread(path)[..., 0])
    marked = shared("clem_cryo_fib_sem_lm_3dct_landmarks", "EB_060_marked.tiff")
    with open_source(str(marked)) as source:  # type: ignore[attr-defined]
        assert source.voxel_size_nm is None and any("DPI" in w for w in source.warnings)  # 64 dpi is not a pixel size
    em = shared("clem_array_tomography_deepclem", "EM.png")
    with open_source(str(em)) as source:  # type: ignore[attr-defined]
        assert isinstance(source, VipsImageSource) and source.shape == (530, 1002)
        np.testing.assert_array_equal(read_blocks(source, (200, 300)), np.asarray(Image.open(em))[..., 0])
    colour = shared("clem_array_tomography_deepclem", "Chromatin.png")
    assert "colour" in problem_of(colour) and "Chromatin.png" in problem_of(colour)
    mismatched = shared("clem_array_tomography_deepclem", "EM_raw")
    assert "s8_ds.png" in problem_of(mismatched)  # one section is 951 rows, the others 954


# --- generated TIFFs ---------------------------------------------------------------------------------


def test_ome_tiff_physical_sizes(tmp_path: Path) -> None:
    volume = np.random.default_rng(1).integers(0, 4000, (6, 50, 70), dtype=np.uint16)
    path = tmp_path / "image.ome.tif"
    tifffile.imwrite(path, volume, ome=True, compression="zlib", metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 4.0,
        "PhysicalSizeYUnit": "nm", "PhysicalSizeZ": 300, "PhysicalSizeZUnit": "Å"})
    with open_source(str(path)) as source:  # type: ignore[attr-defined]
        np.testing.assert_allclose(source.voxel_size_nm, (30.0, 4.0, 4.0))
        np.testing.assert_array_equal(read_blocks(source, (4, 32, 32)), volume)
        np.testing.assert_array_equal(source.read((slice(2, 3), slice(10, 11), slice(None))), volume[2:3, 10:11])
    flat = tmp_path / "flat.ome.tif"
    tifffile.imwrite(flat, volume[0], ome=True, metadata={"axes": "YX", "PhysicalSizeX": 2.5, "PhysicalSizeY": 2.5})
    with open_source(str(flat)) as source:  # type: ignore[attr-defined]
        assert source.voxel_size_nm == (2500.0, 2500.0)  # the OME default unit is µm


def test_tiff_resolution_tags(tmp_path: Path) -> None:
    plane = np.arange(40 * 30, dtype=np.uint8).reshape(40, 30)
    tifffile.imwrite(tmp_path / "cm.tif", plane, resolution=(1e5, 2e5), resolutionunit="CENTIMETER")
    with open_source(str(tmp_path / "cm.tif")) as source:  # type: ignore[attr-defined]
        np.testing.assert_allclose(source.voxel_size_nm, (50.0, 100.0))  # (y, x): 1 cm / 2e5, 1 cm / 1e5
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([plane] * 3), resolution=(1e5, 1e5), resolutionunit="CENTIMETER",
                     photometric="minisblack")
    with open_source(str(tmp_path / "stack.tif")) as source:  # type: ignore[attr-defined]
        np.testing.assert_allclose(source.voxel_size_nm, (100.0, 100.0, 100.0))
        assert any("no z spacing" in w for w in source.warnings)
    tifffile.imwrite(tmp_path / "print.tif", plane, resolution=(72, 72), resolutionunit="INCH")
    with open_source(str(tmp_path / "print.tif")) as source:  # type: ignore[attr-defined]
        assert source.voxel_size_nm is None
    tifffile.imwrite(tmp_path / "imagej.tif", np.stack([plane] * 3), imagej=True, resolution=(250, 250),
                     metadata={"spacing": 0.03, "unit": "micron", "axes": "ZYX"})
    with open_source(str(tmp_path / "imagej.tif")) as source:  # type: ignore[attr-defined]
        np.testing.assert_allclose(source.voxel_size_nm, (30.0, 4.0, 4.0))


def test_large_tiled_tiff_through_vips_and_tifffile(tmp_path: Path) -> None:
    image = np.random.default_rng(2).integers(0, 65535, (6000, 5000), dtype=np.uint16)
    path = tmp_path / "montage.tif"
    tifffile.imwrite(path, image, tile=(512, 512), compression="zlib")
    with VipsImageSource(path) as vips:
        assert vips.shape == (6000, 5000) and vips.dtype == np.uint16
        for region in [(slice(0, 2048), slice(0, 2048)), (slice(1000, 3100), slice(4000, 5000)),
                       (slice(5999, 6000), slice(0, 5000)), (slice(300, 301), slice(17, 18))]:
            np.testing.assert_array_equal(vips.read(region), image[region])
    with open_source(str(path)) as source:  # type: ignore[attr-defined]
        assert isinstance(source, TiffStackSource) and not source._band_cache  # tiles: read in part
        np.testing.assert_array_equal(source.read((slice(1000, 3100), slice(4000, 5000))), image[1000:3100, 4000:])


def test_large_2d_tiffs_routed_to_vips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One large compressed 2D image goes to libvips (metadata still from tifffile); the rest stays."""
    import tiling.source_formats

    monkeypatch.setattr(tiling.source_formats, "VIPS_MIN_PIXELS", 300 * 200)
    plane = np.random.default_rng(12).integers(0, 4000, (300, 200), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "tiled.tif", plane, tile=(64, 64), compression="zlib", resolution=(2e5, 2e5),
                     resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "strips.tif", plane, compression="zlib", rowsperstrip=32)
    tifffile.imwrite(tmp_path / "plain.tif", plane)  # uncompressed: memory-mapped, faster than libvips
    tifffile.imwrite(tmp_path / "small.tif", plane[:299], compression="zlib")
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([plane, plane]), compression="zlib")
    for name, kind in (("tiled", VipsImageSource), ("strips", VipsImageSource), ("plain", TiffStackSource),
                       ("small", TiffStackSource), ("stack", TiffStackSource)):
        with open_source(str(tmp_path / f"{name}.tif")) as source:  # type: ignore[attr-defined]
            assert isinstance(source, kind), name
            expected = np.stack([plane, plane]) if name == "stack" else plane[: source.shape[0]]
            np.testing.assert_array_equal(read_blocks(source, (1, 128, 96)[-expected.ndim :]), expected)
    with open_source(str(tmp_path / "tiled.tif")) as source:  # type: ignore[attr-defined]
        np.testing.assert_allclose(source.voxel_size_nm, (50.0, 50.0))  # from the resolution tags


def test_compressed_stack_and_strips_read_by_region(tmp_path: Path) -> None:
    volume = np.random.default_rng(3).normal(size=(9, 130, 110)).astype(np.float32)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume, compression="zlib", rowsperstrip=16)
    with open_source(str(path)) as source:  # type: ignore[attr-defined]
        assert source._band_cache  # strips: decoded once per row band
        np.testing.assert_array_equal(read_blocks(source, (4, 64, 50)), volume)
        np.testing.assert_array_equal(source.read((slice(1, 9, 3), slice(None, None, 7))), volume[1:9:3, ::7])
        assert source.read((slice(3, 3), slice(0, 5), slice(0, 5))).shape == (0, 5, 5)
    big_endian = tmp_path / "be.tif"
    tifffile.imwrite(big_endian, volume[0].astype(">u2"), byteorder=">")
    with open_source(str(big_endian)) as source:  # type: ignore[attr-defined]
        assert source.dtype == np.dtype("=u2") and source.read((slice(0, 2),)).dtype.isnative


def test_slice_folder_natural_order_and_glob(tmp_path: Path) -> None:
    volume = np.random.default_rng(4).integers(0, 60000, (12, 20, 30), dtype=np.uint16)
    for z in range(12):
        tifffile.imwrite(tmp_path / f"s{z}.tif", volume[z], compression="zlib")
        Image.fromarray(volume[z]).save(tmp_path / f"p{z}.png")
    (tmp_path / "notes.txt").write_text("not a slice")
    with open_source(str(tmp_path / "s*.tif")) as source:  # type: ignore[attr-defined]
        np.testing.assert_array_equal(read_all(source), volume)
    with open_source(str(tmp_path / "p*.png")) as source:  # type: ignore[attr-defined]
        assert source.dtype == np.uint16
        np.testing.assert_array_equal(read_blocks(source, (5, 8, 30)), volume)
        np.testing.assert_array_equal(source.read((slice(2, 11), slice(3, 9), slice(4, 20))), volume[2:11, 3:9, 4:20])


# --- MRC -----------------------------------------------------------------------------------------------


def test_mrc_sections_imod_bytes_and_dtypes(tmp_path: Path) -> None:
    section = np.arange(12 * 16, dtype=np.int16).reshape(1, 12, 16)
    with mrcfile.new(tmp_path / "one.mrc") as mrc:
        mrc.set_data(section)
        mrc.voxel_size = (20.0, 30.0, 40.0)
    with open_source(str(tmp_path / "one.mrc")) as source:  # type: ignore[attr-defined]
        assert source.shape == (12, 16) and source.voxel_size_nm == (3.0, 2.0)
        assert not source.warnings  # written by mrcfile: strict MRC2014
        np.testing.assert_array_equal(read_all(source), section[0])
    raw = np.array([[0, 100, 200, 255]], dtype=np.uint8)
    with mrcfile.new(tmp_path / "imod.mrc") as mrc:
        mrc.set_data(raw.view(np.int8))
    data = bytearray((tmp_path / "imod.mrc").read_bytes())
    data[152:160] = struct.pack("<ii", 1146047817, 0)  # IMOD stamp, flags: bytes unsigned
    (tmp_path / "imod.mrc").write_bytes(bytes(data))
    with open_source(str(tmp_path / "imod.mrc")) as source:  # type: ignore[attr-defined]
        assert source.dtype == np.uint8
        np.testing.assert_array_equal(read_all(source), raw)
    with mrcfile.new(tmp_path / "complex.mrc") as mrc:
        mrc.set_data(np.zeros((2, 4, 4), np.complex64))
    assert "complex64" in problem_of(tmp_path / "complex.mrc") and "complex.mrc" in problem_of(tmp_path / "complex.mrc")


# --- Zarr, N5, precomputed ------------------------------------------------------------------------------


@pytest.fixture
def volume() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 60000, (5, 6, 7), dtype=np.uint16)  # (z, y, x)


def write_ts(spec: dict[str, object], data: np.ndarray) -> None:
    store = ts.open({**spec, "create": True}).result()
    store[ts.d[:].translate_to[0]].write(data).result()


def test_zarr_v2_and_v3_arrays(tmp_path: Path, volume: np.ndarray) -> None:
    v2, v3 = tmp_path / "v2.zarr", tmp_path / "v3.zarr"
    write_ts({"driver": "zarr", "kvstore": {"driver": "file", "path": str(v2)},
              "metadata": {"shape": [5, 6, 7], "chunks": [2, 4, 3], "dtype": ">u2"}}, volume)
    write_ts({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(v3)},
              "metadata": {"shape": [1, 5, 6, 7], "data_type": "uint16",
                           "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 2, 4, 3]}}}},
             volume[None])
    for location in (str(v2), f"zarr://{v2}", f"zarr3://{v3}", str(v3)):
        with open_source(location) as source:  # type: ignore[attr-defined]
            assert isinstance(source, TensorstoreSource)
            assert source.shape == (5, 6, 7) and source.dtype == np.dtype("=u2")
            assert source.voxel_size_nm is None
            np.testing.assert_array_equal(read_blocks(source, (2, 5, 5)), volume)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_group_opens_level_0(tmp_path: Path, version: str) -> None:
    image = np.random.default_rng(6).integers(0, 255, (20, 40, 60), dtype=np.uint8)
    path = tmp_path / "image.ome.zarr"
    write_pyramid(ArraySource(image), path, voxel_size=(30.0, 4.0, 4.0),
                  options=PyramidOptions(ome_version=version, chunk=16))  # type: ignore[arg-type]
    for location in (str(path), f"{'zarr3' if version == '0.5' else 'zarr'}://{path}", str(path / "0")):
        with open_source(location) as source:  # type: ignore[attr-defined]
            assert source.voxel_size_nm == (30.0, 4.0, 4.0)
            np.testing.assert_array_equal(read_blocks(source, (16, 32, 32)), image)


def test_n5_axes_follow_attributes_json(tmp_path: Path, volume: np.ndarray) -> None:
    """N5 lists dimensions x first and stores blocks x-fastest; the source shows (z, y, x)."""
    hand = tmp_path / "hand.n5"  # written as a Java N5 writer would, without tensorstore
    (hand / "0" / "0").mkdir(parents=True)
    (hand / "attributes.json").write_text(json.dumps({
        "dimensions": [7, 6, 5], "blockSize": [7, 6, 5], "dataType": "uint16", "compression": {"type": "raw"},
        "pixelResolution": {"dimensions": [4.0, 4.0, 30.0], "unit": "nm"}}))
    (hand / "0" / "0" / "0").write_bytes(struct.pack(">HHIII", 0, 3, 7, 6, 5) + volume.astype(">u2").tobytes())
    written = tmp_path / "ts.n5"
    write_ts({"driver": "n5", "kvstore": {"driver": "file", "path": str(written / "s0")},
              "metadata": {"dimensions": [7, 6, 5], "blockSize": [4, 4, 2], "dataType": "uint16",
                           "compression": {"type": "gzip"}}}, volume.T)
    (written / "attributes.json").write_text(json.dumps({"n5": "2.0.0", "resolution": [8, 8, 0.06], "units":
                                                         ["nm", "nm", "um"]}))
    assert json.loads((written / "s0" / "attributes.json").read_text())["dimensions"] == [7, 6, 5]
    for location, voxel in ((str(hand), (30.0, 4.0, 4.0)), (f"n5://{written}", (60.0, 8.0, 8.0))):
        with open_source(location) as source:  # type: ignore[attr-defined]
            assert source.shape == (5, 6, 7)
            np.testing.assert_allclose(source.voxel_size_nm, voxel)
            np.testing.assert_array_equal(read_blocks(source, (2, 4, 4)), volume)


def test_precomputed_volume(tmp_path: Path, volume: np.ndarray) -> None:
    path = tmp_path / "precomputed"
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(path)},
                     "multiscale_metadata": {"type": "image", "data_type": "uint16", "num_channels": 1},
                     "scale_metadata": {"size": [7, 6, 5], "resolution": [4, 5, 30], "encoding": "raw",
                                        "chunk_size": [4, 4, 2], "voxel_offset": [10, 20, 30]},
                     "create": True}).result()
    store[ts.d[:].translate_to[0]][..., 0].write(volume.T).result()  # x, y, z, channel on disk
    for location in (str(path), f"precomputed://{path}"):
        with open_source(location) as source:  # type: ignore[attr-defined]
            assert source.shape == (5, 6, 7) and source.voxel_size_nm == (30.0, 5.0, 4.0)
            np.testing.assert_array_equal(read_blocks(source, (3, 4, 5)), volume)
            np.testing.assert_array_equal(source.read((slice(1, 2), slice(2, 5), slice(0, 1))), volume[1:2, 2:5, 0:1])


# --- intensity windows -----------------------------------------------------------------------------------


class CountingSource(ArraySource):
    """An ArraySource that counts the voxels read from it."""

    voxels_read: int = 0

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        data = super().read(region)
        self.voxels_read += data.size
        return data


def test_percentile_window_and_rescaling() -> None:
    data = np.random.default_rng(7).normal(100.0, 20.0, (40, 300, 500)).astype(np.float32)
    data[0, 0, :10] = np.nan
    source = CountingSource(data, voxel_size_nm=(5.0, 5.0, 5.0))
    low, high = percentile_window(source, 1, 99, max_samples=200_000)
    assert source.voxels_read <= 200_000
    exact_low, exact_high = np.nanpercentile(data, [1, 99])
    assert abs(low - exact_low) < 2 and abs(high - exact_high) < 2
    small = ArraySource(data[:2, :50, :60])
    assert percentile_window(small, 0, 100) == (float(np.nanmin(small.array)), float(np.nanmax(small.array)))
    rescaled = RescaledSource(source, 60.0, 140.0)
    assert rescaled.dtype == np.uint8 and rescaled.shape == data.shape and rescaled.voxel_size_nm == (5.0, 5.0, 5.0)
    out = rescaled.read((slice(0, 2), slice(0, 300), slice(0, 500)))
    expected = np.clip(np.rint((np.nan_to_num(data[:2], nan=60.0) - 60.0) * 255 / 80), 0, 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected).max() <= 1  # float32 arithmetic: a rounding tie may differ
    assert (out[data[:2] <= 60] == 0).all() and (out[data[:2] >= 140] == 255).all()
    assert out[0, 0, 0] == 0 and np.isnan(data[0, 0, 0])  # NaN maps to 0 and the source is untouched
    with pytest.raises(ValueError):
        RescaledSource(source, 5.0, 5.0)


# --- bad inputs -------------------------------------------------------------------------------------------


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    assert "no such file" in problem_of(tmp_path / "missing.tif")
    (tmp_path / "table.xyz").write_text("1,2,3\n")
    assert "unsupported format" in problem_of(tmp_path / "table.xyz")

    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, np.ones((8, 64, 64), np.uint8))
    (tmp_path / "cut.tif").write_bytes(whole.read_bytes()[:5000])
    assert "truncated" in problem_of(tmp_path / "cut.tif") and "cut.tif" in problem_of(tmp_path / "cut.tif")
    tifffile.imwrite(whole, np.random.default_rng(8).integers(0, 255, (8, 64, 64), np.uint8), compression="zlib")
    for fraction in (0.5, 0.95):
        cut = tmp_path / f"cut-zlib-{fraction}.tif"
        cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * fraction)])
        assert cut.name in problem_of(cut)
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, np.ones((600, 500), np.uint16), tile=(128, 128), compression="zlib")
    (tmp_path / "cut-tiled.tif").write_bytes(tiled.read_bytes()[: tiled.stat().st_size * 3 // 4])
    assert "cut-tiled.tif" in problem_of(tmp_path / "cut-tiled.tif")
    Image.fromarray(np.ones((300, 300), np.uint8)).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    assert "cut.png" in problem_of(tmp_path / "cut.png")

    (tmp_path / "bad.mrc").write_bytes(b"\x00" * 100)
    assert "MRC header is corrupt" in problem_of(tmp_path / "bad.mrc")
    with mrcfile.new(tmp_path / "full.mrc") as mrc:
        mrc.set_data(np.ones((4, 32, 32), np.float32))
    (tmp_path / "short.mrc").write_bytes((tmp_path / "full.mrc").read_bytes()[:3000])
    assert "short.mrc" in problem_of(tmp_path / "short.mrc")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tifffile.imwrite(mixed / "a1.tif", np.ones((16, 16), np.uint8))
    tifffile.imwrite(mixed / "a2.tif", np.ones((16, 16), np.uint8))
    tifffile.imwrite(mixed / "a10.tif", np.ones((16, 17), np.uint8))
    assert "a10.tif" in problem_of(mixed) and "(16, 17)" in problem_of(mixed)
    (mixed / "a10.tif").unlink()
    tifffile.imwrite(mixed / "a3.tif", np.ones((16, 16), np.uint16))
    assert "a3.tif" in problem_of(mixed) and "uint16" in problem_of(mixed)
    (mixed / "a3.tif").unlink()
    tifffile.imwrite(mixed / "a4.tif", np.ones((2, 16, 16), np.uint8))
    assert "a4.tif" in problem_of(mixed) and "2D" in problem_of(mixed)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no TIFF or PNG slices" in problem_of(empty) and "empty" in problem_of(empty)
    assert "no TIFF or PNG slices match" in problem_of(empty / "*.tif")

    tifffile.imwrite(tmp_path / "double.tif", np.ones((4, 4), np.float64))
    assert "float64" in problem_of(tmp_path / "double.tif") and "double.tif" in problem_of(tmp_path / "double.tif")
    with mrcfile.new(tmp_path / "half.mrc") as mrc:
        mrc.set_data(np.ones((4, 4), np.float16))
    assert "float16" in problem_of(tmp_path / "half.mrc")
    zarr_f8 = tmp_path / "f8.zarr"
    write_ts({"driver": "zarr", "kvstore": {"driver": "file", "path": str(zarr_f8)},
              "metadata": {"shape": [3, 3], "chunks": [3, 3], "dtype": "<f8"}}, np.ones((3, 3)))
    assert "float64" in problem_of(zarr_f8) and "f8.zarr" in problem_of(zarr_f8)
    assert "no such file" in problem_of(f"zarr://{tmp_path / 'nothing.zarr'}")
    colour = np.zeros((20, 20, 3), np.uint8)
    colour[..., 0] = 255
    tifffile.imwrite(tmp_path / "red.tif", colour, photometric="rgb")
    assert "colour" in problem_of(tmp_path / "red.tif") and "red.tif" in problem_of(tmp_path / "red.tif")


def test_sniffs_files_without_a_known_suffix(tmp_path: Path) -> None:
    plane = np.arange(64, dtype=np.uint8).reshape(8, 8)
    tifffile.imwrite(tmp_path / "scan.dat", plane)
    with open_source(str(tmp_path / "scan.dat")) as source:  # type: ignore[attr-defined]
        assert isinstance(source, TiffStackSource)
        np.testing.assert_array_equal(read_all(source), plane)


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.parametrize("limit", [None, 0])
def test_memory_mapped_stack_keeps_its_mapping_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       limit: int | None) -> None:
    """Blocks of a band share their mapped rows until the band ends, unless more is mapped than allowed.

    With large folios in the page cache the kernel maps up to 2 MiB per row touched, more than the
    band's rows; a limit of 0 stands in for that here: every slab read is let go at once.
    """
    from tiling import source_formats

    if limit is not None:
        monkeypatch.setattr(source_formats, "MAPPED_LIMIT_BYTES", limit)
        monkeypatch.setattr(source_formats, "MAPPED_BAND_FACTOR", 0)
        monkeypatch.setattr(source_formats, "MAPPED_SLAB_BYTES", 1)  # one plane per slab
    volume = np.random.default_rng(9).integers(0, 255, (8, 512, 4096), dtype=np.uint8)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, volume)
    band_kib = 8 * 256 * 4096 // 1024  # the rows of one band of 256-row blocks: 8 MiB
    with open_source(str(path)) as source:  # type: ignore[attr-defined]
        for y in (0, 256):
            for x in range(0, 4096, 512):
                block = (slice(0, 8), slice(y, y + 256), slice(x, x + 512))
                np.testing.assert_array_equal(source.read(block), volume[block])
                mapped = _mapped_kib(path)
                if x + 512 == 4096:
                    assert mapped == 0  # the band is done
                elif limit is None:
                    assert mapped >= band_kib  # its rows stay mapped for the next block of the band
                else:
                    assert mapped <= band_kib // 2  # let go as it is read (the kernel's RSS count lags a little)
