"""Hostile input never breaks Lamella: each parser of untrusted text gives a correct value or its domain error.

Property tests (Hypothesis) feed arbitrary text — other scripts' digits, huge digit strings, NUL,
lone surrogates, very long strings — and check that accepted text is the one canonical spelling
of what it parsed to; regression tests pin the inputs an attacker run found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape as xml_escape

import numpy as np
import pytest
import tensorstore as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from tiling.chunks import MAX_COORDINATE, ChunkKey
from tiling.errors import (
    InvalidChunkKey,
    InvalidKey,
    InvalidMultiscale,
    InvalidRange,
    InvalidTransform,
    KeyNotFound,
    StoreUnreadable,
    UnknownScale,
)
from tiling.integers import parse_integer, parse_natural
from tiling.omezarr import StoredFiles, make_context, open_volume, parse_multiscale
from tiling.precomputed import ChunkCache, PrecomputedImage
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource, natural_key
from tiling.stores import (
    MAX_KEY_LENGTH,
    MAX_KEY_PART_LENGTH,
    ByteRange,
    LocalStore,
    OffsetRange,
    RefusedRange,
    StoredValue,
    SuffixRange,
    check_key,
    parse_range_header,
    resolve_range,
)
from tiling.transform_formats import parse_transform_file

# A few seconds for the file; LAMELLA_EXAMPLES=20000 for a longer hunt.
EXAMPLES = settings(max_examples=int(os.environ.get("LAMELLA_EXAMPLES", "200")), deadline=None)
# Characters that look like parts of numbers or names: other scripts' digits, superscripts,
# circled and full-width digits, signs, spaces, NUL, newline, a zero-width space.
TRICKY = "²³①٣۳০߂\uff10\U0001d7d8 +-_./\\\x00\n\t\u200b\u00a0"
any_character = st.characters(exclude_categories=())  # includes lone surrogates
hostile_text = st.one_of(
    st.text(any_character),
    st.text(st.sampled_from("0123456789-_" + TRICKY)),
    st.integers(300, 6000).map(lambda n: "1" * n),
    st.text(any_character, min_size=1000, max_size=5000),
)


class Refused(ValueError):
    """A caller's domain error, to show the helpers raise what they are given."""


# --- tiling.integers -----------------------------------------------------------------------


@EXAMPLES
@given(st.integers(0, 10**12), st.integers(0, 10**12))
def test_natural_round_trip(value: int, maximum: int) -> None:
    if value <= maximum:
        assert parse_natural(str(value), maximum, Refused) == value
    else:
        with pytest.raises(Refused):
            parse_natural(str(value), maximum, Refused)


@EXAMPLES
@given(hostile_text, st.integers(0, 10**20))
def test_natural_accepts_only_its_canonical_spelling(text: str, maximum: int) -> None:
    try:
        value = parse_natural(text, maximum, Refused)
    except Refused:
        return
    assert str(value) == text and 0 <= value <= maximum


@EXAMPLES
@given(hostile_text, st.integers(0, 10**20))
def test_integer_accepts_only_its_canonical_spelling(text: str, bound: int) -> None:
    try:
        value = parse_integer(text, bound, Refused)
    except Refused:
        return
    assert str(value) == text and -bound <= value <= bound


@pytest.mark.parametrize(
    "text",
    ["²", "①", "٣", "\uff10", "\U0001d7d8", "", "+1", "-1", " 1", "1 ", "1\n", "01", "00", "1_000", "1.0", "1" * 5000],
)
def test_natural_rejects(text: str) -> None:
    with pytest.raises(Refused):
        parse_natural(text, 10**6, Refused)


@pytest.mark.parametrize("text", ["-0", "--1", "-01", "+1", "-", "-٣", "-" + "1" * 5000])
def test_integer_rejects(text: str) -> None:
    with pytest.raises(Refused):
        parse_integer(text, 10**6, Refused)


# --- chunk names ---------------------------------------------------------------------------

