"""Annotation layers as Neuroglancer precomputed annotation sources, read over HTTP by Neuroglancer's own reader
(``neuroglancer.read_precomputed_annotations``) and compared with the REST API's listing: every spatial cell,
every id and every related segment, after edits and deletes, in filtered and as-of views; on SQLite and
PostgreSQL. A small per-cell limit makes the subsampling across levels visible."""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from neuroglancer.read_precomputed_annotations import AnnotationReader

from annotations.views import View
from tests.annotation_reading import GEOMETRY, from_reader, from_record
from tests.conftest import fresh_database, start_server, stop_server
from tests.test_annotations import Site, prepare_database

LIMIT = 4  # annotations per cell above the finest level
UPPER = [128.0, 128.0, 64.0]  # nm: levels of 1, 8 and 64 cells
LABELS = ["synapse", "vesicle"]
SEGMENTS = range(1, 8)
# One uint32 only, declared first: the wheel's reader gives uint32 an alignment of 3 (write_annotations.
# _PROPERTY_DTYPES) and misreads a uint32 after another 4-byte property.
LAYER = {
    "types": list(GEOMETRY),
    "labels": [{"id": label} for label in LABELS],
    "properties": [{"id": "score", "type": "uint32"}, {"id": "confidence", "type": "float32"},
                   {"id": "kind", "type": "uint8", "enum_values": [1, 2], "enum_labels": ["pre", "post"]},
                   {"id": "tint", "type": "rgb"}, {"id": "count", "type": "int16"}],
    "relationships": ["bodies"],
    "lower_bound": [0, 0, 0], "upper_bound": UPPER,
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server of its own, with a small per-cell limit, on a fresh database of each kind."""
    root = tmp_path_factory.mktemp(f"source-{request.param}")
    with fresh_database(request.param, root) as url:
        tokens = prepare_database(url)
        running = start_server(root, "--database-url", url, env={"LAMELLA_ANNOTATION_CELL_LIMIT": str(LIMIT)})
        try:
            yield Site(running, url, tokens)
        finally:
            stop_server(running)


def layer_path(layer_id: int, dataset: str = "cells") -> str:
    return f"/api/datasets/{dataset}/annotation-layers/{layer_id}"


def random_item(rng: random.Random, kind: str) -> dict[str, Any]:
    def near(centre: list[float], spread: float) -> list[float]:
        return [min(max(c + rng.uniform(-spread, spread), 0.0), u) for c, u in zip(centre, UPPER, strict=True)]

    centre = [rng.uniform(0, u) for u in UPPER]
    item: dict[str, Any] = {"type": kind}
    if kind == "point":
        item["point"] = centre
    elif kind in ("line", "axis_aligned_bounding_box"):
        item["point_a"], item["point_b"] = near(centre, 10), near(centre, 10)
    elif kind == "ellipsoid":
        item["center"], item["radii"] = centre, [rng.uniform(0, 8) for _ in range(3)]
    else:
        item["points"] = [near(centre, 10) for _ in range(rng.randint(2, 4))]
    properties = {"score": rng.randint(0, 2**32 - 1), "confidence": rng.random(), "kind": rng.choice([1, 2]),
                  "tint": f"#{rng.randrange(2**24):06x}", "count": rng.randint(-2**15, 2**15 - 1)}
    item["properties"] = {k: v for k, v in properties.items() if rng.random() < 0.8}
    item["label"] = rng.choice([None, *LABELS])
    item["segments"] = {"bodies": rng.sample(list(SEGMENTS), rng.randint(0, 3))} if rng.random() < 0.7 else {}
    return item


def listing(site: Site, layer_id: int, actor: str = "curator", **query: str) -> list[dict[str, Any]]:
    answer = site.call("GET", layer_path(layer_id) + "/annotations", actor, params={"limit": "10000", **query})
    assert answer.status_code == 200, answer.text
    assert answer.json()["next_after"] is None
    return answer.json()["annotations"]


def bbox(record: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The record's bounding box (an ellipsoid's: centre ± radii)."""
    if record["type"] == "ellipsoid":
        pairs = list(zip(record["center"], record["radii"], strict=True))
        return [c - r for c, r in pairs], [c + r for c, r in pairs]
    points = np.concatenate([np.asarray(record[name], dtype=float).reshape(-1, 3)
                             for name in GEOMETRY[record["type"]]])
    return points.min(axis=0).tolist(), points.max(axis=0).tolist()


def cells_met(record: dict[str, Any], meta: dict[str, Any]) -> set[tuple[int, ...]]:
    """The cells of a level that the record's bounding box meets (cells are closed intervals, as in the format)."""
    lower, upper = bbox(record)
    size, grid = meta["chunk_size"], meta["grid_shape"]
    spans = [range(max(0, math.floor(lo / s) - 1), min(g - 1, math.floor(hi / s) + 1) + 1)
             for lo, hi, s, g in zip(lower, upper, size, grid, strict=True)]
    return {cell for cell in itertools.product(*spans)
            if all(hi >= c * s and lo <= c * s + s for lo, hi, c, s in zip(lower, upper, cell, size, strict=True))}


def compare(site: Site, layer_id: int, view: str, records: list[dict[str, Any]], gone: list[int]) -> int:
    """Every cell, id and related segment of every type's source in ``view`` against ``records``; returns
    how many files were read."""
    reads = 0
    for kind in GEOMETRY:
        expected = {r["id"]: r for r in records if r["type"] == kind}
        reader = AnnotationReader(f"{site.server.url}{layer_path(layer_id)}/precomputed/{kind}/{view}/")
        info = reader.metadata
        assert info["annotation_type"] == kind.upper() and info["upper_bound"] == UPPER
        for annotation_id, record in expected.items():
            assert from_reader(reader.by_id[annotation_id], kind, info) == from_record(record, info, LABELS, True)
        for annotation_id in gone:
            with pytest.raises(KeyError):
                reader.by_id[annotation_id]
        served_in: dict[int, set[tuple[int, tuple[int, ...]]]] = defaultdict(set)
        levels = [spatial.metadata for spatial in reader.spatial]
        for level, spatial in enumerate(reader.spatial):
            finest = level == len(reader.spatial) - 1
            for coords in np.ndindex(*levels[level]["grid_shape"]):
                served = [from_reader(a, kind, info) for a in spatial[coords]]
                reads += 1
                assert finest or len(served) <= LIMIT, (kind, level, coords)
                for plain in served:
                    record = expected[plain[0]]
                    assert plain == from_record(record, info, LABELS, False)
                    assert coords in cells_met(record, levels[level]), (kind, plain[0], level, coords)
                    served_in[plain[0]].add((level, coords))
            if level == 0:
                assert len(served) == min(LIMIT, len(expected))  # the coarsest level is full up to its limit
        assert set(served_in) == set(expected)
        # Along the chain of cells down to every finest cell an annotation meets, it is served exactly once.
        finest_grid = levels[-1]["grid_shape"]
        for annotation_id, record in expected.items():
            for cell in cells_met(record, levels[-1]):
                chain = [(level, tuple(c * g // f for c, g, f in zip(cell, meta["grid_shape"], finest_grid,
                                                                      strict=True)))
                         for level, meta in enumerate(levels)]
                assert sum(link in served_in[annotation_id] for link in chain) == 1, (kind, annotation_id, cell)
        for segment in SEGMENTS:
            related = [from_reader(a, kind, info) for a in reader.relationships["bodies"][segment]]
            assert related == [from_record(r, info, LABELS, False) for r in expected.values()
                               if segment in r["segments"].get("bodies", [])]
        reads += 1 + len(expected) + len(gone) + len(SEGMENTS)
    return reads


