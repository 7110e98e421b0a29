"""Annotation layers and annotations over real sockets, on SQLite and on PostgreSQL: rights, history and
as-of reads, listing filters, bulk all-or-nothing, and refusals that write nothing."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import requests

from annotations.access import Access
from annotations.accounts import Accounts
from annotations.catalog import Catalog, ImageSpec, NewDataset
from annotations.db import make_engine, make_sessions, migrate
from tests.conftest import Server, fresh_database, start_server, stop_server

ACTORS = {"curator": ("curator", "curator"), "ann": ("annotator", "annotator"), "bob": ("annotator", "annotator"),
          "viewer": ("annotator", "viewer"), "outsider": ("annotator", None)}


def image(name: str, kind: str = "image") -> ImageSpec:
    # 1000 x 800 x 400 nm (x y z): shape z y x = 40, 80, 100 voxels of 10 nm. The store is never opened.
    return ImageSpec(name=name, kind=kind, uri="/nowhere/x.ome.zarr", ome_version="0.5", zarr_format=3,
                     dtype="uint8" if kind == "image" else "uint32", shape=[40, 80, 100],
                     voxel_size_nm=[10, 10, 10], levels=[{"path": "0"}], window=[0, 255])


@dataclass
class Site:
    server: Server
    url: str  # the database's
    tokens: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, actor: str | None = None, headers: dict[str, str] | None = None,
             **kwargs: Any) -> requests.Response:
        headers = {**(headers or {}), **({"Authorization": f"Bearer {self.tokens[actor]}"} if actor else {})}
        return requests.request(method, self.server.url + path, headers=headers, timeout=120, **kwargs)


def prepare_database(url: str) -> dict[str, str]:
    """Two datasets (public "cells" with a label image, private "hidden"), accounts and their tokens."""
    engine = make_engine(url)
    migrate(engine)
    sessions = make_sessions(engine)
    catalog, accounts, access = Catalog(sessions), Accounts(sessions), Access(sessions)
    catalog.register("cells", image("em"))
    catalog.register("cells", image("bodies", "segmentation"))
    catalog.register("hidden", image("em"), new=NewDataset(visibility="private"))
    tokens = {}
    for name, (role, membership) in ACTORS.items():
        accounts.create(name, role)
        tokens[name] = accounts.create_token(name, label="tests")[0]
        for dataset in ("cells", "hidden"):
            if membership is not None:
                access.set_member(dataset, name, membership)
    engine.dispose()
    return tokens


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server of its own on a fresh database of each kind."""
    root = tmp_path_factory.mktemp(f"annotations-{request.param}")
    with fresh_database(request.param, root) as url:
        tokens = prepare_database(url)
        running = start_server(root, "--database-url", url)
        try:
            yield Site(running, url, tokens)
        finally:
            stop_server(running)


LAYER = {
    "types": ["point", "line", "axis_aligned_bounding_box", "ellipsoid", "polyline"],
    "labels": [{"id": "synapse", "color": "#ff0000"}, {"id": "vesicle"}],
    "properties": [{"id": "confidence", "type": "float32"}, {"id": "kind", "type": "uint8", "enum_values": [1, 2],
                                                           "enum_labels": ["pre", "post"]},
                   {"id": "tint", "type": "rgb"}, {"id": "count", "type": "int16"}],
    "relationships": ["bodies"],
}


def make_layer(site: Site, name: str, dataset: str = "cells", **extra: Any) -> dict[str, Any]:
    answer = site.call("POST", f"/api/datasets/{dataset}/annotation-layers", "curator",
                       json={"name": name, **LAYER, **extra})
    assert answer.status_code == 201, answer.text
    return answer.json()


def base(layer: dict[str, Any], dataset: str = "cells") -> str:
    return f"/api/datasets/{dataset}/annotation-layers/{layer['id']}"


def add(site: Site, layer: dict[str, Any], items: list[dict[str, Any]], actor: str = "ann") -> list[int]:
    answer = site.call("POST", base(layer) + "/annotations", actor, json={"annotations": items})
    assert answer.status_code == 201, answer.text
    return answer.json()["ids"]