coordinate = st.integers(-MAX_COORDINATE, MAX_COORDINATE)


@st.composite
def boxes(draw: st.DrawFn) -> ChunkKey:
    begin, end = [], []
    for _ in range(3):
        low, high = sorted(draw(st.lists(coordinate, min_size=2, max_size=2, unique=True)))
        begin.append(low)
        end.append(high)
    return ChunkKey(begin=tuple(begin), end=tuple(end))  # type: ignore[arg-type]


@EXAMPLES
@given(boxes())
def test_chunk_key_round_trip(key: ChunkKey) -> None:
    name = key.format()
    assert ChunkKey.parse(name) == key
    assert ChunkKey.parse(name).format() == name


@EXAMPLES
@given(st.one_of(hostile_text, boxes().map(ChunkKey.format).map(lambda name: name.replace("-", "-0", 1))))
def test_chunk_key_accepts_only_canonical_names(name: str) -> None:
    try:
        key = ChunkKey.parse(name)
    except InvalidChunkKey:
        return
    assert key.format() == name


@pytest.mark.parametrize(
    "name",
    [
        "²-64_0-64_0-64",
        "①-64_0-64_0-64",
        "٣-64_0-64_0-64",
        "0-٦٤_0-64_0-64",
        "00-64_0-64_0-64",
        "0-064_0-64_0-64",
        "-0-64_0-64_0-64",
        "+0-64_0-64_0-64",
        " 0-64_0-64_0-64",
        "0-64_0-64_0-64\n",
        "0-64_0-64_0-64\x00",
        "0-" + "9" * 5000 + "_0-64_0-64",
        "0-" + "9" * 11 + "_0-64_0-64",
        "64-0_0-64_0-64",
        "0-0_0-64_0-64",
        "0--64_0-64_0-64",
    ],
)
def test_chunk_name_regressions(name: str) -> None:
    with pytest.raises(InvalidChunkKey):
        ChunkKey.parse(name)


def test_negative_chunk_names_parse() -> None:
    """Neuroglancer and tensorstore name chunks of an image at negative coordinates like this."""
    key = ChunkKey.parse("-100--68_-68--36_0-32")
    assert key.begin == (0, -68, -100) and key.end == (32, -36, -68)
    assert key.format() == "-100--68_-68--36_0-32"


# --- scale keys and chunks of a served image -------------------------------------------------