def test_neuroglancers_reader_gets_what_the_database_holds(site: Site) -> None:
    made = site.call("POST", "/api/datasets/cells/annotation-layers", "curator", json={"name": "source", **LAYER})
    assert made.status_code == 201, made.text
    layer_id = made.json()["id"]
    rng = random.Random(20261202)
    for actor in ("ann", "bob"):
        items = [random_item(rng, kind) for kind in GEOMETRY for _ in range(12)]
        answer = site.call("POST", layer_path(layer_id) + "/annotations", actor, json={"annotations": items})
        assert answer.status_code == 201, answer.text
    started = time.perf_counter()
    reads = compare(site, layer_id, "current", listing(site, layer_id), [])
    print(f"\n{reads} files in {time.perf_counter() - started:.1f} s")
    before = datetime.now(UTC)
    time.sleep(0.01)

    # Edits (moving annotations across cells, changing labels, properties and segments) and deletes.
    records = listing(site, layer_id)
    changed = rng.sample(records, 20)
    for record in changed[:12]:
        item = random_item(rng, record["type"])
        answer = site.call("PUT", f"{layer_path(layer_id)}/annotations/{record['id']}", "curator", json=item)
        assert answer.status_code == 200, answer.text
    gone = [record["id"] for record in changed[12:]]
    for annotation_id in gone:
        assert site.call("DELETE", f"{layer_path(layer_id)}/annotations/{annotation_id}", "curator").ok
    now = listing(site, layer_id)
    assert len(now) == len(records) - len(gone)
    compare(site, layer_id, "current", now, gone)

    # A filtered view, and the layer as it was before the edits.
    view = str(View(author="bob", label="synapse"))
    compare(site, layer_id, view, listing(site, layer_id, author="bob", label="synapse"),
            [r["id"] for r in now if r["author"] != "bob" or r["label"] != "synapse"])
    assert str(View(as_of=before)).startswith("as_of=")
    compare(site, layer_id, str(View(as_of=before)), listing(site, layer_id, as_of=before.isoformat()), [])