def count(site: Site, layer: dict[str, Any]) -> int:
    return len(site.call("GET", base(layer) + "/annotations?limit=10000", "curator").json()["annotations"])


def test_layers_are_made_by_annotators_and_take_the_reference_images_bounds(site: Site) -> None:
    layer = make_layer(site, "bounds")
    assert layer["lower_bound"] == [0, 0, 0] and layer["upper_bound"] == [1000, 800, 400]
    assert [p["id"] for p in layer["spec"]["properties"]] == ["confidence", "kind", "tint", "count"]
    for actor, status in (("viewer", 403), ("outsider", 403), (None, 401)):
        answer = site.call("POST", "/api/datasets/cells/annotation-layers", actor, json={"name": "x", **LAYER})
        assert answer.status_code == status, (actor, answer.text)
    # An annotator's own layer: the maker and curators change it, other annotators do not; curators delete.
    own = site.call("POST", "/api/datasets/cells/annotation-layers", "ann", json={"name": "anns", **LAYER})
    assert own.status_code == 201, own.text
    path = "/api/datasets/cells/annotation-layers/{}".format(own.json()["id"])
    for actor, status in (("bob", 403), ("viewer", 403), (None, 401), ("ann", 200), ("curator", 200)):
        answer = site.call("PATCH", path, actor, json={"description": f"by {actor}"})
        assert answer.status_code == status, (actor, answer.text)
    assert site.call("DELETE", path, "ann").status_code == 403
    assert site.call("DELETE", path, "curator").status_code == 204
    again = site.call("POST", "/api/datasets/cells/annotation-layers", "curator", json={"name": "bounds", **LAYER})
    assert again.status_code == 409 and again.json()["code"] == "name_taken"
    listed = site.call("GET", "/api/datasets/cells/annotation-layers").json()["layers"]
    assert layer["id"] in [entry["id"] for entry in listed]
    # Private dataset: its layers are as invisible as its pixels.
    hidden = make_layer(site, "secret", dataset="hidden", relationships=[])
    for actor in (None, "outsider"):
        assert site.call("GET", base(hidden, "hidden"), actor).json()["code"] == "dataset_not_found"
        answer = site.call("POST", base(hidden, "hidden") + "/annotations", actor,
                           json={"annotations": [{"type": "point", "point": [1, 2, 3]}]})
        assert answer.status_code == 404 and answer.json()["code"] == "dataset_not_found"
    assert site.call("GET", base(hidden, "hidden"), "viewer").status_code == 200
    # A layer of one dataset is not found through another.
    assert site.call("GET", base(hidden, "cells"), "curator").json()["code"] == "layer_not_found"


@pytest.mark.parametrize(("change", "message"), [
    ({"types": ["cube"]}, "types"),
    ({"labels": [{"id": "a"}, {"id": "a"}]}, "named twice"),
    ({"properties": [{"id": "label", "type": "uint8"}]}, "reserved"),
    ({"properties": [{"id": "Bad", "type": "uint8"}]}, "pattern"),
    ({"properties": [{"id": "p", "type": "uint8", "enum_values": [300], "enum_labels": ["x"]}]}, "outside"),
    ({"relationships": ["em"]}, "label image"),
    ({"lower_bound": [0, 0, 0], "upper_bound": [0, 10, 10]}, "below"),
    ({"name": "Bad Name"}, "pattern"),
    ({"name": "name\n"}, "pattern"),
])
def test_bad_layers_are_refused(site: Site, change: dict[str, Any], message: str) -> None:
    answer = site.call("POST", "/api/datasets/cells/annotation-layers", "curator",
                       json={"name": "refused", **LAYER, **change})
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text
    assert "refused" not in [x["name"] for x in site.call("GET", "/api/datasets/cells/annotation-layers").json()[
        "layers"]]