def _store(root: Path, name: str, shift: float = 0.0) -> Path:
    """A small three-level OME-Zarr 0.5; ``shift`` moves it (nm, every axis) by editing its metadata."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 60000, size=(40, 70, 90), dtype=np.uint16)
    path = root / f"{name}.ome.zarr"
    write_pyramid(ArraySource(data), path, voxel_size=(1.0, 1.0, 1.0), options=PyramidOptions(chunk=16))
    if shift:
        document = json.loads((path / "zarr.json").read_text())
        for dataset in document["attributes"]["ome"]["multiscales"][0]["datasets"]:
            for transform in dataset["coordinateTransformations"]:
                if transform["type"] == "translation":
                    transform["translation"] = [t + shift for t in transform["translation"]]
        (path / "zarr.json").write_text(json.dumps(document))
    return path


def _image(path: Path) -> PrecomputedImage:
    volume = asyncio.run(open_volume(str(path), make_context(16 << 20)))
    return PrecomputedImage(volume, cache_key=str(path), cache=ChunkCache(1 << 20))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parsing")
    return {"plain": _store(root, "plain"), "left": _store(root, "left", -1000.0), "right": _store(root, "right", 48.0)}


@pytest.fixture(scope="module")
def image(stores: dict[str, Path]) -> PrecomputedImage:
    return _image(stores["plain"])


@EXAMPLES
@given(text=st.one_of(hostile_text, st.integers(0, 20).map(str)))
def test_scale_key_accepts_only_listed_keys(image: PrecomputedImage, text: str) -> None:
    keys = [scale["key"] for scale in image.info()["scales"]]
    try:
        level = image.level_of(text)
    except UnknownScale:
        assert text not in keys
        return
    assert keys[level] == text


@pytest.mark.parametrize("key", ["²", "①", "٣", "\u0660", "00", "01", "+0", " 0", "-0", "0\n", "1" * 5000, "9"])
def test_scale_key_regressions(image: PrecomputedImage, key: str) -> None:
    with pytest.raises(UnknownScale):
        image.level_of(key)
    with pytest.raises(UnknownScale):
        asyncio.run(image.chunk(key, "0-16_0-16_0-16"))


def test_chunks_at_negative_offsets_are_served(stores: dict[str, Path]) -> None:
    """Every chunk name tensorstore's own precomputed driver writes for the same scale is served."""
    image = _image(stores["left"])
    scale = image.info()["scales"][0]
    assert scale["voxel_offset"] == [-1000, -1000, -1000]
    written = ts.open(
        {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "memory"},
         "multiscale_metadata": {"type": "image", "data_type": "uint16", "num_channels": 1},
         "scale_metadata": {key: scale[key] for key in ("size", "voxel_offset", "resolution", "encoding")}
         | {"chunk_size": scale["chunk_sizes"][0]}},
        create=True,
    ).result()  # fmt: skip
    written[...] = np.ones(written.shape, np.uint16)  # chunks equal to the fill value are not written
    names = [key.decode().split("/")[1] for key in written.kvstore.list().result() if b"/" in key]
    assert len(names) == 3 * 5 * 6 and "-1000--984_-1000--984_-1000--984" in names
    plain = _image(stores["plain"])
    for name in names:
        key = ChunkKey.parse(name)
        assert key.format() == name
        unshifted = ChunkKey(tuple(b + 1000 for b in key.begin), tuple(e + 1000 for e in key.end))  # type: ignore[arg-type]
        assert asyncio.run(image.chunk("0", name)).body == asyncio.run(plain.chunk("0", unshifted.format())).body


def test_chunk_before_a_positive_offset_is_invalid(stores: dict[str, Path]) -> None:
    """A chunk name left of the first chunk is the client's mistake (400), not an unreadable store."""
    image = _image(stores["right"])
    assert image.info()["scales"][0]["voxel_offset"] == [48, 48, 48]
    asyncio.run(image.chunk("0", "48-64_48-64_48-64"))
    with pytest.raises(InvalidChunkKey, match="outside"):
        asyncio.run(image.chunk("0", "32-48_48-64_48-64"))


# --- Range headers -----------------------------------------------------------------------------


def spell(byte_range: OffsetRange | SuffixRange) -> str:
    if isinstance(byte_range, SuffixRange):
        return f"bytes=-{byte_range.length}"
    return f"bytes={byte_range.start}-{'' if byte_range.end is None else byte_range.end}"


position = st.integers(0, 10**19 - 1)
valid_ranges = st.one_of(
    st.builds(SuffixRange, st.integers(1, 10**19 - 1)),
    st.tuples(position, st.none() | position)
    .filter(lambda pair: pair[1] is None or pair[1] >= pair[0])
    .map(lambda pair: OffsetRange(*pair)),
)
range_headers = st.one_of(
    hostile_text,
    st.text(st.sampled_from("bytes=-, 0123456789" + TRICKY)),
    st.text(st.sampled_from("0123456789-" + TRICKY)).map(lambda text: "bytes=" + text),
    valid_ranges.map(spell),
)
sizes = st.one_of(st.integers(0, 3), st.integers(0, 10**20))


@EXAMPLES
@given(valid_ranges)
def test_range_round_trip(byte_range: OffsetRange | SuffixRange) -> None:
    assert parse_range_header(spell(byte_range)) == byte_range


