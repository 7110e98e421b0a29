"""The whole server on PostgreSQL: catalog, pixels and viewer state behave as on SQLite."""

from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import start_server, stop_server
from tests.test_cli import lamella
from tiling.pyramid import write_pyramid
from tiling.sources import ArraySource


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_server_on_postgresql(database_url: str, tmp_path: Path) -> None:
    data = np.arange(16 * 40 * 40, dtype=np.uint16).reshape(16, 40, 40)
    write_pyramid(ArraySource(data), tmp_path / "pg.ome.zarr", voxel_size=(5.0, 5.0, 5.0))
    lamella("add", str(tmp_path / "pg.ome.zarr"), "--dataset", "pg", "--name", "em", "--database-url", database_url,
            "--data-dir", str(tmp_path / "data"), check=True)
    running = start_server(tmp_path / "data", "--database-url", database_url, "--processes", "2")
    try:
        assert running.get("/api/datasets/pg").json()["images"][0]["dtype"] == "uint16"
        raw = running.get("/api/datasets/pg/images/em/precomputed/0/0-40_0-40_0-16",
                          headers={"Accept-Encoding": "identity"}).content
        np.testing.assert_array_equal(np.frombuffer(raw, "<u2").reshape(data.shape), data)
        session = requests.post(f"{running.url}/api/datasets/pg/sessions", timeout=10).json()
        generation = running.get(f"/api/sessions/{session['token']}").json()["generation"]
        posted = requests.post(f"{running.url}/state/{session['token']}",
                               json={"s": {"layout": "xy"}, "g": "1", "pg": generation, "c": "a"}, timeout=10)
        assert posted.json() == {"g": "a/1"}
        assert running.get(f"/api/sessions/{session['token']}").json()["state"] == {"layout": "xy"}
    finally:
        stop_server(running)
