"""Shards encoded by tiling.shards read back, voxel for voxel, in tensorstore and zarr-python."""

import mmap
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from tiling.pyramid import PyramidOptions, _array_spec
from tiling.shards import MISSING, ShardLayout

OPTIONS = PyramidOptions(chunk=16, shard_chunks=2)


def write_shards(folder: Path, data: np.ndarray, options: PyramidOptions = OPTIONS) -> ShardLayout:
    """An array created by tensorstore whose shard files are all written by ``ShardLayout.encode``."""
    shape, shard = data.shape, options.shard_shape(data.shape)
    ts.open(_array_spec(folder, shape, shard, data.dtype, ["z", "y", "x"][-data.ndim:], options)).result()
    layout = ShardLayout(shard, options.chunk_shape(shape), data.dtype, options.zstd_level)
    buffer = memoryview(mmap.mmap(-1, layout.max_bytes))
    for position in np.ndindex(*(-(-n // s) for n, s in zip(shape, shard, strict=True))):
        region = tuple(slice(p * s, min((p + 1) * s, n)) for p, s, n in zip(position, shard, shape, strict=True))
        size = layout.encode(data[region], buffer)
        path = folder.joinpath("c", *map(str, position))
        if size:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buffer[:size])
    return layout


def read_both(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(folder)}}
    return ts.open(spec).result().read().result(), zarr.open_array(folder, mode="r")[:]


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"])
def test_every_dtype_reads_back(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(1)
    data = (rng.normal(0, 1000, (40, 70, 33)) if dtype == "float32" else rng.integers(0, 120, (40, 70, 33)))
    data = data.astype(dtype)  # 40 x 70 x 33: shards and chunks cut by every far edge
    write_shards(tmp_path / dtype, data)
    for read in read_both(tmp_path / dtype):
        np.testing.assert_array_equal(read, data)


def test_2d_and_big_endian_input(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 60000, (75, 50)).astype(">u2")
    write_shards(tmp_path / "a", data, PyramidOptions(chunk=8, shard_chunks=4))
    for read in read_both(tmp_path / "a"):
        np.testing.assert_array_equal(read, data)


def index_of(path: Path, chunks: int) -> np.ndarray:
    return np.frombuffer(path.read_bytes()[-(chunks * 16 + 4):-4], "<u8").reshape(chunks, 2)


def test_fill_value_chunks_are_left_out(tmp_path: Path) -> None:
    data = np.random.default_rng(3).normal(0, 1, (32, 32, 32)).astype(np.float32)
    data[:16, :16, :16] = 0  # a chunk of fill value: not stored
    data[16:, 16:, 16:] = -0.0  # equal to the fill value, but not its bytes: stored
    layout = write_shards(tmp_path / "a", data)
    index = index_of(tmp_path / "a" / "c" / "0" / "0" / "0", 8)
    assert (index[0] == MISSING).all() and (index[1:] != MISSING).all()
    stored = index[1:][np.argsort(index[1:, 0])]  # (offset, size), packed from the start of the file
    assert stored[0, 0] == 0 and (stored[1:, 0] == stored[:-1, 0] + stored[:-1, 1]).all()
    for read in read_both(tmp_path / "a"):
        np.testing.assert_array_equal(read, data)
        assert np.signbit(read[31, 31, 31])
    assert layout.encode(np.zeros((32, 32, 32), np.float32), memoryview(bytearray(layout.max_bytes))) == 0


def test_index_checksum_is_checked_by_readers(tmp_path: Path) -> None:
    data = np.random.default_rng(4).integers(1, 255, (32, 32, 32), dtype=np.uint8)
    write_shards(tmp_path / "a", data)
    shard = tmp_path / "a" / "c" / "0" / "0" / "0"
    damaged = bytearray(shard.read_bytes())
    damaged[-20] ^= 1  # a bit of the index
    shard.write_bytes(bytes(damaged))
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "a")}}).result()
    with pytest.raises(ValueError, match=r"(?i)checksum|crc"):
        array.read().result()


def test_rejects_blocks_and_shards_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="whole number"):
        ShardLayout((30, 32), (16, 16), np.dtype(np.uint8), 1)
    layout = ShardLayout((32, 32), (16, 16), np.dtype(np.uint8), 1)
    with pytest.raises(ValueError, match="does not fit"):
        layout.encode(np.zeros((33, 32), np.uint8), memoryview(bytearray(layout.max_bytes)))
