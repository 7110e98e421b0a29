import pytest

from tiling.chunks import ChunkKey
from tiling.errors import InvalidChunkKey


def test_parse_format_round_trip() -> None:
    key = ChunkKey.parse("64-128_0-64_192-200")
    assert key.begin == (192, 0, 64) and key.end == (200, 64, 128)
    assert key.format() == "64-128_0-64_192-200"


@pytest.mark.parametrize("name", ["", "0-64_0-64", "a-b_0-64_0-64", "0-64_0-64_0-64_0-1", "-0-64_0-64_0-64"])
def test_malformed(name: str) -> None:
    with pytest.raises(InvalidChunkKey):
        ChunkKey.parse(name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("0-64_0-64_0-65", "end z=65"),
        ("1-65_0-64_0-64", "multiple"),
        ("0-64_0-64_256-300", "outside"),
        ("0-32_0-64_0-64", "end x=32"),
        ("-64-0_0-64_0-64", "outside"),
    ],
)
def test_check_rejects(name: str, problem: str) -> None:
    with pytest.raises(InvalidChunkKey, match=problem):
        ChunkKey.parse(name).check((256, 512, 512), (64, 64, 64))


def test_edge_chunk_is_clipped() -> None:
    ChunkKey.parse("448-500_0-64_0-40").check((40, 64, 500), (64, 64, 64))