@EXAMPLES
@given(range_headers, sizes)
def test_any_range_header_gives_a_slice_or_invalid_range(header: str, size: int) -> None:
    byte_range = parse_range_header(header)  # never raises
    if isinstance(byte_range, OffsetRange | SuffixRange) and header.startswith("bytes=") and " " not in header:
        assert spell(byte_range) == header.replace("\t", "")  # but for blanks, one spelling per range
    try:
        start, stop = resolve_range(byte_range, size)
    except InvalidRange as error:
        assert byte_range is not None and error.size == size
        return
    assert 0 <= start <= stop <= size
    assert byte_range is None or start < stop


@pytest.mark.parametrize(
    "header",
    [
        "bytes=" + "1" * 30 + "-",
        "bytes=0-" + "9" * 30,
        "bytes=-" + "9" * 30,
        "bytes=" + "9" * 5000 + "-",
        "bytes=٣-5",
        "bytes=0-²",
        "bytes=①-",
        "bytes=00-5",
        "bytes=0-05",
        "bytes=-05",
        "bytes=+1-5",
        "bytes=5-3",
        "bytes=-0",
        "bytes=-",
        "bytes=5",
        "bytes=abc",
        "bytes=1\x00-5",
    ],
)
def test_refused_range_headers_are_416_with_the_size(header: str) -> None:
    byte_range = parse_range_header(header)
    assert isinstance(byte_range, RefusedRange)
    with pytest.raises(InvalidRange) as raised:
        resolve_range(byte_range, 1234)
    assert raised.value.size == 1234


