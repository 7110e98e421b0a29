"""Annotations drawn in a viewer session, saved into database layers: the diff and save logic on SQLite and
PostgreSQL (create, move, delete, refusals reported and not retried, two sessions of one user, a lost race),
shared views (frozen, opened as new sessions, private datasets 404 for non-readers) and a server restart."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from annotations.access import Access, Actor
from annotations.accounts import Accounts
from annotations.annotation_source import AnnotationSource
from annotations.annotation_store import AnnotationQuery, AnnotationStore, LayerIn
from annotations.catalog import Catalog, ImageSpec, NewDataset
from annotations.db import make_engine, make_sessions, migrate, sqlite_url, upgrade_with_alembic
from annotations.errors import InvalidState, SharedViewNotFound, StaleGeneration
from annotations.shared_views import SharedViews
from annotations.viewer_annotations import ViewerAnnotations
from annotations.viewer_layers import RECORD_KEY, diff, drawn_annotations, edit_layer_name
from annotations.viewer_sessions import ViewerSessions
from tests.conftest import CURATOR, Server, clone_data_dir, start_server, stop_server

ORIGIN = "http://lamella.test"
EDIT = edit_layer_name("synapses")


@dataclass
class World:
    store: AnnotationStore
    sessions: ViewerSessions
    shared: SharedViews
    viewer: ViewerAnnotations
    access: Access
    actors: dict[str, Actor]
    layer_id: int
    source: AnnotationSource

    def dataset(self, actor: str, name: str = "cells") -> Any:
        return self.access.dataset_access(self.actors[actor], name)

    def open(self, actor: str, name: str = "cells") -> str:
        session = self.viewer.open_session(self.actors[actor], self.dataset(actor, name), ORIGIN,
                                           {"layers": [], "layout": "xy"}, {})
        return session.token

    def post(self, token: str, actor: str, annotations: list[dict[str, Any]] | None = None,
             change: Any = None, name: str = "cells") -> str:
        """What Neuroglancer does: the stored state (without the record) with the edit layer's annotations."""
        current = self.sessions.get(token)
        state = copy.deepcopy(current.state)
        state.pop(RECORD_KEY, None)
        if annotations is not None:
            next(layer for layer in state["layers"] if layer["name"] == EDIT)["annotations"] = annotations
        if change is not None:
            change(state)
        return self.viewer.receive(token, self.actors[actor], self.dataset(actor, name), state,
                                   generation=f"c/{current.generation[-6:]}x", expected=current.generation)

    def current(self) -> list[Any]:
        return self.store.query(self.actors["curator"], self.dataset("curator"), self.layer_id,
                                AnnotationQuery()).annotations

    def report(self, token: str, actor: str) -> Any:
        return self.viewer.report(token, self.actors[actor], self.dataset(actor))


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    engine = make_engine(database_url)
    migrate(engine)
    sessions = make_sessions(engine)
    catalog, accounts, access = Catalog(sessions), Accounts(sessions), Access(sessions)
    spec = ImageSpec(name="em", uri="/nowhere/x.ome.zarr", ome_version="0.5", zarr_format=3, dtype="uint8",
                     shape=[40, 80, 100], voxel_size_nm=[10, 10, 10], levels=[{"path": "0"}], window=[0, 255])
    catalog.register("cells", spec, new=NewDataset(visibility="private"))
    actors = {}
    for name, role in (("curator", "curator"), ("ann", "annotator"), ("bob", "annotator"), ("viewer", "viewer")):
        account = accounts.create(name, "annotator")
        access.set_member("cells", name, role)
        actor = accounts.actor_by_id(account.id)
        assert actor is not None
        actors[name] = actor
    store = AnnotationStore(sessions)
    layer = store.create_layer(actors["curator"], access.dataset_access(actors["curator"], "cells"), LayerIn(
        name="synapses", types=["point", "axis_aligned_bounding_box"], labels=[{"id": "synapse"}]))
    viewer_sessions = ViewerSessions(sessions)
    shared = SharedViews(sessions)
    yield World(store, viewer_sessions, shared, ViewerAnnotations(viewer_sessions, store, shared), access, actors,
                layer.id, AnnotationSource(sessions))
    engine.dispose()


