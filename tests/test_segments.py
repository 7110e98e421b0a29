"""Segment tables of label images: measured block by block, named from a file, served as Neuroglancer segment
properties and as a paged, filtered JSON and CSV listing; checked against independent counts of the source labels."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from scipy import ndimage

from tests.conftest import LAMELLA, ROOT, Sample, Server
from tiling.errors import InvalidSegmentNames, NotSegmentation
from tiling.omezarr import make_context, open_volume
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.segment_names import parse_names
from tiling.segment_store import SegmentTables, table_path, write_table
from tiling.segments import TABLE_DTYPE, Geometry, measure
from tiling.sources import ArraySource

BODIES = "/api/datasets/fibsem/images/bodies"
NUMBER_TYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32"}


def independent(labels: np.ndarray, voxel: float, ids: np.ndarray | None = None) -> dict[int, dict[str, object]]:
    """Per id, by numpy and scipy alone: voxels, bounding box (voxel corners) and centroid (voxel centres), x y z nm."""
    found, counts = np.unique(labels, return_counts=True)
    keep = found != 0
    found, counts = found[keep], counts[keep]
    chosen = found if ids is None else ids
    result: dict[int, dict[str, object]] = {}
    for segment in chosen:
        z, y, x = np.nonzero(labels == segment)
        result[int(segment)] = {
            "voxels": int(counts[np.searchsorted(found, segment)]),
            "bbox_min_nm": [x.min() * voxel, y.min() * voxel, z.min() * voxel],
            "bbox_max_nm": [(x.max() + 1) * voxel, (y.max() + 1) * voxel, (z.max() + 1) * voxel],
            "centroid_nm": [(x.mean() + 0.5) * voxel, (y.mean() + 0.5) * voxel, (z.mean() + 0.5) * voxel],
        }
    return result


# The pure library: measuring in blocks, names


def test_measure_in_many_blocks_equals_numpy(tmp_path: Path) -> None:
    """uint64 ids past 2**53, blocks smaller than the volume (edges that are not whole chunks), an anisotropic voxel."""
    rng = np.random.default_rng(16)
    coarse = rng.integers(0, 6, size=(5, 7, 9)).astype(np.uint64)
    labels = np.kron(coarse, np.ones((7, 6, 5), np.uint64))[:33, :40, :41]
    labels[labels > 0] += np.uint64(2**60)
    labels[3, 4, 5] = 2**64 - 1
    write_pyramid(ArraySource(labels), tmp_path / "l.ome.zarr", voxel_size=(30.0, 8.0, 4.0),
                  options=PyramidOptions(labels=True, chunk=16, name="l"))

    async def run() -> np.ndarray:
        volume = await open_volume(str(tmp_path / "l.ome.zarr"), make_context(16 << 20))
        return await measure(volume, block_voxels=16 * 16 * 32)

    table = asyncio.run(run())
    found, counts = np.unique(labels[labels != 0], return_counts=True)
    assert table["id"].tolist() == found.tolist() and table["voxels"].tolist() == counts.tolist()
    size = np.array([4.0, 8.0, 30.0])
    np.testing.assert_allclose(table["volume_um3"], counts * size.prod() / 1e9)
    for row in table:
        z, y, x = np.nonzero(labels == row["id"])
        np.testing.assert_allclose(row["bbox_min"], [x.min(), y.min(), z.min()] * size)
        np.testing.assert_allclose(row["bbox_max"], (np.array([x.max(), y.max(), z.max()]) + 1) * size)
        np.testing.assert_allclose(row["centroid"], (np.array([x.mean(), y.mean(), z.mean()]) + 0.5) * size)


def test_a_float_image_is_no_segmentation(tmp_path: Path) -> None:
    write_pyramid(ArraySource(np.ones((4, 8, 8), np.float32)), tmp_path / "f.ome.zarr", voxel_size=(1.0, 1.0, 1.0),
                  options=PyramidOptions(name="f"))

    async def run() -> None:
        await measure(await open_volume(str(tmp_path / "f.ome.zarr"), make_context(16 << 20)))

    with pytest.raises(NotSegmentation, match="unsigned integers"):
        asyncio.run(run())


def test_names_from_csv_and_json() -> None:
    from_csv = parse_names('id,name,class\r\n7,"mito, big",mitochondrion\r\n\r\n9,,nucleus\r\n12,cell 12,\r\n', "n.csv")
    assert from_csv.names == {7: "mito, big", 12: "cell 12"} and from_csv.classes == {7: "mitochondrion", 9: "nucleus"}
    assert parse_names('{"7": "a", "9": "b"}', "n.json").names == {7: "a", 9: "b"}
    rows = parse_names('[{"id": 7, "name": "a", "class": "x y"}, {"id": "9", "class": "z"}]', "n.json")
    assert rows.names == {7: "a"} and rows.classes == {7: "x y", 9: "z"}


@pytest.mark.parametrize(("text", "message"), [
    ("id,name\n7,a\n7,b\n", "n.txt: row 3: segment 7 appears twice"),
    ("id,name\n7,a\nx8,b\n", "n.txt: row 3: id 'x8' is not a whole number"),
    ("id,name\n7,a,b\n", "n.txt: row 2: 3 fields, the header has 2"),
    ("id,label\n7,a\n", "n.txt: row 1: the header must be id,name or id,name,class"),
    ("id,name\n0,background\n", "n.txt: row 2: id 0 is the background"),
    ("id,name\n5,\n", "n.txt: row 2: neither a name nor a class"),
    ('{"7": 3}', "n.txt: key '7': the name must be text"),
    ('[{"id": 7, "name": "a", "colour": "red"}]', "n.txt: item 0: expected an object"),
    ('{"7": "a",}', "n.txt: not JSON: line 1"),
    ("", "n.txt: empty"),
])
def test_bad_names_are_one_line_naming_the_row(text: str, message: str) -> None:
    with pytest.raises(InvalidSegmentNames) as caught:
        parse_names(text, "n.txt")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_unknown_ids_are_refused_and_the_cache_follows_the_file(tmp_path: Path) -> None:
    table = np.zeros(3, dtype=TABLE_DTYPE)
    table["id"], table["voxels"] = [2, 5, 2**63], [1, 2, 3]
    names = parse_names("id,name\n5,five\n6,six\n", "n.csv")
    with pytest.raises(InvalidSegmentNames, match=r"n\.csv: segment 6 is not in the labels \(1 unknown"):
        names.check_known(table["id"], "n.csv")
    geometry = Geometry((4.0, 4.0, 40.0), (0, 0, 0))
    write_table(tmp_path, table, geometry, parse_names("id,name\n5,five\n", "n.csv"))
    tables = SegmentTables(max_rows=10)
    first, etag = tables.get(tmp_path)
    assert first.record(1)["name"] == "five" and tables.get(tmp_path)[0] is first
    write_table(tmp_path, table, geometry, None)
    second, etag2 = tables.get(tmp_path)
    assert second is not first and second.record(1)["name"] is None and etag2 != etag
    assert [p.name for p in table_path(tmp_path).parent.iterdir()] == ["table.npz"]  # no temporary left


# Served, on the real FIB-SEM ground truth


@pytest.fixture(scope="module")
def bodies(sample: Sample) -> np.ndarray:
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    return sample.bodies


def test_served_table_equals_an_independent_count(server: Server, bodies: np.ndarray) -> None:
    answer = server.get(f"{BODIES}/segments?limit=1000").json()
    served = {int(s["id"]): s for s in answer["segments"]}
    found, counts = np.unique(bodies, return_counts=True)
    assert answer["total"] == len(served) == int((found != 0).sum()) and answer["next_offset"] is None
    expected = {int(i): int(c) for i, c in zip(found, counts, strict=True) if i}
    assert {i: s["voxels"] for i, s in served.items()} == expected
    assert answer["voxel_size_nm"] == [10.0, 10.0, 10.0]
    # Every bounding box and centroid by scipy.ndimage, a few by np.nonzero.
    ids = np.array(sorted(served), dtype=bodies.dtype)
    objects = ndimage.find_objects(np.searchsorted(np.concatenate(([0], ids)), bodies).astype(np.int32))
    centres = ndimage.center_of_mass(np.ones_like(bodies, np.uint8), bodies, ids)
    for segment, box, centre in zip(ids.tolist(), objects, centres, strict=True):
        row = served[segment]
        assert row["bbox_min_nm"] == [box[2].start * 10.0, box[1].start * 10.0, box[0].start * 10.0]
        assert row["bbox_max_nm"] == [box[2].stop * 10.0, box[1].stop * 10.0, box[0].stop * 10.0]
        np.testing.assert_allclose(row["centroid_nm"], (np.array(centre[::-1]) + 0.5) * 10.0, rtol=1e-9)
        assert row["volume_um3"] == pytest.approx(row["voxels"] * 1e-6)
    for segment, expected in independent(bodies, 10.0, ids[::131]).items():
        row = served[segment]
        assert row["voxels"] == expected["voxels"] and row["bbox_min_nm"] == expected["bbox_min_nm"]
        np.testing.assert_allclose(row["centroid_nm"], expected["centroid_nm"], rtol=1e-9)


def test_segment_properties_follow_neuroglancer(server: Server, bodies: np.ndarray) -> None:
    info = server.get(f"{BODIES}/precomputed/info").json()
    assert info["segment_properties"] == "segment_properties"
    assert "segment_properties" not in server.get("/api/datasets/fibsem/images/raw/precomputed/info").json()
    answer = server.get(f"{BODIES}/precomputed/segment_properties/info")
    assert answer.status_code == 200 and answer.headers["Cache-Control"].startswith("public")
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    again = server.get(f"{BODIES}/precomputed/segment_properties/info",
                       headers={"If-None-Match": answer.headers["ETag"]})
    assert again.status_code == 304
    document = answer.json()
    # precomputed segment_properties.md, inline properties
    assert set(document) == {"@type", "inline"} and document["@type"] == "neuroglancer_segment_properties"
    inline = document["inline"]
    ids = inline["ids"]
    assert all(isinstance(i, str) and i.isdigit() and str(int(i)) == i for i in ids)
    found, counts = np.unique(bodies[bodies != 0], return_counts=True)
    assert [int(i) for i in ids] == found.tolist()
    kinds = [p["type"] for p in inline["properties"]]
    assert all(kinds.count(k) <= 1 for k in ("label", "description", "tags"))
    for prop in inline["properties"]:
        assert isinstance(prop["id"], str) and len(prop["values"]) == len(ids)
        assert prop["type"] in ("label", "description", "string", "tags", "number")
        if prop["type"] == "number":
            assert prop["data_type"] in NUMBER_TYPES and all(isinstance(v, (int, float)) for v in prop["values"])
        else:
            assert "data_type" not in prop
    voxels = next(p for p in inline["properties"] if p["id"] == "voxels")
    assert voxels["values"] == counts.tolist() and voxels["data_type"] == "uint32"
    volume = next(p for p in inline["properties"] if p["id"] == "volume_um3")
    np.testing.assert_allclose(volume["values"], counts * 1e-6, rtol=1e-6)


def test_paging_filters_sorting_and_csv(server: Server, bodies: np.ndarray) -> None:
    everything = {int(s["id"]): s for s in server.get(f"{BODIES}/segments?limit=1000").json()["segments"]}
    pages, offset = [], 0
    while offset is not None:
        page = server.get(f"{BODIES}/segments?sort=voxels&order=desc&limit=200&offset={offset}").json()
        pages += page["segments"]
        offset = page["next_offset"]
    assert [s["voxels"] for s in pages] == sorted((s["voxels"] for s in everything.values()), reverse=True)
    assert len({s["id"] for s in pages}) == len(everything)
    sized = server.get(f"{BODIES}/segments?min_voxels=1000&max_voxels=5000&limit=1000").json()
    assert {int(s["id"]) for s in sized["segments"]} == {i for i, s in everything.items()
                                                        if 1000 <= s["voxels"] <= 5000}
    big = server.get(f"{BODIES}/segments?min_volume_um3=0.5&limit=1000").json()
    assert {int(s["id"]) for s in big["segments"]} == {i for i, s in everything.items() if s["volume_um3"] >= 0.5}
    # A box intersects a segment's bounding box: [lo, hi) against [min, max).
    box = [500.0, 600.0, 700.0, 1200.0, 1100.0, 900.0]
    inside = server.get(f"{BODIES}/segments?bbox={','.join(map(str, box))}&limit=1000").json()
    corners = "1200,600,900,500,1100,700"  # any two opposite corners
    assert server.get(f"{BODIES}/segments?bbox={corners}&limit=1000").json() == inside
    expected = {i for i, s in everything.items()
                if all(s["bbox_min_nm"][a] < box[a + 3] and s["bbox_max_nm"][a] > box[a] for a in range(3))}
    assert {int(s["id"]) for s in inside["segments"]} == expected and 0 < len(expected) < len(everything)
    one = next(iter(everything))
    assert server.get(f"{BODIES}/segments?id={one}").json()["segments"] == [everything[one]]
    assert server.get(f"{BODIES}/segments?id=999999999").json()["segments"] == []
    exported = server.get(f"{BODIES}/segments?format=csv&min_voxels=1000&sort=volume_um3")
    assert exported.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(r["id"]) for r in rows] == [int(s["id"]) for s in sorted(
        (s for s in everything.values() if s["voxels"] >= 1000), key=lambda s: (s["volume_um3"], int(s["id"])))]
    first = everything[int(rows[0]["id"])]
    assert float(rows[0]["centroid_y_nm"]) == first["centroid_nm"][1] and int(rows[0]["voxels"]) == first["voxels"]


@pytest.mark.parametrize(("query", "fragment"), [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("offset=-1", "offset"), ("min_voxels=many", "min_voxels"),
    ("bbox=1,2,3", "bbox"), ("bbox=0,0,0,1,nan,1", "bbox"), ("bbox=0,0,0,1,1e999,1", "bbox"),
    ("sort=colour", "sort"), ("format=xml", "format"), ("min_volume_um3=inf", "min_volume_um3"), ("shape=1", "shape"),
])
def test_bad_queries_are_json_400s(server: Server, bodies: np.ndarray, query: str, fragment: str) -> None:
    answer = server.get(f"{BODIES}/segments?{query}")
    assert answer.status_code == 400 and answer.json()["code"] == "bad_request"
    assert fragment in answer.json()["message"]


def test_images_without_a_table_are_json_404s(server: Server) -> None:
    for path in ("/api/datasets/demo/images/em/segments",
                 "/api/datasets/demo/images/em/precomputed/segment_properties/info"):
        answer = server.get(path)
        assert answer.status_code == 404 and answer.json()["code"] == "not_a_segmentation"
    assert server.get("/api/datasets/embargoed/images/v2/segments").json()["code"] == "dataset_not_found"


# The command line, on a copy of the test data (scratch_server)


def lamella(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMELLA, *args, "--data-dir", str(server.data_dir)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_names_a_table_and_refuses_a_bad_file(scratch_server: Server, bodies: np.ndarray,
                                                  tmp_path: Path) -> None:
    found = np.unique(bodies[bodies != 0])
    good = tmp_path / "names.csv"
    good.write_text(f"id,name,class\n{found[0]},Tm3 left,Tm cell\n{found[1]},Mi1,Mi cell\n{found[2]},,Tm cell\n")
    done = lamella(scratch_server, "segments", "fibsem", "bodies", "--names", str(good), "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{len(found)} segments of 'bodies' in dataset 'fibsem'"
    url = f"{BODIES}/segments?name=tm&sort=name&limit=10"
    named = scratch_server.get(url).json()  # the server's cache follows the new file
    assert [(s["name"], s["class"]) for s in named["segments"]] == [(None, "Tm cell"), ("Tm3 left", "Tm cell")]
    inline = scratch_server.get(f"{BODIES}/precomputed/segment_properties/info").json()["inline"]
    tags = next(p for p in inline["properties"] if p["type"] == "tags")
    assert tags["tags"] == ["Mi_cell", "Tm_cell"] and tags["tag_descriptions"] == ["Mi cell", "Tm cell"]
    assert tags["values"][:4] == [[1], [0], [1], []]
    assert next(p for p in inline["properties"] if p["type"] == "label")["values"][:3] == ["Tm3 left", "Mi1", ""]
    stored = (scratch_server.data_dir / "images" / "fibsem").glob("raw.ome.zarr/labels/bodies/segments/table.npz")
    path = next(iter(stored))
    before = path.stat().st_mtime_ns
    for bad, message in [(f"id,name\n{found[0]},a\n999999999,b\n", "segment 999999999 is not in the labels"),
                         (f"id,name\n{found[0]},a\n{found[0]},b\n", "row 3: segment"),
                         ('{"1": ', "not JSON")]:
        (tmp_path / "bad.csv").write_text(bad)
        refused = lamella(scratch_server, "segments", "fibsem", "bodies", "--names", str(tmp_path / "bad.csv"),
                          "--quiet")
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert path.stat().st_mtime_ns == before  # nothing written
    other = lamella(scratch_server, "segments", "fibsem", "raw", "--quiet")
    assert other.returncode == 1 and "is not a segmentation" in other.stderr


def test_added_labels_get_a_table_in_the_data_directory(scratch_server: Server, bodies: np.ndarray) -> None:
    store = next((scratch_server.data_dir / "images" / "fibsem").glob("raw.ome.zarr/labels/bodies"))
    added = lamella(scratch_server, "add", str(store), "--dataset", "fibsem", "--name", "seen", "--labels")
    assert added.returncode == 0, added.stderr
    missing = requests.get(f"{scratch_server.url}/api/datasets/fibsem/images/seen/segments", timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == "segments_not_found"
    assert "segment_properties" not in scratch_server.get("/api/datasets/fibsem/images/seen/precomputed/info").json()
    done = lamella(scratch_server, "segments", "fibsem", "seen", "--quiet")
    assert done.returncode == 0, done.stderr
    assert list((scratch_server.data_dir / "images" / "derived").glob("*/segments/table.npz"))
    listing = scratch_server.get("/api/datasets/fibsem/images/seen/segments?limit=1").json()
    assert listing["total"] == len(np.unique(bodies)) - 1


def test_import_labels_with_names_is_all_or_nothing(scratch_server: Server, tmp_path: Path) -> None:
    import tifffile

    labels = np.zeros((40, 70, 90), np.uint32)  # u16's grid
    labels[2:9, 10:30, 5:50], labels[20:30, 40:70, 60:89] = 7, 4_000_000_000
    tifffile.imwrite(tmp_path / "cells.tif", labels)
    (tmp_path / "bad.json").write_text('[{"id": 7, "name": "a"}, {"id": 8, "name": "b"}]')
    (tmp_path / "good.json").write_text('{"7": "small", "4000000000": "large"}')
    command = ["import", str(tmp_path / "cells.tif"), "--dataset", "tests", "--labels", "u16", "--name", "cells",
               "--quiet"]
    refused = lamella(scratch_server, *command, "--segment-names", str(tmp_path / "bad.json"))
    assert refused.returncode == 1 and "segment 8 is not in the labels" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not list((scratch_server.data_dir / "images" / "tests").glob("cells*"))  # nothing half-written
    assert "cells" not in [i["name"] for i in scratch_server.get("/api/datasets/tests/images").json()["images"]]
    done = lamella(scratch_server, *command, "--segment-names", str(tmp_path / "good.json"))
    assert done.returncode == 0, done.stderr
    rows = scratch_server.get("/api/datasets/tests/images/cells/segments?sort=name").json()["segments"]
    assert [(r["id"], r["name"], r["voxels"]) for r in rows] == [("4000000000", "large", 10 * 30 * 29),
                                                                 ("7", "small", 7 * 20 * 45)]
    assert rows[1]["bbox_min_nm"] == [5 * 4.0, 10 * 4.0, 2 * 30.0]  # u16's voxels are 30 x 4 x 4 nm (z, y, x)


def test_csv_to_an_http_1_0_client_ends_with_the_connection(server: Server, bodies: np.ndarray) -> None:
    """HTTP/1.0 has no chunked framing: a streamed answer without a length ends when the connection closes, even
    when the client asked to keep it alive."""
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    received = b""
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(f"GET {BODIES}/segments?format=csv HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
        while chunk := connection.recv(65536):  # a timeout here: the server kept the connection open
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length" not in head
    assert body.count(b"\r\n") == len(np.unique(bodies)) - 1 + 1  # the header and a row per segment
