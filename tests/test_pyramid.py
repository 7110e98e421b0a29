"""Pyramids written by tiling.pyramid: layout, metadata validity and independent readers."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from tiling import pyramid
from tiling.errors import ImportProblem
from tiling.pyramid import PyramidOptions, Scratch, plan_pyramid, reduce_block, write_pyramid
from tiling.sources import ArraySource


def test_plan_waits_for_xy_before_z() -> None:
    levels = plan_pyramid((100, 1024, 1024), (40.0, 10.0, 10.0), (64, 64, 64))
    assert [lv.factors for lv in levels[1:3]] == [(1, 2, 2), (1, 2, 2)]
    assert levels[3].factors == (2, 2, 2)
    assert all(s <= c for s, c in zip(levels[-1].shape, (64, 64, 64), strict=True))
    assert all(s <= c for s, c in zip(levels[-2].shape, (64, 64, 64), strict=True)) is False


def test_plan_isotropic_and_translation() -> None:
    levels = plan_pyramid((128, 128, 128), (8.0, 8.0, 8.0), (64, 64, 64))
    assert [lv.shape for lv in levels] == [(128, 128, 128), (64, 64, 64)]
    assert levels[1].translation == (4.0, 4.0, 4.0)  # centre of a 2x voxel


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_written_pyramid_reads_back(tmp_path: Path, version: str) -> None:
    data = np.random.default_rng(1).integers(0, 255, size=(20, 70, 90), dtype=np.uint8)
    out = tmp_path / "img.ome.zarr"
    levels = write_pyramid(ArraySource(data), out, voxel_size=(50.0, 5.0, 5.0),
                           options=PyramidOptions(ome_version=version, chunk=32))  # type: ignore[arg-type]
    group = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(group["0"][:], data)
    assert group["1"].shape == levels[1].shape
    # Level 1 is the mean of 2x2 (x, y) blocks: check one block independently.
    expected = np.round(data[0, 0:2, 0:2].mean())
    assert abs(int(group["1"][0, 0, 0]) - expected) <= 1
    attrs = group.attrs.asdict()
    ome = attrs["ome"] if version == "0.5" else attrs
    assert ome["multiscales"][0]["axes"][2] == {"name": "x", "type": "space", "unit": "nanometer"}
    assert "window" in ome["omero"]["channels"][0]
    assert not list(tmp_path.glob(".*partial*"))


def test_sharded_layout(tmp_path: Path) -> None:
    data = np.zeros((64, 300, 300), np.uint16)
    write_pyramid(ArraySource(data), tmp_path / "s.ome.zarr", voxel_size=(8.0, 8.0, 8.0))
    meta = json.loads((tmp_path / "s.ome.zarr" / "0" / "zarr.json").read_text())
    codec = meta["codecs"][0]
    assert codec["name"] == "sharding_indexed" and codec["configuration"]["chunk_shape"] == [64, 64, 64]
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "s.ome.zarr/0")}}).result()
    assert array.shape == (64, 300, 300)


def test_validates_against_ome_zarr_models(tmp_path: Path) -> None:
    from ome_zarr_models import open_ome_zarr

    data = np.random.default_rng(2).integers(0, 255, size=(16, 64, 64), dtype=np.uint8)
    for version in ("0.5", "0.4"):
        out = tmp_path / f"v{version}.ome.zarr"
        write_pyramid(ArraySource(data), out, voxel_size=(8.0, 8.0, 8.0),
                      options=PyramidOptions(ome_version=version, chunk=32))  # type: ignore[arg-type]
        model = open_ome_zarr(zarr.open_group(out, mode="r"))
        assert type(model).__name__ == "Image"


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    class Failing(ArraySource):
        def read(self, region):  # type: ignore[no-untyped-def]
            raise OSError("disk on fire")

    with pytest.raises(OSError):
        write_pyramid(Failing(np.zeros((8, 8, 8), np.uint8)), tmp_path / "x.ome.zarr", voxel_size=(1, 1, 1))
    assert list(tmp_path.iterdir()) == []


def test_failure_with_shard_writes_in_flight_leaves_nothing(tmp_path: Path) -> None:
    class FailingLater(ArraySource):
        reads = 0

        def read(self, region):  # type: ignore[no-untyped-def]
            self.reads += 1
            if self.reads == 6:
                raise OSError("disk on fire")
            return super().read(region)

    data = np.random.default_rng(6).integers(0, 255, size=(32, 128, 128), dtype=np.uint8)
    with pytest.raises(OSError, match="fire"):
        write_pyramid(FailingLater(data), tmp_path / "x.ome.zarr", voxel_size=(1, 1, 1),
                      options=PyramidOptions(chunk=16, shard_chunks=2))  # 32-voxel blocks: 64 of them
    assert list(tmp_path.iterdir()) == []


def test_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ImportProblem, match="complex"):
        write_pyramid(ArraySource(np.zeros((4, 4, 4), np.complex64)), tmp_path / "c", voxel_size=(1, 1, 1))


REDUCE_CASES = [((9, 7, 13), (2, 2, 2)), ((70, 6, 4), (1, 2, 2)), ((65, 12), (2, 2)), ((1, 3, 5), (1, 2, 2)),
                ((67, 5, 3), (2, 1, 2))]


@pytest.mark.parametrize("slab_bytes", [1, 300, None])  # one cell per slab; a few planes, a short last slab; default
@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"])
def test_reduce_block_is_the_downsample_driver(dtype: str, slab_bytes: int | None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Level 1 is reduced from blocks in memory: the same values tensorstore's downsample driver gives."""
    if slab_bytes is not None:
        monkeypatch.setattr(pyramid, "MEAN_SLAB_BYTES", slab_bytes)
    rng = np.random.default_rng(3)
    scratch = Scratch()  # shared by every case: sums of one block must not leak into the next
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    for shape, factors in REDUCE_CASES:
        if dtype == "float32":
            block = rng.normal(0, 1000, shape).astype(np.float32)
        else:
            info = np.iinfo(dtype)
            block = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
        for method in ("mean", "stride", "mode"):
            expected = ts.downsample(ts.array(block), list(factors), method).read().result()
            got = reduce_block(block, factors, method)
            np.testing.assert_array_equal(reduce_block(block, factors, method, scratch), got)
            kept.append((reduce_block(block, factors, method, scratch), got.copy()))
            assert got.dtype == block.dtype and got.shape == expected.shape
            if dtype == "float32" and method == "mean":  # summed in float64 here, in float32 there
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-3)
            else:
                np.testing.assert_array_equal(got, expected, err_msg=f"{shape} {factors} {method}")
    for with_scratch, fresh in kept:  # results are new arrays, never scratch reused later
        np.testing.assert_array_equal(with_scratch, fresh)