POINT = {"type": "point", "id": "p1", "point": [100, 200, 300]}
BOX = {"type": "axis_aligned_bounding_box", "id": "b1", "pointA": [10, 10, 10], "pointB": [50, 60, 70],
       "description": "a box"}


def test_a_session_shows_each_layer_read_only_and_an_edit_layer_for_annotators(world: World) -> None:
    session = world.sessions.get(world.open("ann"))
    state = session.state
    view, edit = [layer for layer in state["layers"] if layer["type"] == "annotation"]
    assert view["name"] == "synapses" and edit["name"] == EDIT
    # The view layer reads the layer without what the edit layer holds (named by the session's view key).
    assert view["source"] == [f"precomputed://{ORIGIN}/api/datasets/1/annotation-layers/{world.layer_id}"
                              f"/precomputed/{kind}/editing={session.view_key}"
                              for kind in ("point", "axis_aligned_bounding_box")]
    assert len(session.view_key) == 16 and world.sessions.get(world.open("ann")).view_key != session.view_key
    assert edit["source"]["url"] == "local://annotations" and edit["annotations"] == []
    assert state[RECORD_KEY]["edit_layers"][EDIT]["layer_id"] == world.layer_id
    # Someone who may only read gets the read-only layer, and nothing to draw into.
    state = world.sessions.get(world.open("viewer")).state
    assert [layer["name"] for layer in state["layers"]] == ["synapses"] and RECORD_KEY not in state
    assert view_of(state) == "current"  # nothing drawn here to leave out


def test_drawn_annotations_are_created_moved_and_deleted(world: World) -> None:
    token = world.open("ann")
    world.post(token, "ann", [POINT, BOX])
    saved = world.current()
    assert [(a.type, a.author) for a in saved] == [("point", "ann"), ("axis_aligned_bounding_box", "ann")]
    assert saved[0].point == [100, 200, 300] and saved[1].description == "a box"
    report = world.report(token, "ann")
    assert report.saved == {EDIT: {"p1": saved[0].id, "b1": saved[1].id}} and not report.unsaved
    # The same state again (the viewer re-posting, or a reload) writes nothing.
    world.post(token, "ann", [POINT, BOX])
    assert [a.version for a in world.current()] == [a.version for a in saved]
    # Moved: a new version at the new place, the label set elsewhere kept.
    world.store.update(world.actors["ann"], world.dataset("ann"), world.layer_id, saved[0].id,
                       _with(saved[0], label="synapse"))
    world.post(token, "ann", [{**POINT, "point": [120.5, 200, 300]}, BOX])
    moved = world.current()[0]
    assert moved.point == [120.5, 200, 300] and moved.label == "synapse"
    # Deleted from the layer: deleted in the database, its history kept.
    world.post(token, "ann", [{**POINT, "point": [120.5, 200, 300]}])
    assert [a.id for a in world.current()] == [saved[0].id]
    history = world.store.history(world.actors["ann"], world.dataset("ann"), world.layer_id, saved[1].id)
    assert [v.deleted for v in history] == [False, True]
    # Removing the whole edit layer deletes nothing, and its annotations are shown by the view layer again.
    world.post(token, "ann", change=lambda state: state.update(
        layers=[layer for layer in state["layers"] if layer["name"] != EDIT]))
    assert len(world.current()) == 1
    after = world.sessions.get(token)
    assert view_of(after.state) == "current" and after.generation.startswith("server/")  # sent to the viewer


def _with(record: Any, **changes: Any) -> Any:
    from annotations.layer_specs import AnnotationIn

    fields = {"type": record.type, "point": record.point, "label": record.label, "description": record.description}
    return AnnotationIn.model_validate({**fields, **changes})


