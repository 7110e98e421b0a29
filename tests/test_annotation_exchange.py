"""Import and export of annotation layers, on SQLite and PostgreSQL: CSV and Neuroglancer annotation JSON round
trips (HTTP and CLI), static precomputed folders read back by Neuroglancer's own reader
(``neuroglancer.read_precomputed_annotations``) from the unpacked archive and over HTTP, refusals that write
nothing, access, and memory that stays flat while a large layer streams out."""

from __future__ import annotations

import http.server
import io
import random
import re
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from neuroglancer.read_precomputed_annotations import AnnotationReader

from annotations.access import Access
from annotations.accounts import Accounts
from annotations.annotation_store import AnnotationStore, LayerIn
from annotations.db import make_engine, make_sessions
from annotations.layer_specs import AnnotationIn
from tests.annotation_reading import GEOMETRY, from_reader, from_record
from tests.conftest import LAMELLA, ROOT, fresh_database, start_server, stop_server
from tests.test_annotation_source import cells_met
from tests.test_annotations import Site, prepare_database
from tests.test_cli import PEAK_RSS, assert_one_line_error

LIMIT = 4  # annotations per spatial cell above the finest level: several levels from a few hundred annotations
UPPER = [128.0, 128.0, 64.0]
LABELS = ["synapse", "vesicle"]
SEGMENTS = range(0, 8)
# Every property type. One uint32, first: the wheel's reader gives uint32 an alignment of 3 and misreads it
# after another 4-byte property (tests/test_annotation_source.py).
PROPERTIES = [{"id": "score", "type": "uint32"}, {"id": "confidence", "type": "float32"},
              {"id": "offset", "type": "int32"}, {"id": "area", "type": "uint16"}, {"id": "count", "type": "int16"},
              {"id": "kind", "type": "uint8", "enum_values": [1, 2], "enum_labels": ["pre", "post"]},
              {"id": "delta", "type": "int8"}, {"id": "tint", "type": "rgb"}, {"id": "glow", "type": "rgba"}]
LAYER = {"types": list(GEOMETRY), "labels": [{"id": label} for label in LABELS], "properties": PROPERTIES,
         "relationships": ["bodies"], "lower_bound": [0, 0, 0], "upper_bound": UPPER}
