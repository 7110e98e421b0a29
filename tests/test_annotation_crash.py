"""A server killed with SIGKILL while twelve writers create (in bulk), change and delete annotations over HTTP
loses no acknowledged write, on SQLite (WAL) and PostgreSQL: after a restart on the same database every
create, change and delete that was answered 2xx is there; a write in flight at the kill is there whole or not
at all (a bulk create all or nothing); and the precomputed source, read by Neuroglancer's own reader, and the
stored spatial index serve exactly what the database holds."""

from __future__ import annotations

import functools
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from annotations.db import make_engine
from tests.annotation_index import check_index
from tests.conftest import fresh_database, kill_while_writing, start_server, stop_server
from tests.test_annotation_source import LAYER, LIMIT, compare, layer_path, listing, random_item, written
from tests.test_annotations import Site, prepare_database

WRITERS = 12
RUN_SECONDS = 3.0  # of writing before the kill


@dataclass
class Writer:
    """What one writer was told was done, and what it had sent when the server died."""

    created: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> its last acknowledged content
    deleted: set[int] = field(default_factory=set)
    in_flight: tuple[str, Any] | None = None  # ("create", items) | ("change", (id, item)) | ("delete", id)
    acknowledged: int = 0


def plain(item: dict[str, Any]) -> tuple[Any, ...]:
    """An annotation's content as compared here (geometry as float32, label, properties)."""
    fixed = written(item)
    return fixed["type"], tuple(fixed["geometry"]), fixed["label"], tuple(sorted(fixed["properties"].items()))


def write_until_refused(site: Site, layer_id: int, index: int, writer: Writer, stop: threading.Event) -> None:
    rng = random.Random(index)
    base = layer_path(layer_id)
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {site.tokens['curator']}"
    kinds = ["point", "point", "line", "axis_aligned_bounding_box", "ellipsoid", "polyline"]
    try:
        while not stop.is_set():
            mine = sorted(set(writer.created) - writer.deleted)
            action = rng.random()
            if action < 0.5 or len(mine) < 5:
                items = [random_item(rng, rng.choice(kinds)) for _ in range(rng.choice([1, 5, 40, 150]))]
                writer.in_flight = ("create", items)
                answer = http.post(site.server.url + base + "/annotations", json={"annotations": items}, timeout=60)
                assert answer.status_code == 201, answer.text
                writer.created.update(zip(answer.json()["ids"], items, strict=True))
            elif action < 0.8:
                annotation_id = rng.choice(mine)
                item = random_item(rng, rng.choice(kinds))
                writer.in_flight = ("change", (annotation_id, item))
                answer = http.put(f"{site.server.url}{base}/annotations/{annotation_id}", json=item, timeout=60)
                assert answer.status_code == 200, answer.text
                writer.created[annotation_id] = item
            else:
                annotation_id = rng.choice(mine)
                writer.in_flight = ("delete", annotation_id)
                answer = http.delete(f"{site.server.url}{base}/annotations/{annotation_id}", timeout=60)
                assert answer.status_code == 200, answer.text
                writer.deleted.add(annotation_id)
            writer.in_flight = None
            writer.acknowledged += 1
    except requests.ConnectionError:
        return  # the server died: what was in flight may or may not have been stored
    finally:
        http.close()


Database = tuple[Path, str, dict[str, str]]  # a folder, the database's URL, the accounts' tokens


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    root = tmp_path_factory.mktemp(f"crash-{request.param}")
    with fresh_database(request.param, root) as url:
        yield root, url, prepare_database(url)


def test_a_killed_server_loses_no_acknowledged_write(database: Database) -> None:
    root, url, tokens = database
    env = {"LAMELLA_ANNOTATION_CELL_LIMIT": str(LIMIT)}
    server = start_server(root, "--database-url", url, env=env)
    site = Site(server, url, tokens)
    made = site.call("POST", "/api/datasets/cells/annotation-layers", "curator", json={"name": "crash", **LAYER})
    assert made.status_code == 201, made.text
    layer_id = made.json()["id"]
    writers = [Writer() for _ in range(WRITERS)]
    kill_while_writing(server, functools.partial(write_until_refused, site, layer_id), writers, RUN_SECONDS, 60)
    acknowledged = sum(w.acknowledged for w in writers)
    in_flight = [w.in_flight for w in writers if w.in_flight is not None]
    assert acknowledged >= 2 * WRITERS and in_flight, (acknowledged, len(in_flight))

    server = start_server(root, "--database-url", url, env=env)
    try:
        site = Site(server, url, tokens)
        now = {record["id"]: record for record in listing(site, layer_id)}
        # Every acknowledged write is there: creates and changes with their content, deletes gone.
        for writer in writers:
            pending_id = None if writer.in_flight is None or writer.in_flight[0] == "create" else (
                writer.in_flight[1][0] if writer.in_flight[0] == "change" else writer.in_flight[1])
            for annotation_id, item in writer.created.items():
                if annotation_id in writer.deleted:
                    assert annotation_id not in now, annotation_id
                elif annotation_id == pending_id:  # changed or deleted by the write in flight, or not
                    assert annotation_id not in now or plain(now[annotation_id]) in (
                        plain(item), plain(writer.in_flight[1][1]) if writer.in_flight[0] == "change" else None)
                else:
                    assert plain(now[annotation_id]) == plain(item), annotation_id
        # What else is there came whole from bulk creates in flight.
        known = {i for writer in writers for i in writer.created}
        extra = sorted(plain(now[i]) for i in set(now) - known)
        batches = [[plain(item) for item in w.in_flight[1]] for w in writers
                   if w.in_flight is not None and w.in_flight[0] == "create"]
        stored = [batch for batch in batches if all(p in extra for p in batch)]
        assert extra == sorted(p for batch in stored for p in batch)
        # The stored spatial index and the source serve exactly the database.
        engine = make_engine(url)
        try:
            assert check_index(engine, layer_id) >= len(now)
        finally:
            engine.dispose()
        gone = sorted({i for writer in writers for i in writer.deleted} - set(now))
        compare(site, layer_id, "current", list(now.values()), gone[:50])
        print(f"\n{acknowledged} writes acknowledged, {len(in_flight)} in flight at the kill, {len(extra)} "
              f"annotations from creates in flight kept; {len(now)} annotations after the restart")
    finally:
        stop_server(server)


def test_float32_geometry_compares_as_stored() -> None:
    item = {"type": "point", "point": [0.1, 0.2, 0.3], "label": None, "properties": {}}
    assert plain(item)[1] == tuple(float(np.float32(v)) for v in (0.1, 0.2, 0.3))