def test_refused_changes_are_reported_kept_in_the_viewer_and_not_retried(world: World) -> None:
    token = world.open("ann")
    outside = {"type": "point", "id": "far", "point": [5000, 200, 300]}  # the layer is 1000 x 800 x 400 nm
    world.post(token, "ann", [POINT, outside])
    report = world.report(token, "ann")
    assert [a.type for a in world.current()] == ["point"]
    assert [(u.annotation, u.annotation_id) for u in report.unsaved] == [("far", None)]
    assert "outside the layer's bounds" in report.unsaved[0].message and len(report.problems) == 1
    world.post(token, "ann", [POINT, outside])  # unchanged: not tried again, not reported again
    assert len(world.report(token, "ann").problems) == 1
    world.post(token, "ann", [POINT, {**outside, "point": [500, 200, 300]}])  # moved inside: saved
    assert len(world.current()) == 2 and not world.report(token, "ann").unsaved
    # bob takes ann's point for editing: he may read it, not move or delete it.
    theirs = world.current()[0].id
    bob = world.open("bob")
    world.post(bob, "bob", [{"type": "point", "id": f"db-{theirs}", "point": [101, 200, 300]}])
    report = world.report(bob, "bob")
    assert report.unsaved[0].annotation_id == theirs and "may not curate" in report.unsaved[0].message
    world.post(bob, "bob", [])
    assert "not deleted" in world.report(bob, "bob").problems[-1].message
    assert world.current()[0].point == [100, 200, 300] and len(world.current()) == 2
    # A curator may.
    curator = world.open("curator")
    world.post(curator, "curator", [{"type": "point", "id": f"db-{theirs}", "point": [101, 200, 300]}])
    assert world.current()[0].point == [101, 200, 300] and world.current()[0].author == "curator"


def test_two_sessions_of_one_user_and_a_change_made_elsewhere(world: World) -> None:
    first, second = world.open("ann"), world.open("ann")
    world.post(first, "ann", [POINT])
    made = world.current()[0].id
    # The second session (another browser) sees it in the read-only layer, takes it for editing, moves it.
    world.post(second, "ann", [{"type": "point", "id": f"db-{made}", "point": [100, 200, 300]}])
    assert world.current()[0].version == 1  # taken as it is: nothing written
    world.post(second, "ann", [{"type": "point", "id": f"db-{made}", "point": [300, 200, 300]}])
    # The first session moves its own stale copy: refused as changed elsewhere, nothing overwritten.
    world.post(first, "ann", [{**POINT, "point": [150, 200, 300]}])
    assert world.current()[0].point == [300, 200, 300]
    assert "changed elsewhere" in world.report(first, "ann").unsaved[0].message
    world.post(first, "ann", [POINT])  # moved back where it was saved: nothing left unsaved
    assert not world.report(first, "ann").unsaved and world.current()[0].point == [300, 200, 300]


def test_a_stale_state_saves_nothing(world: World) -> None:
    token = world.open("ann")
    current = world.sessions.get(token)
    state = copy.deepcopy(current.state)
    next(layer for layer in state["layers"] if layer["name"] == EDIT)["annotations"] = [POINT]
    with pytest.raises(StaleGeneration):
        world.viewer.receive(token, world.actors["ann"], world.dataset("ann"), state, generation="c/1",
                             expected="server/gone")
    assert world.current() == []


def test_a_record_sent_by_a_client_is_ignored(world: World) -> None:
    """The record lives on the server: a state claiming other database ids cannot redirect writes."""
    token = world.open("ann")
    world.post(token, "ann", [POINT])
    mine = world.current()[0].id
    forged = {"edit_layers": {EDIT: {"layer_id": world.layer_id, "saved": {}}}}
    world.post(token, "ann", [{**POINT, "point": [110, 200, 300]}], change=lambda s: s.update({RECORD_KEY: forged}))
    assert [(a.id, a.point) for a in world.current()] == [(mine, [110, 200, 300])]


def test_layers_made_later_join_an_open_session(world: World) -> None:
    token = world.open("ann")
    store_actor, access = world.actors["ann"], world.dataset("ann")
    world.store.create_layer(store_actor, access, LayerIn(name="mito", types=["ellipsoid"]))
    report = world.viewer.show_layers(token, store_actor, access, ORIGIN)
    assert [(layer.name, layer.edit_layer) for layer in report.layers] == [
        ("synapses", EDIT), ("mito", edit_layer_name("mito"))]
    generation = world.sessions.get(token).generation
    world.viewer.show_layers(token, store_actor, access, ORIGIN)  # nothing new: the state is not rewritten
    assert world.sessions.get(token).generation == generation