def test_every_type_round_trips_with_labels_properties_and_segments(site: Site) -> None:
    layer = make_layer(site, "types")
    items = [
        {"type": "point", "point": [1.5, 2.25, 3], "label": "synapse",
         "properties": {"confidence": 0.1, "kind": 2, "tint": "#A0b0c0", "count": -7}, "segments": {"bodies": [5, 3]}},
        {"type": "line", "point_a": [0, 0, 0], "point_b": [1000, 800, 400], "description": "diagonal"},
        {"type": "axis_aligned_bounding_box", "point_a": [10, 10, 10], "point_b": [20, 30, 40]},
        {"type": "ellipsoid", "center": [500, 400, 200], "radii": [10, 20, 30]},
        {"type": "polyline", "points": [[1, 1, 1], [2, 2, 2], [3, 5, 8]]},
    ]
    ids = add(site, layer, items)
    got = [site.call("GET", f"{base(layer)}/annotations/{i}").json() for i in ids]
    assert got[0]["point"] == [1.5, 2.25, 3] and got[0]["label"] == "synapse" and got[0]["author"] == "ann"
    assert got[0]["properties"] == {"confidence": pytest.approx(0.1), "kind": 2, "tint": "#a0b0c0", "count": -7}
    assert got[0]["properties"]["confidence"] == float(np.float32(0.1))  # stored as served
    assert got[0]["segments"] == {"bodies": [3, 5]}
    assert got[1]["point_b"] == [1000, 800, 400] and got[1]["description"] == "diagonal"
    assert got[3]["radii"] == [10, 20, 30] and got[4]["points"][2] == [3, 5, 8]


@pytest.mark.parametrize(("item", "message"), [
    ({"type": "point", "point": [1, 2]}, "3 coordinates"),
    ({"type": "point", "point": [1, 2, 3, 4]}, "at most 3"),
    ({"type": "point", "point": [1e39, 2, 3]}, "float32"),
    ({"type": "point", "point": [-1, 2, 3]}, "outside the layer"),
    ({"type": "point", "point": [1, 2, 401]}, "outside the layer"),
    ({"type": "point", "point_a": [1, 2, 3], "point_b": [1, 2, 3]}, "has point"),
    ({"type": "line", "point_a": [1, 2, 3]}, "point_b is missing"),
    ({"type": "polyline", "points": [[1, 2, 3]]}, "at least two"),
    ({"type": "ellipsoid", "center": [1, 2, 3], "radii": [1, -1, 1]}, "negative"),
    ({"type": "point", "point": ["1", 2, 3]}, "number"),
    ({"type": "point", "point": [1, 2, 3], "label": "nucleus"}, "unknown label"),
    ({"type": "point", "point": [1, 2, 3], "properties": {"colour": 1}}, "unknown property"),
    ({"type": "point", "point": [1, 2, 3], "properties": {"kind": 3}}, "enum"),
    ({"type": "point", "point": [1, 2, 3], "properties": {"kind": 1.5}}, "integer"),
    ({"type": "point", "point": [1, 2, 3], "properties": {"count": 40000}}, "outside"),
    ({"type": "point", "point": [1, 2, 3], "properties": {"tint": "red"}}, "#rrggbb"),
    ({"type": "point", "point": [1, 2, 3], "properties": {"confidence": "high"}}, "number"),
    ({"type": "point", "point": [1, 2, 3], "segments": {"nuclei": [1]}}, "unknown relationship"),
    ({"type": "point", "point": [1, 2, 3], "segments": {"bodies": [-1]}}, "segment ids"),
    ({"type": "point", "point": [1, 2, 3], "extra": 1}, "Extra inputs"),
])
def test_bad_annotations_are_refused_and_nothing_is_written(site: Site, item: dict[str, Any], message: str) -> None:
    layer = make_layer(site, f"bad-{uuid.uuid4().hex[:8]}", types=["point", "line", "ellipsoid", "polyline"])
    good = {"type": "point", "point": [1, 2, 3]}
    answer = site.call("POST", base(layer) + "/annotations", "ann", json={"annotations": [good, good, item]})
    assert answer.status_code == 400 and message in answer.json()["message"], answer.text
    assert answer.json()["code"] in ("invalid_annotation", "bad_request")
    assert count(site, layer) == 0