def test_headers_caches_and_refusals(site: Site) -> None:
    made = site.call("POST", "/api/datasets/cells/annotation-layers", "curator",
                     json={"name": "headers", **LAYER, "types": ["point"]})
    layer_id = made.json()["id"]
    source = f"{layer_path(layer_id)}/precomputed/point/current"
    first = site.call("GET", f"{source}/spatial0/0_0_0")
    assert first.status_code == 200 and first.content == bytes(8)  # an empty cell: count 0
    assert first.headers["Cache-Control"] == "public, no-cache"
    assert first.headers["Access-Control-Allow-Origin"] == "*"
    etag = first.headers["ETag"]
    assert site.call("GET", f"{source}/spatial0/0_0_0", headers={"If-None-Match": etag}).status_code == 304
    answer = site.call("POST", layer_path(layer_id) + "/annotations", "ann",
                       json={"annotations": [{"type": "point", "point": [1, 2, 3]}]})
    assert answer.status_code == 201
    after = site.call("GET", f"{source}/spatial0/0_0_0", headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["ETag"] != etag  # a write changes the layer's generation
    info = site.call("GET", f"{source}/info")
    assert info.headers["Content-Type"] == "application/json" and info.json()["annotation_type"] == "POINT"
    other_view = site.call("GET", f"{layer_path(layer_id)}/precomputed/point/author=ann/info")
    assert other_view.headers["ETag"] != info.headers["ETag"]
    for path, code in ((f"{layer_path(layer_id)}/precomputed/point/label=x,author=y/info", "invalid_view"),
                       (f"{layer_path(layer_id)}/precomputed/line/current/info", "invalid_view"),
                       (f"{source}/spatial1/2_0_0", "invalid_view"),
                       (f"{source}/spatial9/0_0_0", "invalid_view"),
                       (f"{source}/rel_nothing/1", "invalid_view"),
                       (f"{source}/by_id/999999", "annotation_not_found"),
                       (f"{layer_path(999999)}/precomputed/point/current/info", "layer_not_found")):
        answer = site.call("GET", path)
        assert answer.status_code in (400, 404) and answer.json()["code"] == code, (path, answer.text)

    # A private dataset's sources: not there for outsiders, private answers for its members.
    hidden = site.call("POST", "/api/datasets/hidden/annotation-layers", "curator",
                       json={"name": "secret", **LAYER, "relationships": []})
    assert hidden.status_code == 201, hidden.text
    hidden_source = f"{layer_path(hidden.json()['id'], 'hidden')}/precomputed/point/current"
    for actor in (None, "outsider"):
        for suffix in ("info", "spatial0/0_0_0", "by_id/1"):
            answer = site.call("GET", f"{hidden_source}/{suffix}", actor)
            assert answer.status_code == 404 and answer.json()["code"] == "dataset_not_found", (actor, suffix)
    member = site.call("GET", f"{hidden_source}/spatial0/0_0_0", "viewer")
    assert member.status_code == 200 and member.headers["Cache-Control"] == "private, no-cache"
    assert "Access-Control-Allow-Origin" not in member.headers and "Authorization" in member.headers["Vary"]


def test_fifty_concurrent_writers_lose_no_acknowledged_write(site: Site) -> None:
    """50 writers at once on one layer, each creating, changing and deleting: every acknowledged write is in
    the listing afterwards, and the precomputed source serves exactly that."""
    made = site.call("POST", "/api/datasets/cells/annotation-layers", "curator", json={"name": "crowd", **LAYER})
    assert made.status_code == 201, made.text
    layer_id = made.json()["id"]
    writers = 50
    barrier = threading.Barrier(writers)

    def write(index: int) -> tuple[list[int], dict[int, dict[str, Any]], list[int]]:
        rng = random.Random(index)
        actor = ("ann", "bob", "curator")[index % 3]
        items = [random_item(rng, kind) for kind in rng.sample(list(GEOMETRY), 3)]
        barrier.wait(timeout=60)
        created = []
        for item in items:
            answer = site.call("POST", layer_path(layer_id) + "/annotations", actor, json={"annotations": [item]})
            assert answer.status_code == 201, answer.text
            created.append(answer.json()["ids"][0])
        change = random_item(rng, items[0]["type"])
        answer = site.call("PUT", f"{layer_path(layer_id)}/annotations/{created[0]}", actor, json=change)
        assert answer.status_code == 200, answer.text
        answer = site.call("DELETE", f"{layer_path(layer_id)}/annotations/{created[1]}", actor)
        assert answer.status_code == 200, answer.text
        return created, {created[0]: written(change)}, [created[1]]

    started = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(write, range(writers)))
    elapsed = time.perf_counter() - started
    created = [i for ids, _, _ in results for i in ids]
    changed = {k: v for _, changes, _ in results for k, v in changes.items()}
    deleted = [i for _, _, gone in results for i in gone]
    assert len(set(created)) == 3 * writers
    now = listing(site, layer_id)
    assert sorted(r["id"] for r in now) == sorted(set(created) - set(deleted))
    for record in now:
        if record["id"] in changed:
            assert written(record) == changed[record["id"]]
    print(f"\n{5 * writers} writes by {writers} writers in {elapsed:.1f} s")
    compare(site, layer_id, "current", now, deleted)


def written(item: dict[str, Any]) -> dict[str, Any]:
    """What a write fixes of an annotation: type, geometry (as float32), label and given properties."""
    geometry = [float(np.float32(v)) for name in GEOMETRY[item["type"]] for v in np.asarray(item[name]).ravel()]
    properties = {k: float(np.float32(v)) if k == "confidence" else v for k, v in item["properties"].items()}
    return {"type": item["type"], "geometry": geometry, "label": item["label"], "properties": properties}