@pytest.mark.parametrize("layers", ["synapses", 5, [1, "x"], {"synapses": "x"}])
def test_a_state_whose_layers_are_not_layer_objects_is_refused(world: World, layers: Any) -> None:
    token = world.open("ann")
    generation = world.sessions.get(token).generation
    with pytest.raises(InvalidState, match="layers"):
        world.post(token, "ann", change=lambda state: state.update(layers=layers))
    assert world.sessions.get(token).generation == generation


def test_older_name_keyed_layers_are_read_as_a_list(world: World) -> None:
    """Neuroglancer's older state form keys layers by name; it is stored in the list form."""
    token = world.open("ann")
    world.post(token, "ann", change=lambda state: state.update(
        layers={layer["name"]: {k: v for k, v in layer.items() if k != "name"} for layer in state["layers"]}))
    stored = world.sessions.get(token).state["layers"]
    assert [layer["name"] for layer in stored] == ["synapses", EDIT]
    world.post(token, "ann", [POINT])
    assert len(world.current()) == 1


def test_a_stored_state_with_unreadable_layers_still_gets_the_database_layers(world: World) -> None:
    """A state stored before layers were checked: the session's layers route and share still answer."""
    token = world.open("ann")
    world.sessions.set_state(token, {"layers": "synapses", "layout": "xy"})
    actor, access = world.actors["ann"], world.dataset("ann")
    report = world.viewer.show_layers(token, actor, access, ORIGIN)
    assert [layer.name for layer in report.layers] == ["synapses"]
    assert [layer["name"] for layer in world.sessions.get(token).state["layers"]] == ["synapses", EDIT]
    assert world.viewer.share(token, actor, access).state["layers"] == [
        {**world.sessions.get(token).state["layers"][0], "source": [
            url.rsplit("/", 1)[0] + "/current" for url in world.sessions.get(token).state["layers"][0]["source"]]}]


def view_of(state: dict[str, Any]) -> str:
    """The view the state's view layer of "synapses" reads (the last part of its first source's URL)."""
    layer = next(layer for layer in state["layers"] if layer["name"] == "synapses")
    return str(layer["source"][0]).rsplit("/", 1)[1]


def cell_ids(world: World, view: str) -> list[int]:
    """The annotation ids of the layer's coarsest point cell in ``view``, as served."""
    file = world.source.cell(world.actors["curator"], world.dataset("curator"), world.layer_id, "point", view, 0,
                             "0_0_0")
    count = int(np.frombuffer(file.body[:8], dtype="<u8")[0])
    return sorted(int(i) for i in np.frombuffer(file.body[len(file.body) - 8 * count:], dtype="<u8"))


def test_view_layers_leave_out_what_the_sessions_edit_layers_hold(world: World) -> None:
    """Neuroglancer would draw a read-only copy over each annotation an edit layer holds, and pick that copy to
    move or delete: a session's view layers read the layer without what its own edit layers hold."""
    token, other = world.open("ann"), world.open("bob")
    world.post(token, "ann", [POINT])
    world.post(other, "bob", [{**POINT, "point": [400, 200, 300]}])
    mine, theirs = [a.id for a in world.current()]
    view, other_view = view_of(world.sessions.get(token).state), view_of(world.sessions.get(other).state)
    assert cell_ids(world, "current") == [mine, theirs]
    assert cell_ids(world, view) == [theirs] and cell_ids(world, other_view) == [mine]
    tag = world.source.cell(world.actors["ann"], world.dataset("ann"), world.layer_id, "point", view, 0, "0_0_0").etag
    assert tag != world.source.cell(world.actors["ann"], world.dataset("ann"), world.layer_id, "point", "current", 0,
                                    "0_0_0").etag
    assert cell_ids(world, "editing=0123456789abcdef") == [mine, theirs]  # no such session: nothing left out
    # Ann's second browser takes her point for editing: its view layer gets a new URL (the viewer has cells with
    # the point, and reads them again) that leaves the point out, and the viewer is sent that state.
    third = world.open("ann")
    before = view_of(world.sessions.get(third).state)
    world.post(third, "ann", [{"type": "point", "id": f"db-{mine}", "point": [100, 200, 300]}])
    after = world.sessions.get(third)
    assert view_of(after.state) == f"{before}.1" and after.generation.startswith("server/")
    assert cell_ids(world, view_of(after.state)) == [theirs]
    world.post(third, "ann", [{"type": "point", "id": f"db-{mine}", "point": [110, 200, 300]}])  # a move: same URL
    assert view_of(world.sessions.get(third).state) == f"{before}.1"
    # A shared copy has no edit layer: its view layer reads the whole layer.
    assert view_of(world.viewer.share(token, world.actors["ann"], world.dataset("ann")).state) == "current"
    # A session stored with view layers of the whole layer reads its editing view once its page loads again.
    stored = world.sessions.get(token).state
    world.sessions.set_state(token, {**stored, "layers": [
        {**layer, "source": [url.rsplit("/", 1)[0] + "/current" for url in layer["source"]]}
        if layer["name"] == "synapses" else layer for layer in stored["layers"]]})
    world.viewer.show_layers(token, world.actors["ann"], world.dataset("ann"), ORIGIN)
    assert view_of(world.sessions.get(token).state) == view


