"""Shared fixtures: a real populated data directory, a real server process, real databases."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from sqlalchemy import create_engine, text

from annotations.access import Access
from annotations.accounts import Accounts
from annotations.catalog import Catalog, NewDataset
from annotations.db import make_engine, make_sessions, migrate, sqlite_url
from annotations.transforms import Transforms
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource
from viewer.registration import add_existing, build_label_meshes, ensure_demo, import_file, import_labels

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
FIBSEM_TIFF = SHARED_DATA / "fibsem_drosophila_medulla_250cube_neuroproof" / "raw_uint8_zyx.tif"
FIBSEM_LABELS = SHARED_DATA / "fibsem_drosophila_medulla_250cube_neuroproof" / "groundtruth_bodies_uint32_zyx.tif"
POSTGRES_ADMIN_URL = os.environ.get("LAMELLA_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
LAMELLA = [sys.executable, "-m", "viewer.cli"]
CURATOR = ("curie", "curie-password-1")  # curates "correlative" and the private "embargoed"


def shared_file(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is only on development and CI machines)")
    return path


@dataclass
class Sample:
    """Source arrays of the images registered in the test data directory, and an admin's API token."""

    u16: np.ndarray
    v2: np.ndarray
    fibsem: np.ndarray | None
    bodies: np.ndarray | None
    admin_token: str = ""


def small_u16() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 60000, size=(40, 70, 90), dtype=np.uint16)


def small_u8() -> np.ndarray:
    rng = np.random.default_rng(8)
    return rng.integers(0, 255, size=(33, 80, 100), dtype=np.uint8)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Sample]:
    """A data directory with the demo, two small test images and (if present) the real FIB-SEM cube.

    Under pytest-xdist the first worker to get here builds it once, in the folder the workers share, and
    every worker takes its own copy (``clone_data_dir``): what one worker's tests change, no other sees."""
    import fcntl
    import json

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build_data_dir(tmp_path_factory.mktemp("lamella-data"), tmp_path_factory.mktemp("stores"))
    shared = tmp_path_factory.getbasetemp().parent
    built, ready = shared / "lamella-data", shared / "lamella-data.json"
    with open(shared / "lamella-data.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not ready.exists():
            _, sample = build_data_dir(built, shared / "stores")
            ready.write_text(json.dumps({"admin_token": sample.admin_token}))
    admin_token = json.loads(ready.read_text())["admin_token"]
    fibsem = bodies = None
    if FIBSEM_TIFF.exists():
        import tifffile

        fibsem, bodies = tifffile.imread(FIBSEM_TIFF), tifffile.imread(FIBSEM_LABELS)
    root = clone_data_dir(built, tmp_path_factory.mktemp("lamella-data"))
    return root, Sample(u16=small_u16(), v2=small_u8(), fibsem=fibsem, bodies=bodies, admin_token=admin_token)


def build_data_dir(root: Path, stores: Path) -> tuple[Path, Sample]:
    """The test data directory in ``root``, its two small OME-Zarr stores (registered where they are) in ``stores``."""
    root.mkdir(parents=True, exist_ok=True)
    stores.mkdir(parents=True, exist_ok=True)
    engine = make_engine(sqlite_url(root))
    migrate(engine)
    sessions = make_sessions(engine)
    catalog = Catalog(sessions)
    ensure_demo(catalog, root / "images", Transforms(sessions))
    u16, v2 = small_u16(), small_u8()
    write_pyramid(ArraySource(u16), stores / "u16.ome.zarr", voxel_size=(30.0, 4.0, 4.0),
                  options=PyramidOptions(chunk=32, name="u16"))
    write_pyramid(ArraySource(v2), stores / "v2.ome.zarr", voxel_size=(10.0, 10.0, 10.0),
                  options=PyramidOptions(ome_version="0.4", chunk=32, name="v2"))
    add_existing(catalog, str(stores / "u16.ome.zarr"), "tests", name="u16")
    add_existing(catalog, str(stores / "v2.ome.zarr"), "tests", name="v2")
    # The demo's two modalities again, without their transform, for registration tests to change.
    for image in (image for image in catalog.get_dataset("demo").images if image.kind == "image"):
        add_existing(catalog, image.uri, "correlative", name=image.name, modality=image.modality)
    fibsem = bodies = None
    if FIBSEM_TIFF.exists():
        import tifffile

        fibsem = tifffile.imread(FIBSEM_TIFF)
        import_file(catalog, root / "images", str(FIBSEM_TIFF), "fibsem", name="raw",
                    voxel_size_nm=(10.0, 10.0, 10.0), show_progress=False)
        bodies = tifffile.imread(FIBSEM_LABELS)
        import_labels(catalog, root / "images", str(FIBSEM_LABELS), "fibsem", image="raw", name="bodies",
                      show_progress=False)
        build_label_meshes(catalog, root / "images", "fibsem", "bodies", show_progress=False)
    accounts = Accounts(sessions)
    accounts.create("admin", "admin")
    admin_token, _ = accounts.create_token("admin", label="tests")
    # A curator who signs in with a password, and an embargoed dataset only members see.
    curie = accounts.create(CURATOR[0], "curator", password=CURATOR[1])
    add_existing(catalog, str(stores / "v2.ome.zarr"), "embargoed", name="v2",
                 new=NewDataset(visibility="private", curator=curie.id))
    Access(sessions).set_member("correlative", CURATOR[0], "curator")
    engine.dispose()
    return root, Sample(u16=u16, v2=v2, fibsem=fibsem, bodies=bodies, admin_token=admin_token)


@dataclass
class Server:
    url: str
    process: subprocess.Popen[str]
    admin_token: str = ""
    data_dir: Path | None = None

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path, **{"timeout": 30, **kwargs})  # type: ignore[arg-type]

    @property
    def admin(self) -> dict[str, str]:
        """Headers of requests made as the test data directory's admin (a bearer token)."""
        return {"Authorization": f"Bearer {self.admin_token}"}


