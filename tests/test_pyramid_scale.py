"""Builds that survive interruption and run on a Dask cluster, with identical output."""

import functools
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource, open_source

OPTIONS = PyramidOptions(chunk=16, shard_chunks=2, name="t")


def volume() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 60000, size=(40, 96, 80), dtype=np.uint16)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Interrupting(ArraySource):
    """Stops (as Ctrl-C would) after a number of block reads."""

    def __init__(self, array: np.ndarray, after: int) -> None:
        super().__init__(array)
        self.after = after

    def read(self, region):  # type: ignore[no-untyped-def]
        if self.after == 0:
            raise KeyboardInterrupt
        self.after -= 1
        return super().read(region)


class Counting(ArraySource):
    reads = 0

    def read(self, region):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().read(region)


def test_resume_skips_finished_blocks(tmp_path: Path) -> None:
    data = volume()
    reference = tmp_path / "ref.ome.zarr"
    write_pyramid(ArraySource(data), reference, voxel_size=(8, 8, 8), options=OPTIONS)
    counting = Counting(data)
    write_pyramid(counting, tmp_path / "all.ome.zarr", voxel_size=(8, 8, 8), options=OPTIONS)
    total_blocks = counting.reads

    target = tmp_path / "out.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        write_pyramid(Interrupting(data, after=5), target, voxel_size=(8, 8, 8), options=OPTIONS)
    partial = tmp_path / ".out.ome.zarr.partial"
    assert partial.is_dir() and not target.exists()
    resumed = Counting(data)
    write_pyramid(resumed, target, voxel_size=(8, 8, 8), options=OPTIONS, resume=True)
    assert 0 < resumed.reads <= total_blocks - 4  # the finished blocks were not read again
    assert files(target) == files(reference)
    assert not partial.exists()


def test_without_resume_a_partial_build_starts_over(tmp_path: Path) -> None:
    data = volume()
    target = tmp_path / "out.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        write_pyramid(Interrupting(data, after=3), target, voxel_size=(8, 8, 8), options=OPTIONS)
    fresh = Counting(data)
    write_pyramid(fresh, target, voxel_size=(8, 8, 8), options=OPTIONS)
    reference = Counting(data)
    write_pyramid(reference, tmp_path / "ref.ome.zarr", voxel_size=(8, 8, 8), options=OPTIONS)
    assert fresh.reads == reference.reads
    assert files(target) == files(tmp_path / "ref.ome.zarr")


def test_dask_cluster_output_is_identical(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    data = volume()
    tiff = tmp_path / "stack.tif"
    tifffile.imwrite(tiff, data)
    single = tmp_path / "single.ome.zarr"
    write_pyramid(open_source(str(tiff)), single, voxel_size=(8, 8, 8), options=OPTIONS)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        write_pyramid(open_source(str(tiff)), tmp_path / "cluster.ome.zarr", voxel_size=(8, 8, 8), options=OPTIONS,
                      client=client, source_opener=functools.partial(open_source, str(tiff)))
        assert len(client.scheduler_info()["workers"]) == 2
    assert files(tmp_path / "cluster.ome.zarr") == files(single)


@pytest.mark.parametrize("after", [2, 30, 44])
def test_resume_after_coarse_levels_started(tmp_path: Path, after: int) -> None:
    """Interrupted with some coarse-level shards stored and others not: the resumed build is identical."""
    data = np.random.default_rng(12).integers(0, 60000, size=(80, 40, 40), dtype=np.uint16)
    options = PyramidOptions(chunk=8, shard_chunks=2)  # 45 blocks of 16³; level 2: two shards along z
    reference = tmp_path / "ref.ome.zarr"
    write_pyramid(ArraySource(data), reference, voxel_size=(8, 8, 8), options=options)
    target = tmp_path / "out.ome.zarr"
    with pytest.raises(KeyboardInterrupt):
        write_pyramid(Interrupting(data, after=after), target, voxel_size=(8, 8, 8), options=options)
    stored = (tmp_path / ".out.ome.zarr.partial" / "blocks-done.txt").read_text().split()
    assert len([key for key in stored if key.startswith("0:")]) == after
    if after == 44:  # the first level-2 shard needs the first 36 blocks; it is written before the last one
        assert "2:0" in stored and "2:1" not in stored
        # As if interrupted just before that shard was written: the resumed build must write it first.
        log = tmp_path / ".out.ome.zarr.partial" / "blocks-done.txt"
        log.write_text("".join(f"{key}\n" for key in stored if key != "2:0"))
        shutil.rmtree(tmp_path / ".out.ome.zarr.partial" / "2" / "c")
    write_pyramid(ArraySource(data), target, voxel_size=(8, 8, 8), options=options, resume=True)
    assert files(target) == files(reference)