def test_migration_names_existing_sessions_and_their_held_annotations(database_url: str) -> None:
    """Sessions stored at revision 0007 (before view keys) get a key each and the ids their record holds."""
    import json

    from sqlalchemy import text

    engine = make_engine(database_url)
    with engine.begin() as connection:
        upgrade_with_alembic(connection, "0007")
    record = {"edit_layers": {EDIT: {"layer_id": 3, "saved": {"p1": {"id": 7, "type": "point", "geometry": [0, 0, 0]},
                                                                 "p2": {"id": None, "type": "point", "geometry": []}}}}}
    with engine.begin() as connection:
        for token, state in (("one", {"layers": [], RECORD_KEY: record}), ("two", {"layers": "unreadable"})):
            connection.execute(text(
                "INSERT INTO viewer_sessions (token, state, generation, config, config_generation, created_at, "
                "updated_at) VALUES (:token, :state, 'server/0', '{}', 'server/0', :now, :now)"),
                {"token": token, "state": json.dumps(state), "now": "2025-01-01 00:00:00"})
    migrate(engine)
    sessions = ViewerSessions(make_sessions(engine))
    one, two = sessions.get("one"), sessions.get("two")
    assert len(one.view_key) == len(two.view_key) == 16 and one.view_key != two.view_key
    with engine.connect() as connection:
        held = dict(connection.execute(text("SELECT token, held FROM viewer_sessions")).all())
    assert [json.loads(v) if isinstance(v, str) else v for v in (held["one"], held["two"])] == [{"3": [7]}, {}]
    engine.dispose()


def test_shared_views_are_frozen_copies(world: World) -> None:
    token = world.open("ann")
    world.post(token, "ann", [POINT], change=lambda state: state.update(
        position=[1, 2, 3], selection={"layers": {EDIT: {"annotationId": "p1", "annotationSource": 0}}}))
    made = world.current()[0].id
    shared = world.viewer.share(token, world.actors["ann"], world.dataset("ann"))
    assert shared.state["position"] == [1, 2, 3] and RECORD_KEY not in shared.state
    assert [layer["name"] for layer in shared.state["layers"]] == ["synapses"]  # the edit layer is the sharer's
    assert shared.state["selection"]["layers"] == {"synapses": {"annotationId": str(made), "annotationSource": 0}}
    world.post(token, "ann", [POINT], change=lambda state: state.update(position=[9, 9, 9]))
    assert world.shared.get(shared.code).state["position"] == [1, 2, 3]
    opened = world.viewer.open_session(world.actors["bob"], world.dataset("bob"), ORIGIN, {}, {}, shared.code)
    assert opened.token != token and opened.state["position"] == [1, 2, 3]
    assert [layer["name"] for layer in opened.state["layers"]] == ["synapses", EDIT]  # bob's own edit layer
    with pytest.raises(SharedViewNotFound):
        world.shared.get("no-such-code")


def test_the_diff_reads_only_what_neuroglancer_can_mean() -> None:
    layer = {"annotations": [POINT, {"type": "point", "id": "p1", "point": [1, 2, 3]}, {"id": "x"},
                             {"type": "point", "id": "nan", "point": [1, "a", 3]}, BOX]}
    parsed = drawn_annotations(layer)
    assert parsed is not None
    drawn, unreadable = parsed
    assert [d.id for d in drawn] == ["p1", "b1"] and len(unreadable) == 3
    assert drawn_annotations({"name": "no list"}) is None
    changes = diff(drawn, {})
    assert [d.id for d in changes.creates] == ["p1", "b1"] and not changes.deletes