@pytest.mark.parametrize("header", [None, "", "bytes", "items=0-5", "bytes=0-5,10-20", "bytes=0-5, 7-", "bÿtes=0-5"])
def test_ignored_range_headers_give_the_whole_value(header: str | None) -> None:
    assert parse_range_header(header) is None


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=10-19", 100, (10, 20)),
        ("Bytes = 10 - 19", 100, (10, 20)),
        ("bytes=90-", 100, (90, 100)),
        ("bytes=0-" + "9" * 19, 100, (0, 100)),
        ("bytes=-20", 100, (80, 100)),
        ("bytes=-" + "9" * 19, 100, (0, 100)),
        ("bytes=0-0", 1, (0, 1)),
    ],
)
def test_served_ranges(header: str, size: int, expected: tuple[int, int]) -> None:
    assert resolve_range(parse_range_header(header), size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=" + "9" * 19 + "-", 100), ("bytes=-5", 0)])
def test_unsatisfiable_ranges_carry_the_size(header: str, size: int) -> None:
    with pytest.raises(InvalidRange) as raised:
        resolve_range(parse_range_header(header), size)
    assert raised.value.size == size


# --- stored keys of a local store ----------------------------------------------------------------

key_part = st.text(st.sampled_from("abcXYZ019._-"), min_size=1, max_size=MAX_KEY_PART_LENGTH).filter(
    lambda part: part not in (".", "..")
)
valid_keys = st.lists(key_part, min_size=1, max_size=8).map("/".join).filter(lambda key: len(key) <= MAX_KEY_LENGTH)
store_keys = st.one_of(
    hostile_text,
    st.text(st.sampled_from("ab0./_-" + TRICKY)),
    valid_keys,
    st.lists(st.sampled_from(["zarr.json", "0", "c", ".", "..", "", "a" * 300, "dir", "loop", "fifo"])).map("/".join),
)


def _read(store: LocalStore, key: str, byte_range: ByteRange | None = None) -> StoredValue:
    return asyncio.run(store.read(key, byte_range))


def _in_thread(function: Callable[[], object], seconds: float = 10) -> object:
    """Run ``function`` in a daemon thread; fail if it has not finished within ``seconds``."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(function())
        except Exception as error:
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return outcome[0]


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory: pytest.TempPathFactory) -> LocalStore:
    """A store folder holding, besides a value, what an attacker with a shell might leave there."""
    root = tmp_path_factory.mktemp("hostile") / "store"
    (root / "0" / "c").mkdir(parents=True)
    (root / "zarr.json").write_bytes(b'{"zarr_format": 3}')
    (root / "0" / "c" / "0").write_bytes(bytes(range(256)))
    (root / "0" / "empty").write_bytes(b"")
    (root / "dir").mkdir()
    (root / "loop").symlink_to("loop2")
    (root / "loop2").symlink_to("loop")
    (root / "self").symlink_to("self")
    (root / "deep").symlink_to("deep/x")
    (root / "outside").symlink_to("/etc")
    (root / "inside").symlink_to("0/c/0")
    os.mkfifo(root / "fifo")
    os.mkfifo(root / "0" / "c" / "1")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "socket"))
    return LocalStore(root)


@EXAMPLES
@given(valid_keys)
def test_store_key_round_trip(key: str) -> None:
    assert check_key(key) == key


@EXAMPLES
@given(store_keys)
def test_store_keys_are_checked_once_and_canonical(key: str) -> None:
    try:
        checked = check_key(key)
    except InvalidKey:
        return
    parts = checked.split("/")
    assert checked == key and len(key) <= MAX_KEY_LENGTH and key.isascii()
    assert all(part not in ("", ".", "..") and len(part) <= MAX_KEY_PART_LENGTH for part in parts)


@EXAMPLES
@given(store_keys, st.one_of(st.none(), range_headers.map(parse_range_header)))
def test_local_reads_give_a_value_or_a_domain_error(
    hostile_store: LocalStore, key: str, byte_range: ByteRange | None
) -> None:
    value = _in_thread(lambda: _read(hostile_store, key, byte_range))
    if isinstance(value, InvalidKey | KeyNotFound | InvalidRange):
        return
    assert isinstance(value, StoredValue), repr(value)
    assert key in ("zarr.json", "0/c/0", "inside", "0/empty")


@pytest.mark.parametrize(
    "key",
    ["a" * 256, "0/" + "c" * 300, "0/c/" + "é" * 128, "0//c/0", "0/./c/0", "0/c/0/", "/0/c/0", "./zarr.json",
     "zarr.json\n", "zarr.json\x00", "0\\c\\0", "../store/zarr.json", "0/c/0" + "/0" * 600, "outside/passwd"],
)  # fmt: skip
def test_invalid_store_keys(hostile_store: LocalStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        _read(hostile_store, key)


@pytest.mark.parametrize("key", ["dir", "loop", "self", "deep", "fifo", "0/c/1", "socket", "zarr.json/x", "0/c/9"])
def test_absent_store_keys(hostile_store: LocalStore, key: str) -> None:
    """Symlink loops, FIFOs, sockets and folders hold no value: 404, at once (a FIFO used to block for ever)."""
    assert isinstance(_in_thread(lambda: _read(hostile_store, key), seconds=5), KeyNotFound)


def test_symlink_loop_has_no_local_path(hostile_store: LocalStore) -> None:
    with pytest.raises(KeyNotFound):
        hostile_store.local_path("loop")


def test_local_values_and_ranges(hostile_store: LocalStore) -> None:
    whole = _read(hostile_store, "0/c/0")
    assert whole.data == bytes(range(256)) and not whole.is_partial
    assert _read(hostile_store, "inside").data == whole.data
    part = _read(hostile_store, "0/c/0", parse_range_header("bytes=10-19"))
    assert part.data == bytes(range(10, 20)) and part.content_range == "bytes 10-19/256"
    for header in ("bytes=256-", "bytes=" + "1" * 30 + "-", "bytes=010-19"):
        with pytest.raises(InvalidRange) as raised:
            _read(hostile_store, "0/c/0", parse_range_header(header))
        assert raised.value.size == 256
    assert _read(hostile_store, "0/empty").data == b""
    with pytest.raises(InvalidRange) as raised:
        _read(hostile_store, "0/empty", parse_range_header("bytes=-5"))
    assert raised.value.size == 0


# --- chunks read by tensorstore from a local store -------------------------------------------------


@pytest.fixture(params=["0.5", "0.4"])
def small_store(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A fresh two-level store (sharded Zarr v3, or Zarr v2 with '/' keys) to spoil."""
    data = np.random.default_rng(5).integers(1, 255, size=(20, 40, 40), dtype=np.uint8)
    path = tmp_path / "small.ome.zarr"
    write_pyramid(ArraySource(data), path, voxel_size=(1.0, 1.0, 1.0),
                  options=PyramidOptions(ome_version=request.param, chunk=16, shard_chunks=2))  # fmt: skip
    return path


def _stored_files(level: Path) -> set[str]:
    metadata = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}
    return {str(p.relative_to(level.parent)) for p in level.rglob("*") if p.is_file() and p.name not in metadata}