def start_server(data_dir: Path, *extra: str, env: dict[str, str] | None = None, stderr: Any = None) -> Server:
    """``lamella serve`` in a subprocess on a free port; returns once it answers.

    ``env``: variables added to this process's (LAMELLA_* settings); ``stderr``: a file for the server's
    log (default: discarded).
    """
    process = subprocess.Popen(
        [*LAMELLA, "serve", "--data-dir", str(data_dir), "--port", "0", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if stderr is None else stderr, text=True,
        env=None if env is None else {**os.environ, **env},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://[\d.]+:\d+)/", line)
    if match is None:
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    server = Server(match.group(1), process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if server.get("/api/datasets").ok:
                return server
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not answer within 30 s")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()


def kill_while_writing(server: Server, write: Callable[[int, Any, threading.Event], None], writers: Sequence[Any],
                       seconds: float, join_seconds: float) -> None:
    """One thread per writer runs ``write(index, writer, stop)`` for ``seconds``; then the server is killed with
    SIGKILL (no shutdown, no flush) and the writers are stopped and joined."""
    stop = threading.Event()
    threads = [threading.Thread(target=write, args=(i, w, stop), daemon=True) for i, w in enumerate(writers)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    server.process.kill()
    server.process.wait(10)
    stop.set()
    for thread in threads:
        thread.join(join_seconds)
        assert not thread.is_alive()


@pytest.fixture(scope="session")
def server(data_dir: tuple[Path, Sample]) -> Iterator[Server]:
    running = start_server(data_dir[0])
    running.admin_token = data_dir[1].admin_token
    running.data_dir = data_dir[0]
    yield running
    stop_server(running)


def clone_data_dir(source: Path, destination: Path) -> Path:
    """A copy of a data directory for a test that changes it: the database by SQLite's backup API (a
    consistent copy while a server may be using it), imported images as hard links (never rewritten), and the
    copy's images registered at their copies (what a test builds into one, such as meshes, stays there)."""
    import shutil
    import sqlite3

    destination.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source / "images", destination / "images", copy_function=os.link)
    with sqlite3.connect(source / "lamella.sqlite") as original, \
            sqlite3.connect(destination / "lamella.sqlite") as copy:
        original.backup(copy)
        old, new = f"{source / 'images'}/", f"{destination / 'images'}/"
        copy.execute("UPDATE images SET uri = ? || substr(uri, ?) WHERE substr(uri, 1, ?) = ?",
                     (new, len(old) + 1, len(old), old))
    return destination


@pytest.fixture(scope="module")
def scratch_server(data_dir: tuple[Path, Sample], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own on a copy of the test data directory, for tests that change datasets, accounts
    and sessions in ways others must not see (fuzzing, schemathesis, access changes)."""
    root = clone_data_dir(data_dir[0], tmp_path_factory.mktemp("scratch-data"))
    running = start_server(root)
    running.admin_token = data_dir[1].admin_token
    running.data_dir = root
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def sample(data_dir: tuple[Path, Sample]) -> Sample:
    return data_dir[1]


def postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def fresh_database(kind: str, folder: Path) -> Iterator[str]:
    """The URL of a fresh, empty database of ``kind`` (SQLite in ``folder``; PostgreSQL: a throwaway database,
    dropped afterwards; skipped when there is no PostgreSQL)."""
    if kind == "sqlite":
        yield sqlite_url(folder)
        return
    if not postgres_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 (make test starts the local one when installed)")
    name = f"lamella_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind (PostgreSQL: a throwaway database)."""
    with fresh_database(request.param, tmp_path) as url:
        yield url