# --- over HTTP: shared links and a server restart ------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_server(data_dir: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = clone_data_dir(data_dir[0], tmp_path_factory.mktemp("viewer-annotations"))
    running = start_server(root)
    running.admin_token = data_dir[1].admin_token
    running.data_dir = root
    yield running
    stop_server(running)


def _signed_in(server: Server, name: str, password: str) -> requests.Session:
    web = requests.Session()
    web.get(f"{server.url}/sign-in", timeout=10)
    answer = web.post(f"{server.url}/api/sign-in", json={"name": name, "password": password},
                      headers={"X-XSRFToken": web.cookies["_xsrf"]}, timeout=30)
    assert answer.ok, answer.text
    web.headers["X-XSRFToken"] = web.cookies["_xsrf"]
    return web


def test_share_link_of_a_private_dataset(own_server: Server) -> None:
    url = own_server.url
    curie = _signed_in(own_server, *CURATOR)
    opened = curie.post(f"{url}/api/datasets/embargoed/sessions", timeout=30).json()
    token, state = opened["token"], opened["state"]
    state["position"] = [5, 6, 7]
    assert curie.put(f"{url}/api/sessions/{token}", json={"state": state}, timeout=30).ok
    shared = curie.post(f"{url}/api/sessions/{token}/share", timeout=30)
    assert shared.status_code == 201, shared.text
    link = shared.json()["url"]
    assert link == f"{url}/v/{shared.json()['code']}"
    # Later changes to the original session do not reach the copy.
    state["position"] = [50, 60, 70]
    assert curie.put(f"{url}/api/sessions/{token}", json={"state": state}, timeout=30).ok
    answer = curie.get(link, allow_redirects=False, timeout=30)
    assert answer.status_code == 302
    dataset_id = curie.get(f"{url}/api/datasets/embargoed", timeout=30).json()["id"]
    assert answer.headers["Location"] == f"/datasets/{dataset_id}?view={shared.json()['code']}"
    again = curie.post(f"{url}/api/datasets/{dataset_id}/sessions?view={shared.json()['code']}", timeout=30).json()
    assert again["token"] != token and again["state"]["position"] == [5, 6, 7]
    # Anyone who may not read the private dataset: the link does not exist.
    for client in (requests.Session(), _outsider(own_server)):
        refused = client.get(link, allow_redirects=False, timeout=30)
        assert refused.status_code == 404 and refused.json()["code"] == "shared_view_not_found"
        assert client.post(f"{url}/api/datasets/{dataset_id}/sessions?view={shared.json()['code']}",
                           timeout=30).status_code == 404
    # A code of another dataset does not open in this one.
    public = curie.post(f"{url}/api/datasets/demo/sessions?view={shared.json()['code']}", timeout=30)
    assert public.status_code == 404