def test_stored_file_names_match_the_files(small_store: Path) -> None:
    """The keys Volume.read checks are the files tensorstore reads (a whole level: all of them)."""
    volume = asyncio.run(open_volume(str(small_store), make_context(16 << 20)))
    for array, level in zip(volume.arrays, volume.multiscale.levels, strict=True):
        files, shape = StoredFiles.of(array, level.path), tuple(array.shape)
        stored = _stored_files(small_store / level.path)
        assert set(files.keys((slice(None),) * 3, shape)) == stored
        first = files.keys((slice(0, 1), slice(0, 1), 0), shape)
        assert len(first) == 1 and first[0] in stored and first[0].endswith("0/0/0")
        assert files.keys((slice(5, 5), slice(None), slice(None)), shape) == []


@pytest.mark.parametrize("spoil", ["fifo", "symlink loop", "socket"])
def test_spoiled_chunk_files_are_unreadable_at_once(small_store: Path, spoil: str) -> None:
    """tensorstore waited for ever on a FIFO where a chunk or shard file should be; now it is never asked."""
    image = _image(small_store)
    first = small_store / sorted(_stored_files(small_store / "0"))[0]
    first.unlink()
    if spoil == "fifo":
        os.mkfifo(first)
    elif spoil == "symlink loop":
        first.symlink_to(first.name)
    else:
        socket.socket(socket.AF_UNIX).bind(str(first))
    outcome = _in_thread(lambda: asyncio.run(image.chunk("0", "0-16_0-16_0-16")), seconds=10)
    assert isinstance(outcome, StoreUnreadable), repr(outcome)
    assert asyncio.run(image.chunk("0", "32-40_32-40_16-20")).body  # the rest of the image is still served


def test_a_folder_in_place_of_a_chunk_reads_as_fill(small_store: Path) -> None:
    image = _image(small_store)
    first = small_store / sorted(_stored_files(small_store / "0"))[0]
    first.unlink()
    first.mkdir()
    assert not asyncio.run(image.volume.read(0, (slice(0, 16), slice(0, 16), slice(0, 16)))).any()


def test_a_fifo_in_place_of_level_metadata_is_unreadable_at_once(small_store: Path) -> None:
    for name in ("zarr.json", ".zarray"):
        if (small_store / "1" / name).exists():
            (small_store / "1" / name).unlink()
            os.mkfifo(small_store / "1" / name)
    outcome = _in_thread(lambda: asyncio.run(open_volume(str(small_store), make_context(16 << 20))), seconds=10)
    assert isinstance(outcome, StoreUnreadable), repr(outcome)


# --- other text the pixel library reads: slice file names, uploaded transform files -----------


def test_slice_names_sort_naturally_whatever_their_digits() -> None:
    names = ["s10.tif", "s2.tif", "s².tif", "s٣.tif", "s①.tif", "s1²3.tif", "S1.tif", "s" + "9" * 250 + ".tif"]
    ordered = [path.name for path in sorted((Path(name) for name in names), key=natural_key)]
    assert ordered[:3] == ["S1.tif", "s1²3.tif", "s2.tif"] and ordered.index("s10.tif") > ordered.index("s2.tif")


number_token = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats().map(repr),
    st.sampled_from(["٣", "²", "①", "1e999", "-0", "007", "nan", "inf", "9" * 30, "9" * 5000]),
)
point_lists = st.lists(st.lists(number_token, min_size=4, max_size=4).map(" ".join), min_size=1, max_size=5).map(
    "\n".join
)
ec_clem_dimension = st.one_of(number_token, st.text(any_character, max_size=20))


