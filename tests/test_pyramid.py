"""Pyramids written by tiling.pyramid: layout, metadata validity and independent readers."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from tiling.errors import ImportProblem
from tiling.pyramid import PyramidOptions, plan_pyramid, write_pyramid
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


def test_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ImportProblem, match="complex"):
        write_pyramid(ArraySource(np.zeros((4, 4, 4), np.complex64)), tmp_path / "c", voxel_size=(1, 1, 1))
