"""The stored spatial index of the ``current`` view, in process, on SQLite and PostgreSQL: migration 0007 builds
it for layers written before it; bulk creates, moves, edits in place, deletes and a growing layer declaration
keep it right (``tests.annotation_index.check_index``); the store's fast checker words errors as the slow one."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import TypeAdapter
from sqlalchemy import Engine, inspect, text

from annotations.access import Access, Actor, DatasetAccess
from annotations.accounts import Accounts
from annotations.annotation_store import AnnotationStore, LayerChanges, LayerIn
from annotations.db import make_engine, make_sessions, migrate, upgrade_with_alembic
from annotations.errors import InvalidAnnotation
from annotations.layer_specs import AnnotationIn
from tests.annotation_index import check_index
from tests.test_annotations import prepare_database

ITEMS = TypeAdapter(list[AnnotationIn])
UPPER = [256.0, 256.0, 128.0]


@dataclass
class Store:
    engine: Engine
    store: AnnotationStore
    actor: Actor
    access: DatasetAccess


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    tokens = prepare_database(database_url)
    engine = make_engine(database_url)
    sessions = make_sessions(engine)
    actor = Accounts(sessions).token_actor(tokens["curator"]).actor
    yield Store(engine, AnnotationStore(sessions, cell_limit=5), actor, Access(sessions).dataset_access(actor, "cells"))
    engine.dispose()


def random_item(rng: random.Random, kind: str) -> dict[str, Any]:
    centre = [rng.uniform(0, u) for u in UPPER]
    if rng.random() < 0.1:
        centre[0] = 128.0  # on a cell boundary of several levels
    def near(spread: float) -> list[float]:
        return [min(max(c + rng.uniform(-spread, spread), 0.0), u) for c, u in zip(centre, UPPER, strict=True)]
    item: dict[str, Any] = {"type": kind, "label": rng.choice([None, "synapse", "vesicle"]),
                            "properties": {"confidence": rng.random()} if rng.random() < 0.7 else {}}
    if kind == "point":
        item["point"] = centre
    elif kind == "line":
        item["point_a"], item["point_b"] = near(40), near(40)
    elif kind == "ellipsoid":
        item["center"], item["radii"] = centre, [rng.uniform(0, 30) for _ in range(3)]
    else:
        item["points"] = [near(20) for _ in range(rng.randint(2, 5))]
    return item


def make_layer(store: Store) -> int:
    layer = LayerIn.model_validate({"name": f"index{random.randrange(10**6)}", "types": ["point", "line", "ellipsoid",
                                                                                         "polyline"],
                                    "labels": [{"id": "synapse"}, {"id": "vesicle"}],
                                    "properties": [{"id": "confidence", "type": "float32"}],
                                    "lower_bound": [0, 0, 0], "upper_bound": UPPER})
    return store.store.create_layer(store.actor, store.access, layer).id


def test_writes_keep_the_index_right(store: Store) -> None:
    rng = random.Random(13)
    layer_id = make_layer(store)
    kinds = ["point", "point", "point", "line", "ellipsoid", "polyline"]
    ids: list[int] = []
    for size in (1, 300, 40, 700):
        items = ITEMS.validate_python([random_item(rng, rng.choice(kinds)) for _ in range(size)])
        ids += store.store.create_many(store.actor, store.access, layer_id, items).ids
        check_index(store.engine, layer_id)
    for annotation_id in rng.sample(ids, 60):  # moves, some to another type
        item = AnnotationIn.model_validate(random_item(rng, rng.choice(kinds)))
        store.store.update(store.actor, store.access, layer_id, annotation_id, item)
    check_index(store.engine, layer_id)
    for annotation_id in rng.sample(ids, 30):  # edits in place: another label, the same geometry
        record = store.store.get(store.actor, store.access, layer_id, annotation_id)
        given = record.model_dump(include={"type", "point", "point_a", "point_b", "center", "radii", "points"},
                                  exclude_none=True)
        store.store.update(store.actor, store.access, layer_id, annotation_id,
                           AnnotationIn.model_validate({**given, "label": "vesicle"}))
    check_index(store.engine, layer_id)
    for annotation_id in rng.sample(ids, 200):
        store.store.delete(store.actor, store.access, layer_id, annotation_id)
    assert check_index(store.engine, layer_id) > 0
    # A property added to the declaration changes every record's layout: the index is encoded anew.
    store.store.update_layer(store.actor, store.access, layer_id, LayerChanges.model_validate(
        {"properties": [{"id": "confidence", "type": "float32"}, {"id": "score", "type": "uint16"}]}))
    check_index(store.engine, layer_id)


def test_the_fast_check_words_errors_as_the_slow_one(store: Store) -> None:
    layer_id = make_layer(store)
    good = {"type": "point", "point": [1, 2, 3]}
    for bad, message in (({"type": "point", "point": [1, 2, 300]}, "annotations[2]: coordinate 300.0 of axis z"),
                         ({"type": "point", "point": [1, 2, 3], "label": "x"}, "annotations[2]: unknown label"),
                         ({"type": "line", "point": [1, 2, 3]}, "annotations[2]: a line has point_a")):
        items = ITEMS.validate_python([good, good, bad, {"type": "point", "point": [1, 2, -1]}])
        with pytest.raises(InvalidAnnotation) as refused:
            store.store.create_many(store.actor, store.access, layer_id, items)
        assert str(refused.value).startswith(message), str(refused.value)


def test_migration_builds_the_index_of_existing_layers(database_url: str) -> None:
    """A layer written at revision 0006 (before the index) is served from an index built by 0007."""
    engine = make_engine(database_url)
    with engine.begin() as connection:
        upgrade_with_alembic(connection, "0006")
    rng = random.Random(5)
    spec = {"types": ["point", "line"], "labels": [], "properties": [], "relationships": []}
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO datasets (id, name, title, description, rembi, visibility, created_at) "
                                "VALUES (1, 'd', 'D', '', '{}', 'public', :now)"), {"now": "2025-01-01 00:00:00"})
        connection.execute(text(
            "INSERT INTO annotation_layers (id, dataset_id, name, description, spec, lower_bound, upper_bound, "
            "generation, max_extent, created_at, updated_at) VALUES (1, 1, 'old', '', :spec, '[0, 0, 0]', :upper, 1, "
            "40, :now, :now)"), {"spec": json.dumps(spec), "upper": json.dumps(UPPER), "now": "2025-01-01 00:00:00"})
        for annotation_id in range(1, 4001):
            kind = "line" if annotation_id % 10 == 0 else "point"
            a = [rng.uniform(0, u) for u in UPPER]
            b = [min(max(v + rng.uniform(-40, 40), 0), u) for v, u in zip(a, UPPER, strict=True)] if kind == "line" \
                else a
            geometry = [float(f"{v:.3f}") for v in (a if kind == "point" else a + b)]
            points = [geometry[i:i + 3] for i in range(0, len(geometry), 3)]
            low = [min(p[i] for p in points) for i in range(3)]
            high = [max(p[i] for p in points) for i in range(3)]
            connection.execute(text("INSERT INTO annotations (id, layer_id, created_at) VALUES (:id, 1, :now)"),
                               {"id": annotation_id, "now": "2025-01-01 00:00:00"})
            for version, (valid_to, deleted) in enumerate(((None, False),) if annotation_id % 7 else
                                                          (("2025-01-02 00:00:00", False), (None, True))):
                connection.execute(text(
                    "INSERT INTO annotation_versions (annotation_id, layer_id, kind, geometry, label, description, "
                    "properties, segments, author, deleted, cell, sample_key, x0, y0, z0, x1, y1, z1, extent, "
                    "valid_from, valid_to) VALUES (:id, 1, :kind, :geometry, NULL, '', '{}', '{}', 'ann', :deleted, 0, "
                    ":key, :x0, :y0, :z0, :x1, :y1, :z1, 0, :since, :until)"),
                    {"id": annotation_id, "kind": kind, "geometry": json.dumps(geometry), "deleted": deleted,
                     "key": rng.random(), "x0": low[0], "y0": low[1], "z0": low[2], "x1": high[0], "y1": high[1],
                     "z1": high[2], "since": f"2025-01-0{1 + version} 00:00:00", "until": valid_to})
        connection.execute(text("INSERT INTO annotation_segments (version_id, relationship, segment_id, layer_id) "
                                "SELECT id, 0, id, 1 FROM annotation_versions WHERE id <= 50"))
    migrate(engine)  # 0010 copies the versions' table on SQLite: what refers to it stays
    with engine.connect() as connection:
        assert connection.execute(text("SELECT cell_limit FROM annotation_layers")).scalar() == 2000
        assert connection.execute(text("SELECT count(*) FROM annotation_segments")).scalar() == 50
        assert [key["referred_table"] for key in inspect(connection).get_foreign_keys("annotation_versions")] == [
            "annotations"]
    assert check_index(engine, 1) >= 4000 - 4000 // 7
    with engine.begin() as connection:
        upgrade_with_alembic(connection)  # at head: nothing to do
    engine.dispose()


def test_a_box_query_looks_up_the_cells_of_the_box_not_the_whole_layer(store: Store) -> None:
    """The plan of a bounding-box listing: a range look-up in the cell index for each range of cells around the box
    (SQLite's multi-index OR, PostgreSQL's lateral scan per range), never every entry of the layer tested one by
    one."""
    from sqlalchemy import event

    from annotations.annotation_store import AnnotationQuery

    rng = random.Random(5)
    layer_id = make_layer(store)
    items = ITEMS.validate_python([random_item(rng, "point") for _ in range(500)])
    ids = store.store.create_many(store.actor, store.access, layer_id, items).ids
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "annotation_versions" in statement and "ORDER BY" in statement:
            seen.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        page = store.store.query(store.actor, store.access, layer_id, AnnotationQuery(bbox="10,10,10,60,70,40"))
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    inside = [annotation_id for annotation_id, item in zip(ids, items, strict=True)
              if all(lo + 0.01 <= v <= hi - 0.01 for v, lo, hi in zip(item.point or [], (10, 10, 10), (60, 70, 40),
                                                                      strict=True))]
    found = [a.id for a in page.annotations]
    assert inside and set(inside) <= set(found) and len(found) <= len(inside) + 2
    statement, parameters = seen[-1]
    with store.engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            plan = [row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            versions = [step for step in plan if "annotation_versions" in step]
            assert versions and all("cell>?" in step for step in versions), plan
        else:
            connection.exec_driver_sql("ANALYZE annotation_versions")  # as autovacuum does once a layer has grown
            connection.exec_driver_sql("SET enable_seqscan = off")  # a table this small would be read whole
            plan = [row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)]
            conditions = [step for step in plan if "Index Cond" in step and "layer_id" in step]
            assert conditions and all("cell >= r.low" in step for step in conditions), "\n".join(plan)
            assert any("Function Scan on r" in step for step in plan)  # one look-up per range of cells


def test_a_change_that_changes_nothing_makes_no_version(store: Store) -> None:
    layer_id = make_layer(store)
    item = AnnotationIn.model_validate({"type": "point", "point": [10.1, 20.2, 30.3], "label": "synapse",
                                        "description": "a", "properties": {"confidence": 0.3}})
    [annotation_id] = store.store.create_many(store.actor, store.access, layer_id, [item]).ids
    again = store.store.update(store.actor, store.access, layer_id, annotation_id, item)
    assert len(store.store.history(store.actor, store.access, layer_id, annotation_id)) == 1
    assert again.label == "synapse" and again.id == annotation_id
    store.store.update(store.actor, store.access, layer_id, annotation_id,
                       AnnotationIn.model_validate({**item.model_dump(exclude_none=True), "label": "vesicle"}))
    versions = store.store.history(store.actor, store.access, layer_id, annotation_id)
    assert [v.label for v in versions] == ["synapse", "vesicle"]
    check_index(store.engine, layer_id)