def test_type_not_in_the_layer_and_unknown_layer(site: Site) -> None:
    layer = make_layer(site, "points-only", types=["point"])
    answer = site.call("POST", base(layer) + "/annotations", "ann",
                       json={"annotations": [{"type": "line", "point_a": [0, 0, 0], "point_b": [1, 1, 1]}]})
    assert answer.status_code == 400 and "not line" in answer.json()["message"]
    answer = site.call("POST", "/api/datasets/cells/annotation-layers/99999/annotations", "ann",
                       json={"annotations": [{"type": "point", "point": [1, 2, 3]}]})
    assert answer.status_code == 404 and answer.json()["code"] == "layer_not_found"


def test_rights_history_and_as_of(site: Site) -> None:
    layer = make_layer(site, "history")
    [first] = add(site, layer, [{"type": "point", "point": [10, 10, 10], "label": "synapse"}])
    path = f"{base(layer)}/annotations/{first}"
    created = site.call("GET", path).json()
    time.sleep(0.01)
    edit = {"type": "point", "point": [20, 20, 20], "label": "vesicle"}
    # Someone else's annotation: another annotator and a viewer may not change it; outsiders neither.
    for actor, status in (("bob", 403), ("viewer", 403), ("outsider", 403), (None, 401)):
        assert site.call("PUT", path, actor, json=edit).status_code == status
        assert site.call("DELETE", path, actor).status_code == status
    edited = site.call("PUT", path, "ann", json=edit)
    assert edited.status_code == 200 and edited.json()["point"] == [20, 20, 20]
    time.sleep(0.01)
    by_curator = site.call("PUT", path, "curator", json={**edit, "description": "checked"})
    assert by_curator.status_code == 200 and by_curator.json()["author"] == "curator"
    assert by_curator.json()["created_at"] == created["created_at"]
    time.sleep(0.01)
    deleted = site.call("DELETE", path, "ann")
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert site.call("GET", path).status_code == 404
    assert site.call("PUT", path, "ann", json=edit).status_code == 404
    assert site.call("DELETE", path, "ann").status_code == 404
    versions = site.call("GET", path + "/history").json()["versions"]
    assert [(v["author"], v["deleted"], v["point"]) for v in versions] == [
        ("ann", False, [10, 10, 10]), ("ann", False, [20, 20, 20]), ("curator", False, [20, 20, 20]),
        ("ann", True, [20, 20, 20])]
    assert all(v["superseded_at"] == w["updated_at"] for v, w in itertools.pairwise(versions))
    assert versions[-1]["superseded_at"] is None
    # As of each version's time, that version; before the first, nothing.
    for version in versions[:-1]:
        old = site.call("GET", path, params={"as_of": version["updated_at"]}).json()
        assert old["version"] == version["version"] and old["point"] == version["point"]
    assert site.call("GET", path, params={"as_of": versions[-1]["updated_at"]}).status_code == 404
    assert site.call("GET", path, params={"as_of": "2000-01-01T00:00:00Z"}).status_code == 404
    assert site.call("GET", path, params={"as_of": "2000-01-01T00:00:00"}).status_code == 400  # no zone
    page = site.call("GET", base(layer) + "/annotations", params={"as_of": versions[1]["updated_at"]}).json()
    assert [a["label"] for a in page["annotations"]] == ["vesicle"]