def _ec_clem(dimension: str) -> str:
    def dataset(kind: str) -> str:
        coordinates = "".join(f'<coordinate dimension="{d}">1</coordinate>' for d in (dimension, "1", "2"))
        return f'<dataset type="{kind}" dimension="3"><point id="0">{coordinates}</point></dataset>'

    return f"<root><transformation>{dataset('source')}{dataset('target')}</transformation></root>"


@EXAMPLES
@given(st.sampled_from(["t.txt", "t.csv", "t.json", "t.xml", "t"]), st.one_of(hostile_text, point_lists))
def test_transform_files_give_a_transform_or_invalid_transform(name: str, text: str) -> None:
    with contextlib.suppress(InvalidTransform):
        parse_transform_file(name, text)


@EXAMPLES
@given(point_lists, point_lists)
def test_point_lists_give_a_transform_or_invalid_transform(moving: str, reference: str) -> None:
    with contextlib.suppress(InvalidTransform):
        parse_transform_file("moving.txt", moving, reference_text=reference)


@EXAMPLES
@given(ec_clem_dimension)
def test_ec_clem_dimensions_give_a_transform_or_invalid_transform(dimension: str) -> None:
    with contextlib.suppress(InvalidTransform):
        parse_transform_file("t.xml", _ec_clem(xml_escape(dimension, {'"': "&quot;"})))


def test_transform_file_regressions() -> None:
    rows = "1 2 3 4\n2 5 6 7\n3 8 9 10\n" + "9" * 5000 + " 1 2 3\n"
    parse_transform_file("moving.txt", rows, reference_text=rows)  # a 5000-digit id was a ValueError from int()
    with pytest.raises(InvalidTransform):
        parse_transform_file("t.xml", _ec_clem("9" * 5000))  # was a ValueError from int()
    with pytest.raises(InvalidTransform):
        parse_transform_file("t.xml", _ec_clem("\ud800"))  # was a UnicodeEncodeError


def _multiscale(path: object, scale: object = (1.0, 1.0, 1.0)) -> dict[str, object]:
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    transforms = [{"type": "scale", "scale": scale}]
    return {"multiscales": [{"version": "0.4", "axes": axes,
                             "datasets": [{"path": path, "coordinateTransformations": transforms}]}]}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@EXAMPLES
@given(json_values, json_values)
def test_multiscale_metadata_gives_levels_or_invalid_multiscale(path: object, scale: object) -> None:
    try:
        multiscale = parse_multiscale(_multiscale(path, scale), 2)
    except InvalidMultiscale:
        return
    for level in multiscale.levels:
        assert ".." not in level.path.split("/") and not level.path.startswith("/")


@pytest.mark.parametrize("path", ["..", "../other", "0/../../x", "/etc", "", "a//b", "\x00", "s0\\..\\x"])
def test_level_paths_stay_inside_the_store(path: str) -> None:
    with pytest.raises(InvalidMultiscale, match="level's path"):
        parse_multiscale(_multiscale(path), 2)
    assert parse_multiscale(_multiscale("s0/"), 2).levels[0].path == "s0"


@pytest.mark.parametrize("name", ["abc\n", "abc\r\n", "Abc", "a" * 65, "", "ab c", "\u0430bc"])
def test_hostile_names_are_refused(name: str) -> None:
    from annotations.errors import InvalidMetadata
    from annotations.names import check_name

    with pytest.raises(InvalidMetadata):
        check_name(name, "dataset")


@pytest.mark.parametrize("accession", ["EMPIAR-10982\n", "EMPIAR-1098\u0662", "EMD-12345 ", "S-BIAD\u0661"])
def test_hostile_accessions_are_refused(accession: str) -> None:
    from annotations.metadata import ACCESSION

    assert ACCESSION.fullmatch(accession) is None