def test_level1_shards_are_one_reduced_block(tmp_path: Path) -> None:
    """Level 1 written from level-0 blocks gets shards of one reduced block: each written once, whole."""
    data = np.random.default_rng(5).integers(0, 255, size=(40, 300, 300), dtype=np.uint8)
    out = tmp_path / "s.ome.zarr"
    write_pyramid(ArraySource(data), out, voxel_size=(8.0, 8.0, 8.0), options=PyramidOptions(chunk=16))

    def shard(level: str) -> list[int]:
        return json.loads((out / level / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"]

    assert shard("0") == [48, 64, 64]  # 4 chunks per edge, z cut to the image
    assert shard("1") == [32, 32, 32]  # a level-0 block halved (z: the whole level, in whole chunks)
    assert shard("2") == [10, 64, 64]
    group = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(group["1"][:], ts.downsample(ts.array(data), [2, 2, 2], "mean").read().result())


def test_whole_shards_are_flushed_once_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shard written whole goes to disk as soon as it is stored, not in one flush at the end."""
    flushed_alone: list[str] = []
    in_tree = threading.local()
    fsync, sync_tree = pyramid._fsync, pyramid.sync_tree

    def spy_fsync(path: str | Path, **kwargs: bool) -> None:
        if not getattr(in_tree, "active", False):
            flushed_alone.append(str(path))
        fsync(path, **kwargs)

    def spy_sync_tree(root: Path, **kwargs: bool) -> None:
        in_tree.active = True
        try:
            sync_tree(root, **kwargs)
        finally:
            in_tree.active = False

    monkeypatch.setattr(pyramid, "_fsync", spy_fsync)
    monkeypatch.setattr(pyramid, "sync_tree", spy_sync_tree)
    data = np.random.default_rng(6).integers(0, 255, size=(40, 300, 300), dtype=np.uint8)
    out = tmp_path / "s.ome.zarr"
    write_pyramid(ArraySource(data), out, voxel_size=(8.0, 8.0, 8.0), options=PyramidOptions(chunk=16))
    partial = tmp_path / ".s.ome.zarr.partial"
    for level in ("0", "1", "2"):
        shards = sorted(str(p.relative_to(out)) for p in (out / level / "c").rglob("*") if p.is_file())
        assert len(shards) > 1
        assert shards == sorted(str(Path(p).relative_to(partial)) for p in flushed_alone
                                if Path(p).is_relative_to(partial / level / "c"))


@pytest.mark.parametrize("labels", [False, True])
def test_level1_from_blocks_equals_downsampling_level0(tmp_path: Path, labels: bool) -> None:
    data = np.random.default_rng(4).integers(0, 7 if labels else 60000, size=(37, 70, 45), dtype=np.uint16)
    options = PyramidOptions(chunk=8, shard_chunks=2, labels=labels)  # many 16-voxel blocks, odd far edges
    write_pyramid(ArraySource(data), tmp_path / "p.ome.zarr", voxel_size=(8.0, 8.0, 8.0), options=options)
    group = zarr.open_group(tmp_path / "p.ome.zarr", mode="r")
    expected = ts.downsample(ts.array(data), [2, 2, 2], "mode" if labels else "mean").read().result()
    np.testing.assert_array_equal(group["1"][:], expected)


@pytest.mark.parametrize(
    ("shape", "voxel", "options"),
    [
        ((37, 70, 45), (8.0, 8.0, 8.0), PyramidOptions(chunk=8, shard_chunks=2)),  # level 1 from blocks in memory
        ((37, 70, 45), (8.0, 8.0, 8.0), PyramidOptions(chunk=5, shard_chunks=3)),  # 15-voxel blocks: from level 0
        ((9, 130, 110), (40.0, 5.0, 5.0), PyramidOptions(chunk=8, shard_chunks=2)),  # z waits for x/y
        ((150, 170), (5.0, 5.0), PyramidOptions(chunk=8, shard_chunks=2)),  # 2D
        ((37, 70, 45), (8.0, 8.0, 8.0), PyramidOptions(chunk=8, shard_chunks=2, ome_version="0.4")),
    ],
)
def test_every_level_is_the_level_before_downsampled(
    tmp_path: Path, shape: tuple[int, ...], voxel: tuple[float, ...], options: PyramidOptions
) -> None:
    """Coarse levels are written while level 0 still is, each shard once its input is stored."""
    data = np.random.default_rng(6).integers(0, 60000, size=shape, dtype=np.uint16)
    levels = write_pyramid(ArraySource(data), tmp_path / "p.ome.zarr", voxel_size=voxel, options=options)
    assert len(levels) >= 4
    group = zarr.open_group(tmp_path / "p.ome.zarr", mode="r")
    np.testing.assert_array_equal(group["0"][:], data)
    for i in range(1, len(levels)):
        expected = ts.downsample(ts.array(group[str(i - 1)][:]), list(levels[i].factors), "mean").read().result()
        np.testing.assert_array_equal(group[str(i)][:], expected, err_msg=f"level {i}")