DESCRIPTIONS = ["", "plain", 'a "quoted", comma, and; semicolon', "two\nlines\r\nand a tab\t", "ünïcødé ✓ 🧪"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp(f"exchange-{request.param}")
    with fresh_database(request.param, root) as url:
        tokens = prepare_database(url)
        running = start_server(root, "--database-url", url, env={"LAMELLA_ANNOTATION_CELL_LIMIT": str(LIMIT)})
        try:
            yield Site(running, url, tokens)
        finally:
            stop_server(running)


def item(rng: random.Random, kind: str) -> dict[str, Any]:
    """A random annotation of ``kind`` with a random subset of every property type, a label, segments."""
    def near(centre: list[float], spread: float) -> list[float]:
        return [min(max(c + rng.uniform(-spread, spread), 0.0), u) for c, u in zip(centre, UPPER, strict=True)]

    centre = [rng.uniform(0, u) for u in UPPER]
    found: dict[str, Any] = {"type": kind}
    if kind == "point":
        found["point"] = centre
    elif kind in ("line", "axis_aligned_bounding_box"):
        found["point_a"], found["point_b"] = near(centre, 12), near(centre, 12)
    elif kind == "ellipsoid":
        found["center"], found["radii"] = centre, [rng.uniform(0, 6) for _ in range(3)]
    else:
        found["points"] = [near(centre, 12) for _ in range(rng.randint(2, 5))]
    values = {"score": rng.randint(0, 2**32 - 1), "confidence": rng.uniform(-1e6, 1e6), "offset": rng.randint(
        -2**31, 2**31 - 1), "area": rng.randint(0, 2**16 - 1), "count": rng.randint(-2**15, 2**15 - 1),
        "kind": rng.choice([1, 2]), "delta": rng.randint(-128, 127), "tint": f"#{rng.randrange(2**24):06x}",
        "glow": f"#{rng.randrange(2**32):08x}"}
    found["properties"] = {k: v for k, v in values.items() if rng.random() < 0.8}
    found["label"] = rng.choice([None, *LABELS])
    found["description"] = rng.choice(DESCRIPTIONS)
    found["segments"] = {"bodies": rng.sample(list(SEGMENTS), rng.randint(1, 3))} if rng.random() < 0.7 else {}
    return found


def make_layer(site: Site, name: str, dataset: str = "cells", **extra: Any) -> int:
    answer = site.call("POST", f"/api/datasets/{dataset}/annotation-layers", "curator",
                       json={"name": name, **LAYER, **extra})
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


def path(layer_id: int, dataset: str = "cells") -> str:
    return f"/api/datasets/{dataset}/annotation-layers/{layer_id}"


def filled(site: Site, name: str, per_type: int = 24, seed: int = 13) -> tuple[int, int]:
    """A layer with annotations of every type by two authors, one of them edited and one deleted (its id is
    returned with the layer's)."""
    layer_id = make_layer(site, name)
    rng = random.Random(seed)
    for actor in ("ann", "bob"):
        items = [item(rng, kind) for kind in GEOMETRY for _ in range(per_type // 2)]
        answer = site.call("POST", path(layer_id) + "/annotations", actor, json={"annotations": items})
        assert answer.status_code == 201, answer.text
    # On cell boundaries and the layer's bounds, and across the whole layer: the cases rounding could decide.
    edges = [{"type": "point", "point": p, "label": "synapse"} for p in ([0, 0, 0], UPPER, [64, 64, 32], [32, 96, 16])]
    edges += [{"type": "line", "point_a": [0, 0, 0], "point_b": UPPER, "segments": {"bodies": [0, 7]}},
              {"type": "ellipsoid", "center": [64, 64, 32], "radii": [64, 64, 32], "description": "everywhere"},
              {"type": "axis_aligned_bounding_box", "point_a": [16, 16, 8], "point_b": [16, 80, 8]},
              {"type": "polyline", "points": [[0, 0, 0], [64, 0, 0], [64, 64, 0], [128, 128, 64]]}]
    answer = site.call("POST", path(layer_id) + "/annotations", "curator", json={"annotations": edges})
    assert answer.status_code == 201, answer.text
    first, second = listing(site, layer_id)[:2]
    assert site.call("PUT", f"{path(layer_id)}/annotations/{first['id']}", "curator",
                     json=item(rng, first["type"])).status_code == 200
    assert site.call("DELETE", f"{path(layer_id)}/annotations/{second['id']}", "curator").status_code == 200
    return layer_id, second["id"]


def listing(site: Site, layer_id: int, actor: str = "curator", **query: str) -> list[dict[str, Any]]:
    answer = site.call("GET", path(layer_id) + "/annotations", actor, params={"limit": "10000", **query})
    assert answer.status_code == 200, answer.text
    return answer.json()["annotations"]


def content(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an import must reproduce: type, geometry, label, description, properties and segments, in order."""
    kept = []
    for record in records:
        entry = {k: v for k, v in record.items() if k not in ("id", "layer_id", "author", "created_at", "updated_at",
                                                              "version")}
        entry["segments"] = {k: v for k, v in record["segments"].items() if v}
        kept.append(entry)
    return kept


def export(site: Site, layer_id: int, fmt: str, actor: str | None = "viewer", dataset: str = "cells",
           **query: str) -> bytes:
    answer = site.call("GET", path(layer_id, dataset) + "/export", actor, params={"format": fmt, **query},
                       stream=True)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in answer.headers
    assert re.fullmatch(r'attachment; filename="[a-z0-9_\-]+\.(csv|json|zip|tar)"',
                        answer.headers["Content-Disposition"])
    return answer.content


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMELLA, "annotations", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_csv_and_neuroglancer_json_round_trip_a_layer(site: Site, tmp_path: Path) -> None:
    original, _ = filled(site, "original")
    records = listing(site, original)
    assert {r["type"] for r in records} == set(GEOMETRY) and len(records) == 5 * 24 + 8 - 1
    for fmt, media in (("csv", "text/csv; charset=utf-8"), ("ng-json", "application/json")):
        data = export(site, original, fmt)
        assert site.call("GET", path(original) + "/export", params={"format": fmt}).headers["Content-Type"] == media
        copy = make_layer(site, f"copy-{fmt.replace('-', '')}")
        answer = site.call("POST", f"{path(copy)}/import", "bob", params={"format": fmt}, data=data)
        assert answer.status_code == 201, answer.text
        assert answer.json()["count"] == len(records)
        copied = listing(site, copy)
        assert content(copied) == content(records), fmt
        assert {r["author"] for r in copied} == {"bob"}  # the importer, not the file, is the author

    # The CLI: export to a file, import as an account with its rights.
    for fmt, suffix in (("csv", "csv"), ("ng-json", "json")):
        target = tmp_path / f"layer.{suffix}"
        done = cli("export", "cells", "original", "--format", fmt, "-o", str(target), "--database-url", site.url)
        assert done.returncode == 0, done.stderr
        copy = make_layer(site, f"cli-{suffix}")
        done = cli("import", "cells", str(copy), str(target), "--as", "ann", "--database-url", site.url)
        assert done.returncode == 0, done.stderr
        assert f"imported {len(records)} annotations" in done.stdout
        assert content(listing(site, copy)) == content(records)

    # Neuroglancer's own JSON reading of the export: every item is a valid annotation of its type.
    from neuroglancer import viewer_state

    document = __import__("json").loads(export(site, original, "ng-json"))
    layer = viewer_state.AnnotationLayer(document)
    assert len(layer.annotations) == len(records)
    assert [p.id for p in layer.annotation_properties][-1] == "label"


def read_back(base: str, records: list[dict[str, Any]], gone: list[int]) -> int:
    """Every id, every spatial cell and every related segment of every type's folder at ``base`` against
    ``records`` (as tests/test_annotation_source.py checks the live source); returns the annotations read."""
    read = 0
    for kind in GEOMETRY:
        expected = {r["id"]: r for r in records if r["type"] == kind}
        reader = AnnotationReader(f"{base}/{kind}/")
        info = reader.metadata
        assert info["annotation_type"] == kind.upper() and info["upper_bound"] == UPPER
        assert "sharding" in info["by_id"] and all("sharding" in r for r in info["relationships"])
        for annotation_id, record in expected.items():
            assert from_reader(reader.by_id[annotation_id], kind, info) == from_record(record, info, LABELS, True)
        for annotation_id in gone:
            with pytest.raises(KeyError):
                reader.by_id[annotation_id]
        levels = [spatial.metadata for spatial in reader.spatial]
        assert len(levels) >= 3
        served_in: dict[int, set[tuple[int, tuple[int, ...]]]] = defaultdict(set)
        for level, spatial in enumerate(reader.spatial):
            finest = level == len(levels) - 1
            for coords in np.ndindex(*levels[level]["grid_shape"]):
                try:
                    served = [from_reader(a, kind, info) for a in spatial[coords]]
                except KeyError:  # a cell that holds nothing has no file
                    served = []
                assert finest or len(served) <= LIMIT, (kind, level, coords)
                for plain in served:
                    record = expected[plain[0]]
                    assert plain == from_record(record, info, LABELS, False)
                    assert coords in cells_met(record, levels[level]), (kind, plain[0], level, coords)
                    served_in[plain[0]].add((level, coords))
                    read += 1
        assert set(served_in) == set(expected)
        finest_grid = levels[-1]["grid_shape"]
        for annotation_id, record in expected.items():  # served once along every chain of cells down to it
            for cell in cells_met(record, levels[-1]):
                chain = [(level, tuple(c * g // f for c, g, f in zip(cell, meta["grid_shape"], finest_grid,
                                                                      strict=True)))
                         for level, meta in enumerate(levels)]
                assert sum(link in served_in[annotation_id] for link in chain) == 1, (kind, annotation_id, cell)
        for segment in SEGMENTS:
            try:
                related = [from_reader(a, kind, info) for a in reader.relationships["bodies"][segment]]
            except KeyError:
                related = []
            assert related == [from_record(r, info, LABELS, False) for r in expected.values()
                               if segment in r["segments"].get("bodies", [])]
    return read


def unpack(data: bytes, fmt: str, folder: Path) -> Path:
    if fmt == "precomputed-tar":
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(folder, filter="data")
    else:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            assert archive.testzip() is None
            archive.extractall(folder)
    (root,) = folder.iterdir()
    return root


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """A plain file server with single byte ranges (what sharded files need, as nginx or a bucket serve them)."""

    def send_head(self):  # type: ignore[no-untyped-def]
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        local = Path(self.translate_path(self.path))
        if match is None or not local.is_file():
            return super().send_head()
        data = local.read_bytes()
        start, end = int(match[1]), min(int(match[2]), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start:end + 1])

    def log_message(self, *_: Any) -> None:
        pass


def test_neuroglancers_reader_reads_the_exported_folders(site: Site, tmp_path: Path) -> None:
    layer_id, deleted = filled(site, "folders")
    records = listing(site, layer_id)
    for fmt in ("precomputed-tar", "precomputed-zip"):
        root = unpack(export(site, layer_id, fmt), fmt, tmp_path / fmt)
        # a folder per geometry, and the layer's MIFA record beside them
        assert root.name == "cells-folders" and sorted(p.name for p in root.iterdir()) == sorted([*GEOMETRY,
                                                                                                  "mifa.json"])
        assert read_back(root.as_uri(), records, [deleted]) >= len(records)
    # A filtered view: only what it selects.
    chosen = listing(site, layer_id, author="bob", label="synapse")
    root = unpack(export(site, layer_id, "precomputed-tar", author="bob", label="synapse"), "precomputed-tar",
                  tmp_path / "filtered")
    read_back(root.as_uri(), chosen, [r["id"] for r in records if r not in chosen])
    # Served by a plain file server that answers byte ranges, as Neuroglancer loads it.
    handler = lambda *args: RangeHandler(*args, directory=str(tmp_path / "precomputed-tar"))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/cells-folders"
        for kind in GEOMETRY:
            reader = AnnotationReader(f"{base}/{kind}/")
            for record in (r for r in records if r["type"] == kind):
                assert from_reader(reader.by_id[record["id"]], kind, reader.metadata) == \
                    from_record(record, reader.metadata, LABELS, True)
    finally:
        server.shutdown()
        server.server_close()


BAD_FILES = [
    ("csv", b"type,x,y,z\npoint,1,2,3\npoint,1,2\n", "line 3: 3 fields where the header has 4"),
    ("csv", b"type,x,y,z,label\npoint,1,2,3,mito\n", "line 2: unknown label 'mito'"),
    ("csv", b"type,x,y,z,prop:kind\npoint,1,2,3,big\n", "line 2, column prop:kind: 'big' is not a number"),
    ("csv", b"type,x,y,z,prop:tint\npoint,1,2,3,12\n", "line 2: property 'tint' (rgb): expected #rrggbb"),
    ("csv", b"type,x,y,z,prop:area\npoint,1,2,3,70000\n", "line 2: property 'area' (uint16): 70000 is outside"),
    ("csv", b"type,x,y,z\npoint,1,2,3\npoint,1,inf,3\n", "line 3, column y: 'inf' is not a finite number"),
    ("csv", b"type,x,y,z\npoint,1,2,3\npoint,1,2,300\n", "line 3: coordinate 300.0 of axis z is outside"),
    ("csv", b"type,x,y,z,colour\npoint,1,2,3,red\n", "line 1: unknown column 'colour'"),
    ("csv", b"type,x,y,z,x2\npoint,1,2,3,4\n", "line 2, column x2: a point has no x2"),
    ("csv", b"type,points\npolyline,1 2 3;4 5\n", "line 2, column points: '4 5' is not 3 numbers"),
    ("csv", b"type,x,y,z,segments:bodies\npoint,1,2,3,7 -1\n", "segment id '-1' is not a non-negative integer"),
    ("csv", b'type,x,y,z,description\npoint,1,2,3,"open\n', "line 2: unexpected end of data"),
    ("csv", b"type,x,y,z\ncircle,1,2,3\n", "line 2, column type: 'circle' is not one of"),
    ("csv", b"x,y,z\n1,2,3\n", "the header names no 'type' column"),
    ("csv", b"type,x,y,z\n", "the file holds no annotations"),
    ("csv", b"type,x,y,z\npoint,1,2,\xff\n", "not UTF-8"),
    ("ng-json", b'{"annotations": [{"type": "point", "point": [1, 2, 3]}, {"type": "point", "point": [1, 2',
     "the file is not strict JSON"),
    ("ng-json", b'[{"type": "point", "point": [1, 2, NaN]}]', "the file is not strict JSON"),
    ("ng-json", b'[{"type": "point", "point": [1, 2, 3]}, {"type": "point", "point": [1, 2]}]',
     "annotations[1].point: expected 3 numbers"),
    ("ng-json", b'[{"type": "line", "pointA": [1, 2, 3], "pointB": [1, 2, 999]}]',
     "annotations[0]: coordinate 999.0 of axis z is outside"),
    ("ng-json", b'{"annotationProperties": [{"id": "area", "type": "uint16"}], "annotations": '
                b'[{"type": "point", "point": [1, 2, 3], "props": ["wide"]}]}',
     "annotations[0]: property 'area' (uint16): expected a number"),
    ("ng-json", b'{"annotationProperties": [{"id": "label", "type": "uint8", "enum_values": [1], '
                b'"enum_labels": ["mito"]}], "annotations": [{"type": "point", "point": [1, 2, 3], "props": [1]}]}',
     "annotations[0]: unknown label 'mito'"),
    ("ng-json", b'{"layers": []}', "a whole viewer state"),
]


@pytest.mark.parametrize(("fmt", "data", "message"), BAD_FILES, ids=[m[:40] for _, _, m in BAD_FILES])
def test_bad_files_are_refused_and_nothing_is_written(site: Site, fmt: str, data: bytes, message: str) -> None:
    layer_id = layer_for_refusals(site)
    answer = site.call("POST", f"{path(layer_id)}/import", "ann", params={"format": fmt}, data=data)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_import" and message in answer.json()["message"], answer.json()
    assert listing(site, layer_id) == []


_refusals: dict[str, int] = {}


def layer_for_refusals(site: Site) -> int:
    if site.url not in _refusals:
        _refusals[site.url] = make_layer(site, "refusals")
    return _refusals[site.url]


def test_a_bad_file_is_a_one_line_cli_error(site: Site, tmp_path: Path) -> None:
    layer_id = layer_for_refusals(site)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"type,x,y,z\npoint,1,2,3\npoint,1,2,nan\n")
    assert_one_line_error(cli("import", "cells", str(layer_id), str(bad), "--as", "ann", "--database-url", site.url),
                          "line 3, column z: 'nan' is not a finite number")
    assert_one_line_error(cli("import", "cells", str(layer_id), str(bad), "--as", "viewer", "--database-url",
                              site.url), "'viewer' may not annotate dataset 'cells'")
    assert_one_line_error(cli("export", "cells", "no-such-layer", "--format", "csv", "--database-url", site.url),
                          "no annotation layer 'no-such-layer'")
    assert listing(site, layer_id) == []


def test_exports_and_imports_follow_access(site: Site) -> None:
    hidden = make_layer(site, "secret", dataset="hidden", relationships=[])
    for actor in (None, "outsider"):
        for fmt in ("csv", "precomputed-tar"):
            answer = site.call("GET", path(hidden, "hidden") + "/export", actor, params={"format": fmt})
            assert answer.status_code == 404 and answer.json()["code"] == "dataset_not_found", (actor, answer.text)
        answer = site.call("POST", path(hidden, "hidden") + "/import", actor, params={"format": "csv"},
                           data=b"type,x,y,z\npoint,1,2,3\n")
        assert answer.status_code == 404 and answer.json()["code"] == "dataset_not_found"
    member = site.call("GET", path(hidden, "hidden") + "/export", "viewer", params={"format": "csv"})
    assert member.status_code == 200 and member.headers["Cache-Control"] == "no-store"
    assert "Access-Control-Allow-Origin" not in member.headers
    public = layer_for_refusals(site)
    for actor, status in ((None, 401), ("viewer", 403), ("outsider", 403)):
        answer = site.call("POST", f"{path(public)}/import", actor, params={"format": "csv"},
                           data=b"type,x,y,z\npoint,1,2,3\n")
        assert answer.status_code == status, (actor, answer.text)
    for query, code in (({"format": "pdf"}, "bad_request"), ({}, "bad_request"),
                        ({"format": "csv", "as_of": "yesterday"}, "bad_request")):
        answer = site.call("GET", f"{path(public)}/export", params=query)
        assert answer.status_code == 400 and answer.json()["code"] == code, answer.text
    answer = site.call("GET", f"{path(999999)}/export", params={"format": "csv"})
    assert answer.status_code == 404 and answer.json()["code"] == "layer_not_found"
    head = site.call("HEAD", f"{path(public)}/export", params={"format": "precomputed-zip"})
    assert head.status_code == 200 and head.headers["Content-Type"] == "application/zip" and not head.content
    assert listing(site, public) == []


# --- memory ------------------------------------------------------------------------------------------------------

POINTS = 300_000
SMALL = 3_000
SQLITE_PAGE_CACHE_MIB = 64  # PRAGMA cache_size of every connection (annotations.db)


@pytest.fixture(scope="module")
def large_layers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite database with a layer of 300,000 points and one of 3,000, written through the store."""
    root = tmp_path_factory.mktemp("exchange-large")
    with fresh_database("sqlite", root) as url:
        prepare_database(url)
        engine = make_engine(url)
        sessions = make_sessions(engine)
        store = AnnotationStore(sessions)
        curator = Accounts(sessions).get("curator").actor("token")
        access = Access(sessions).dataset_access(curator, "cells")
        rng = np.random.default_rng(3)
        for name, count in (("large", POINTS), ("small", SMALL)):
            layer = store.create_layer(curator, access, LayerIn.model_validate({
                "name": name, "types": ["point"], "labels": [{"id": "synapse"}],
                "properties": [{"id": "confidence", "type": "float32"}],
                "lower_bound": [0, 0, 0], "upper_bound": [100_000, 100_000, 50_000]}))
            points = (rng.uniform(0, 1, (count, 3)) * [100_000, 100_000, 50_000]).tolist()
            for start in range(0, count, 100_000):
                store.create_many(curator, access, layer.id, [
                    AnnotationIn(type="point", point=p, label="synapse" if n % 3 else None,
                                 properties={"confidence": n / count})
                    for n, p in enumerate(points[start:start + 100_000], start)])
        engine.dispose()
        yield url


def peak_export_mib(url: str, layer: str, fmt: str, output: Path) -> float:
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, "annotations", "export", "cells", layer, "--format", fmt,
                             "-o", str(output), "--database-url", url], cwd=ROOT, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr
    return int(result.stderr.split()[-1]) / 1024


@pytest.mark.parametrize("fmt", ["csv", "ng-json", "precomputed-tar", "precomputed-zip"])
def test_memory_stays_flat_while_a_large_layer_streams_out(large_layers: str, fmt: str, tmp_path: Path) -> None:
    """Exporting 300,000 points takes about the memory of exporting 3,000 (measured here: 4 to 20 MiB more, the
    precomputed formats holding one 4 MiB shard and SQLite sorting): far less than the layer's rows would take
    read at once (some 150 MiB as Python tuples), whatever the format. SQLite's page cache of the export's
    connection (64 MiB at most, ``annotations.db``) fills while the large layer is read: bounded, whatever the
    layer's size, so it is allowed for."""
    small = peak_export_mib(large_layers, "small", fmt, tmp_path / "small")
    started = time.perf_counter()
    large = peak_export_mib(large_layers, "large", fmt, tmp_path / "large")
    elapsed = time.perf_counter() - started
    written = (tmp_path / "large").stat().st_size / 2**20
    print(f"\n{fmt}: peak {small:.0f} MiB for {SMALL} points, {large:.0f} MiB for {POINTS} ({written:.0f} MiB written "
          f"in {elapsed:.0f} s)")
    assert large - small < 32 + SQLITE_PAGE_CACHE_MIB


@pytest.mark.parametrize("keys", [[*sorted(random.Random(1).sample(range(1, 2**40), 3000)), 2**64 - 1],
                                  list(range(1, 60_000)), [0]], ids=["sparse", "dense", "one"])
def test_shards_are_read_back_by_tensorstore(keys: list[int], tmp_path: Path) -> None:
    """The sharded writer against tensorstore's ``neuroglancer_uint64_sharded`` reader (the one Neuroglancer's
    Python reader uses), with a small shard budget so that keys spread over several shards and minishards."""
    import struct

    import tensorstore as ts

    from tiling.uint64_sharded import ShardSizer, ShardWriter

    rng = random.Random(2)
    values = {key: rng.randbytes(rng.randint(0, 40)) for key in keys}
    sizer = ShardSizer(budget=100_000)
    for key in keys:
        sizer.add(key, len(values[key]))
    spec = sizer.spec()
    writer = ShardWriter(spec)
    files = [file for key in keys for file in writer.add(key, values[key])] + list(writer.finish())
    assert len({name for name, _ in files}) == len(files) and max(len(data) for _, data in files) < 200_000
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    store = ts.KvStore.open({"driver": "neuroglancer_uint64_sharded", "base": tmp_path.as_uri() + "/",
                             "metadata": spec.info()}).result()
    for key in keys:
        assert store.read(struct.pack(">Q", key)).result().value == values[key]
    absent = next(key for key in (12_345, 10**12 + 7) if key not in values)
    assert store.read(struct.pack(">Q", absent)).result().state == "missing"
