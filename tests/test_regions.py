"""A region of an image as a precomputed source of its own (tiling.regions): what a task view loads."""

import pytest

from tiling.errors import InvalidChunkKey, UnknownScale
from tiling.regions import Region, check_chunk, region_info, thin_depth

INFO = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8", "num_channels": 1,
        "scales": [{"key": str(level), "size": [512 >> level, 512 >> level, 256 >> level],
                    "resolution": [8.0 * 2**level] * 3, "voxel_offset": [0, 0, 0],
                    "chunk_sizes": [[64, 64, 64 if level < 3 else 32]], "encoding": "jpeg"} for level in range(4)]}


def test_a_small_region_is_its_few_thin_chunks_of_the_finest_scale() -> None:
    """A 128 x 128 x 8 task: the four chunks that meet it, 8 slices deep instead of 64, and no coarser scale."""
    cropped = region_info(INFO, Region.parse("128_128_120_256_256_128"))
    [scale] = cropped["scales"]
    assert scale["voxel_offset"] == [128, 128, 120] and scale["size"] == [128, 128, 8]
    assert scale["chunk_sizes"] == [[64, 64, 8]]
    assert check_chunk(cropped, "0", "128-192_192-256_120-128") == (8, 64, 64)
    for name in ("128-192_192-256_64-128", "64-128_128-192_120-128"):  # the stored chunk; outside the region
        with pytest.raises(InvalidChunkKey):
            check_chunk(cropped, "0", name)
    with pytest.raises(UnknownScale):
        check_chunk(cropped, "1", "64-128_64-128_60-64")
    assert INFO["scales"][0]["chunk_sizes"] == [[64, 64, 64]]  # the image's own info is left as it was


def test_a_large_region_keeps_the_coarser_scales_it_needs() -> None:
    cropped = region_info(INFO, Region.parse("0_0_100_512_512_101"))
    assert [s["key"] for s in cropped["scales"]] == ["0", "1", "2"]  # 8 x 8, 4 x 4, then 2 x 2 chunks a slice
    assert [s["chunk_sizes"][0][2] for s in cropped["scales"]] == [1, 1, 1]  # one slice deep: the region's depth
    assert cropped["scales"][0]["voxel_offset"][2] == 100 and cropped["scales"][2]["voxel_offset"][2] == 25


def test_thin_chunks_divide_the_stored_ones() -> None:
    assert [thin_depth(64, depth) for depth in (1, 3, 8, 16, 300)] == [1, 2, 8, 8, 8]
    assert thin_depth(50, 8) == 5 and thin_depth(7, 8) == 7 and thin_depth(1, 8) == 1