def test_the_editing_view_over_http_leaves_out_what_the_session_holds(own_server: Server) -> None:
    """The view layer of a session that drew a point reads its cells without it; the rest of the layer, and the
    same cell for anyone else (who may read the dataset), is as before; outsiders get 404 as for any view."""
    url = own_server.url
    curie = _signed_in(own_server, *CURATOR)
    layers = f"{url}/api/datasets/embargoed/annotation-layers"
    made = curie.post(layers, json={"name": "editing-view", "types": ["point"]}, timeout=30)
    assert made.status_code == 201, made.text
    layer = made.json()
    other = curie.post(f"{layers}/{layer['id']}/annotations", timeout=30, json={"annotations": [
        {"type": "point", "point": [40, 40, 40]}]}).json()["ids"][0]
    opened = curie.post(f"{url}/api/datasets/embargoed/sessions", timeout=30).json()
    token, state = opened["token"], opened["state"]
    next(item for item in state["layers"] if item["name"] == "editing-view ✎")["annotations"] = [
        {"type": "point", "id": "mine", "point": [80, 80, 80]}]
    assert curie.put(f"{url}/api/sessions/{token}", json={"state": state}, timeout=30).ok
    mine = curie.get(f"{url}/api/sessions/{token}/annotations", timeout=30).json()["saved"]["editing-view ✎"]["mine"]
    [source] = next(item for item in curie.get(f"{url}/api/sessions/{token}", timeout=30).json()["state"]["layers"]
                    if item["name"] == "editing-view")["source"]
    assert "/precomputed/point/editing=" in source

    def ids(answer: requests.Response) -> list[int]:
        assert answer.status_code == 200, answer.text
        count = int(np.frombuffer(answer.content[:8], dtype="<u8")[0])
        return sorted(int(i) for i in np.frombuffer(answer.content[len(answer.content) - 8 * count:], dtype="<u8"))

    cell = source.removeprefix("precomputed://") + "/spatial0/0_0_0"
    current = cell.replace(cell.split("/")[-3], "current")
    assert ids(curie.get(cell, timeout=30)) == [other] and ids(curie.get(current, timeout=30)) == sorted([other, mine])
    tag = curie.get(cell, timeout=30).headers["ETag"]
    assert curie.get(cell, headers={"If-None-Match": tag}, timeout=30).status_code == 304
    assert tag != curie.get(current, timeout=30).headers["ETag"]
    for client in (requests.Session(), _outsider(own_server)):
        refused = client.get(cell, timeout=30)
        assert refused.status_code == 404 and "private" not in refused.text, refused.text
    assert curie.get(cell.replace("editing=", "editing=x"), timeout=30).status_code == 400


def _outsider(server: Server) -> requests.Session:
    web = requests.Session()
    sessions = make_sessions(make_engine(sqlite_url(Path(server.data_dir or "."))))
    accounts = Accounts(sessions)
    if not any(a.name == "outsider-va" for a in accounts.list()):
        accounts.create("outsider-va", "annotator")
    web.headers["Authorization"] = f"Bearer {accounts.create_token('outsider-va')[0]}"
    return web


def test_drawn_annotations_survive_a_server_restart(own_server: Server, tmp_path: Path) -> None:
    url, admin = own_server.url, own_server.admin
    layer = requests.post(f"{url}/api/datasets/tests/annotation-layers", headers=admin, timeout=30,
                          json={"name": "restart", "types": ["point"]})
    assert layer.status_code == 201, layer.text
    opened = requests.post(f"{url}/api/datasets/tests/sessions", headers=admin, timeout=30).json()
    token, state = opened["token"], opened["state"]
    session = requests.get(f"{url}/api/sessions/{token}", timeout=30).json()
    state = session["state"]
    state.pop(RECORD_KEY)
    edit = next(item for item in state["layers"] if item["name"] == edit_layer_name("restart"))
    edit["annotations"] = [{"type": "point", "id": "r1", "point": [40, 50, 60]}]
    posted = requests.post(f"{url}/state/{token}", json={"s": state, "g": 1, "pg": session["generation"], "c": "t"},
                           timeout=30)
    assert posted.status_code == 200, posted.text
    root = own_server.data_dir
    assert root is not None
    stop_server(own_server)
    restarted = start_server(root)
    try:
        report = requests.get(f"{restarted.url}/api/sessions/{token}/annotations", timeout=30).json()
        saved = report["saved"][edit_layer_name("restart")]["r1"]
        listed = requests.get(f"{restarted.url}/api/datasets/tests/annotation-layers/{layer.json()['id']}/annotations",
                              timeout=30).json()["annotations"]
        assert [(a["id"], a["point"]) for a in listed] == [(saved, [40, 50, 60])]
        # The viewer re-posting its state after the restart writes nothing new.
        session = requests.get(f"{restarted.url}/api/sessions/{token}", timeout=30).json()
        again = requests.post(f"{restarted.url}/state/{token}", json={"s": state, "g": 2, "pg": session["generation"],
                                                                      "c": "t"}, timeout=30)
        assert again.status_code == 200
        assert len(requests.get(f"{restarted.url}/api/datasets/tests/annotation-layers/{layer.json()['id']}"
                                "/annotations", timeout=30).json()["annotations"]) == 1
    finally:
        own_server.url, own_server.process = restarted.url, restarted.process  # the fixture stops it