def test_list_filters_and_pages(site: Site) -> None:
    layer = make_layer(site, "listing")
    grid = [{"type": "point", "point": [x * 100 + 5, y * 100 + 5, 200], "label": "synapse" if x % 2 else "vesicle"}
            for x in range(10) for y in range(8)]
    ids = add(site, layer, grid)
    before_bob = site.call("GET", f"{base(layer)}/annotations/{ids[-1]}").json()["updated_at"]
    time.sleep(0.01)
    bob_ids = add(site, layer, [{"type": "axis_aligned_bounding_box", "point_a": [0, 0, 0],
                                 "point_b": [1000, 800, 400]}], actor="bob")

    def listed(**params: Any) -> list[int]:
        answer = site.call("GET", base(layer) + "/annotations", params=params)
        assert answer.status_code == 200, answer.text
        return [a["id"] for a in answer.json()["annotations"]]

    assert listed() == ids + bob_ids
    assert listed(author="bob") == bob_ids
    assert listed(label="synapse") == [i for i, g in zip(ids, grid, strict=True) if g["label"] == "synapse"]
    bob_time = site.call("GET", f"{base(layer)}/annotations/{bob_ids[0]}").json()["updated_at"]
    assert listed(until=bob_time.replace("+00:00", "Z")) == ids  # [since, until): one bulk write shares its time
    assert listed(until=before_bob) == []
    assert listed(since=before_bob) == ids + bob_ids and listed(since=bob_time) == bob_ids
    # Bounding box: points inside, and the large box that meets it (filed far away, by its centre).
    inside = [i for i, g in zip(ids, grid, strict=True) if 150 <= g["point"][0] <= 350 and g["point"][1] <= 120]
    assert listed(bbox="150,0,0,350,120,400") == [*inside, *bob_ids]
    assert listed(bbox="150,0,0,350,120,100") == bob_ids  # z misses every point
    # Pages.
    first = site.call("GET", base(layer) + "/annotations", params={"limit": 30}).json()
    second = site.call("GET", base(layer) + "/annotations", params={"limit": 30, "after": first["next_after"]}).json()
    assert [a["id"] for a in first["annotations"] + second["annotations"]] == (ids + bob_ids)[:60]
    assert listed(bbox="350,120,400,150,0,0") == [*inside, *bob_ids]  # corners in any order
    for bad in ({"bbox": "1,2,3"}, {"bbox": "1e3,0,0,1,1,1"}, {"bbox": "nan,0,0,1,1,1"}, {"limit": 0},
                {"limit": 10001}, {"since": "yesterday"}, {"colour": "red"}):
        answer = site.call("GET", base(layer) + "/annotations", params=bad)
        assert answer.status_code == 400, (bad, answer.text)


def test_bulk_is_all_or_nothing_and_bounded(site: Site) -> None:
    layer = make_layer(site, "bulk", types=["point"])
    items = [{"type": "point", "point": [i % 1000, (i // 1000) % 800, i % 400]} for i in range(20_000)]
    started = time.monotonic()
    ids = add(site, layer, items)
    took = time.monotonic() - started
    assert len(ids) == 20_000 and len(set(ids)) == 20_000 and took < 60
    bad = [*items[:5000], {"type": "point", "point": [1, 2, 500]}]
    answer = site.call("POST", base(layer) + "/annotations", "ann", json={"annotations": bad})
    assert answer.status_code == 400 and "annotations[5000]" in answer.json()["message"]
    too_many = [{"type": "point", "point": [1, 2, 3]}] * 100_001
    answer = site.call("POST", base(layer) + "/annotations", "ann", json={"annotations": too_many})
    assert answer.status_code == 413 and answer.json()["code"] == "batch_too_large"
    answer = site.call("POST", base(layer) + "/annotations", "ann", data=b"{" + b" " * (65 * 1024 * 1024) + b"}",
                       headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["code"] == "body_too_large"
    assert site.call("GET", base(layer) + "/annotations", params={"after": ids[-1]}).json()["annotations"] == []
    page = site.call("GET", base(layer) + "/annotations", params={"limit": 10000}).json()
    assert len(page["annotations"]) == 10000 and page["next_after"] == ids[9999]


def test_layer_changes_only_add(site: Site) -> None:
    layer = make_layer(site, "growing", relationships=[])
    path = base(layer)
    for actor, status in (("ann", 403), ("outsider", 403)):
        assert site.call("PATCH", path, actor, json={"description": "x"}).status_code == status
    grown = site.call("PATCH", path, "curator", json={"description": "now with mitochondria",
                                                       "labels": [*LAYER["labels"], {"id": "mito"}]})
    assert grown.status_code == 200 and [label["id"] for label in grown.json()["spec"]["labels"]][-1] == "mito"
    assert add(site, layer, [{"type": "point", "point": [1, 2, 3], "label": "mito"}])
    shrunk = site.call("PATCH", path, "curator", json={"labels": [{"id": "mito"}]})
    assert shrunk.status_code == 400 and "only be added" in shrunk.json()["message"]
    assert site.call("DELETE", path, "ann").status_code == 403
    assert site.call("DELETE", path, "curator").status_code == 204
    assert site.call("GET", path).status_code == 404
