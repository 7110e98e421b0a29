#!/usr/bin/env python
"""Annotations at scale: bulk ingest, spatial-index cells, bounding-box queries and the static export, on SQLite
and PostgreSQL, against a real ``lamella serve`` process over HTTP.

For each backend, one fresh database (the demo dataset, an admin and its API token, made with the CLI) and one
point layer with a label and a float32 property. Points are drawn uniformly in the layer's bounds from seeded
NumPy generators, a batch of 100,000 (the most one request may add) at a time, and sent as bulk creates until
the layer holds each size in ``--sizes``; at each size:

* ingest: annotations a second over the bulk creates (each timed from the first byte sent to the answer; the
  bodies are made before, not while, the server works), and the server's CPU seconds per 100,000;
* cells: latency of spatial-index cell requests of the ``current`` precomputed source, ``--cells`` random cells
  of every level, the dense coarse levels as many as the finest, in random order on one connection;
* editing cells: the same for the view a viewer session's view layer reads (``editing=<key>``: the layer
  without what the session's edit layer holds), the session having drawn ``HELD`` points into its edit layer
  before the first bulk create (so the layer holds that many more than each size);
* boxes: latency of ``GET …/annotations?bbox=…`` for random boxes holding about 1,000 points;
* export: streaming ``GET …/export?format=precomputed-tar`` to a file (skipped, with a note, while the route
  answers 404), beside Neuroglancer's own ``write_annotations.AnnotationWriter`` writing the same points with
  the same properties to local disk (one file per annotation; above ``--ng-max`` points it writes the first
  ``--ng-max`` and its time is scaled up, marked as such).

Targets: cell p99 <= 10 ms, ingest >= 20,000 annotations/s, export at least as fast as the writer.

Usage: .venv/bin/python benchmarks/annotations.py [--sizes 1e6,1e7] [--backends sqlite,postgresql] [--quick]
                                                  [--cells N] [--boxes N] [--ng-max N] [--quiet-wait S] [--keep]
Results are printed and written to benchmarks/results/annotations.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_PATH = HERE / "results" / "annotations.json"
# This file's name is the package's: look the package up from the repository, not from here.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


harness = _load("serve_chunks")  # the shared harness: processes, CPU accounting, quiet wait
Latency = _load("machine").Latency

BATCH = 100_000  # annotations in one bulk create (the most one request may add)
SEED = 20261202
UPPER = [204_800.0, 204_800.0, 102_400.0]  # nm: a 200 x 200 x 100 µm block; 7 levels of up to 64³ cells
LABELS = ["synapse", "vesicle", "mitochondrion"]
DATASET = "demo"
TARGET_CELL_P99_MS = 10.0
TARGET_INGEST_PER_S = 20_000.0
BOX_POINTS = 1000  # annotations a box query is sized to return
HELD = 1000  # points a viewer session draws into its edit layer (its editing view leaves them out)
POSTGRES_ADMIN = os.environ.get("LAMELLA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class BenchError(Exception):
    """A step failed; the message says which and why."""


# --------------------------------------------------------------------------- points


def batch_points(index: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch ``index``: points (count x 3, nm, float32-exact), label numbers (0: none) and confidences."""
    rng = np.random.default_rng([SEED, index])
    points = (rng.random((count, 3)) * np.array(UPPER)).astype(np.float32)
    labels = rng.integers(0, len(LABELS) + 1, count)
    confidence = rng.random(count).astype(np.float32)
    return points, labels, confidence


def bulk_body(points: np.ndarray, labels: np.ndarray, confidence: np.ndarray) -> bytes:
    label_names = [None, *LABELS]
    return orjson.dumps({"annotations": [
        {"type": "point", "point": p, "label": label_names[n], "properties": {"confidence": c}}
        for p, n, c in zip(points.astype(np.float64).tolist(), labels.tolist(),
                           confidence.astype(np.float64).tolist(), strict=True)]})


# --------------------------------------------------------------------------- server and client


class Client:
    """One keep-alive HTTP connection to the server, with the admin's token."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}"}
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        all_headers = {**self.headers, **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            try:
                self.connection.request(method, path, body=body, headers=all_headers)
                response = self.connection.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.connection.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, document: Any = None, expect: int = 200) -> Any:
        status, body = self.request(method, path, None if document is None else orjson.dumps(document))
        if status != expect:
            raise BenchError(f"{method} {path}: {status} {body[:300]!r}")
        return orjson.loads(body)

    def close(self) -> None:
        self.connection.close()


def lamella_cli(*args: str) -> str:
    lamella = REPO / ".venv" / "bin" / "lamella"
    done = subprocess.run([str(lamella), *args], capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise BenchError(f"lamella {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def start_server(procs: Any, name: str, options: Sequence[str]) -> tuple[subprocess.Popen[bytes], int]:
    """``lamella serve`` on a free port; returns the process and the port it printed."""
    process = procs.start(name, [str(REPO / ".venv" / "bin" / "lamella"), "serve", "--port", "0", *options],
                          cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", procs.log_tail(name, 50))
        if match:
            port = int(match.group(1))
            harness.wait_until(port, "/api/datasets", process, procs, name)
            return process, port
        if process.poll() is not None:
            raise BenchError(f"{name} exited with {process.returncode}:\n{procs.log_tail(name)}")
        time.sleep(0.1)
    raise BenchError(f"{name} never printed its address:\n{procs.log_tail(name)}")


@contextlib.contextmanager
def database(backend: str, data_dir: Path) -> Iterator[list[str]]:
    """The CLI options naming a fresh database of ``backend`` (PostgreSQL: a throwaway database)."""
    if backend == "sqlite":
        yield []
        return
    import psycopg

    name = f"lamella_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ["--database-url", POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"]
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- measurements


@dataclass
class Result:
    backend: str
    size: int
    ingest_per_s: float = float("nan")
    ingest_server_cpu_s_per_100k: float = float("nan")
    cells: Latency = field(default_factory=Latency)
    cells_by_level: dict[int, Latency] = field(default_factory=dict)
    cell_sizes: dict[int, float] = field(default_factory=dict)  # level -> mean annotations a cell
    editing_cells: Latency = field(default_factory=Latency)
    boxes: Latency = field(default_factory=Latency)
    box_mean_annotations: float = float("nan")
    export_s: float | None = None
    export_bytes: int | None = None
    export_note: str = ""
    ng_writer_s: float | None = None
    ng_writer_note: str = ""
    machine_busy_pct: float = float("nan")


def measure_cells(client: Client, source: str, info: dict[str, Any], per_level: int,
                  rng: np.random.Generator) -> tuple[Latency, dict[int, Latency], dict[int, float]]:
    """Random cells of every level, ``per_level`` of each, in random order; checks each answer's shape."""
    requests = []
    for level, spatial in enumerate(info["spatial"]):
        grid = spatial["grid_shape"]
        for _ in range(per_level):
            cell = [int(rng.integers(0, g)) for g in grid]
            requests.append((level, f"{source}/{spatial['key']}/{cell[0]}_{cell[1]}_{cell[2]}"))
    rng.shuffle(requests)  # type: ignore[arg-type]
    record = 12 + 4 + 4  # point, confidence (float32), label (uint8) padded to 4
    times: dict[int, list[float]] = {level: [] for level in range(len(info["spatial"]))}
    sizes: dict[int, list[int]] = {level: [] for level in times}
    finest = len(info["spatial"]) - 1
    for level, path in requests:
        started = time.perf_counter()
        status, body = client.request("GET", path)
        times[level].append(time.perf_counter() - started)
        if status != 200:
            raise BenchError(f"GET {path}: {status} {body[:200]!r}")
        (count,) = struct.unpack_from("<Q", body)
        if len(body) != 8 + count * (record + 8) or (level != finest and count > info["spatial"][level]["limit"]):
            raise BenchError(f"GET {path}: {count} annotations in {len(body)} bytes")
        sizes[level].append(count)
    everything = [t for level_times in times.values() for t in level_times]
    return (Latency.of(everything), {level: Latency.of(t) for level, t in times.items()},
            {level: float(np.mean(s)) for level, s in sizes.items()})


def draw_in_a_session(client: Client) -> str:
    """A viewer session of the admin whose edit layer holds ``HELD`` points (saved to the layer as Neuroglancer
    would post them); returns the path of the precomputed source its view layer reads."""
    opened = client.json("POST", f"/api/datasets/{DATASET}/sessions", expect=201)
    token, state = opened["token"], opened["state"]
    rng = np.random.default_rng([SEED, 0, 2])
    points = (rng.random((HELD, 3)) * np.array(UPPER)).astype(np.float32).astype(np.float64).tolist()
    edit = next(layer for layer in state["layers"] if layer["name"] == "bench ✎")
    edit["annotations"] = [{"type": "point", "id": f"drawn{i}", "point": p} for i, p in enumerate(points)]
    client.json("PUT", f"/api/sessions/{token}", {"state": state})
    saved = client.json("GET", f"/api/sessions/{token}/annotations")["saved"].get("bench ✎", {})
    if len(saved) != HELD:
        raise BenchError(f"the session saved {len(saved)} of its {HELD} points")
    state = client.json("GET", f"/api/sessions/{token}")["state"]
    [url] = next(layer for layer in state["layers"] if layer["name"] == "bench")["source"]
    path = "/api/" + url.split("/api/", 1)[1]
    if "/editing=" not in path:
        raise BenchError(f"the session's view layer reads {path}, not an editing view")
    return path


def measure_boxes(client: Client, layer_path: str, size: int, count: int,
                  rng: np.random.Generator) -> tuple[Latency, float]:
    side = np.array(UPPER) * (BOX_POINTS / size) ** (1 / 3)
    times, found = [], []
    for _ in range(count):
        lower = rng.random(3) * (np.array(UPPER) - side)
        box = ",".join(f"{v:.3f}" for v in [*lower, *(lower + side)])
        started = time.perf_counter()
        status, body = client.request("GET", f"{layer_path}/annotations?bbox={box}&limit=10000")
        times.append(time.perf_counter() - started)
        if status != 200:
            raise BenchError(f"bbox query: {status} {body[:200]!r}")
        found.append(len(orjson.loads(body)["annotations"]))
    return Latency.of(times), float(np.mean(found))


def measure_export(client: Client, layer_path: str, folder: Path) -> tuple[float | None, int | None, str]:
    path = f"{layer_path}/export?format=precomputed-tar"
    target = folder / "export.tar"
    connection = http.client.HTTPConnection("127.0.0.1", client.port, timeout=3600)
    try:
        started = time.perf_counter()
        connection.request("GET", path, headers=client.headers)
        response = connection.getresponse()
        if response.status == 404:
            response.read()
            return None, None, "the export route answers 404 (not wired up in this build): skipped"
        if response.status != 200:
            raise BenchError(f"export: {response.status} {response.read()[:300]!r}")
        written = 0
        with target.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
        return time.perf_counter() - started, written, ""
    finally:
        connection.close()
        target.unlink(missing_ok=True)


def measure_ng_writer(size: int, ng_max: int, folder: Path) -> tuple[float, str]:
    """Neuroglancer's AnnotationWriter on the same points and properties, written to local disk."""
    import neuroglancer
    from neuroglancer.write_annotations import AnnotationWriter

    written = min(size, ng_max)
    space = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=[1, 1, 1])
    writer = AnnotationWriter(space, "point", properties=[
        neuroglancer.AnnotationPropertySpec(id="confidence", type="float32"),
        neuroglancer.AnnotationPropertySpec(id="label", type="uint8", enum_values=list(range(len(LABELS) + 1)),
                                            enum_labels=["", *LABELS])])
    target = folder / "ng-writer"
    started = time.perf_counter()
    for index in range(0, written, BATCH):
        points, labels, confidence = batch_points(index // BATCH, min(BATCH, written - index))
        for i, (point, label, value) in enumerate(zip(points.tolist(), labels.tolist(), confidence.tolist(),
                                                      strict=True)):
            writer.add_point(point, id=index + i + 1, confidence=value, label=label)
    writer.write(target)
    seconds = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    if written < size:
        return seconds * size / written, f"wrote the first {written:,} points; time scaled to {size:,}"
    return seconds, ""


# --------------------------------------------------------------------------- one backend


def run_backend(args: argparse.Namespace, backend: str, sizes: Sequence[int], tmp: Path) -> list[Result]:
    data_dir = tmp / backend
    data_dir.mkdir()
    results: list[Result] = []
    procs = harness.Processes(tmp / "logs")
    try:
        with database(backend, data_dir) as db:
            base = ["--data-dir", str(data_dir), *db]
            lamella_cli("demo", *base)
            lamella_cli("user", "add", "bench", "--role", "admin", *base)
            token = lamella_cli("token", "create", "bench", "--label", "benchmark", *base).strip().splitlines()[-1]
            process, port = start_server(procs, f"lamella-{backend}", base)
            client = Client(port, token)
            layers = f"/api/datasets/{DATASET}/annotation-layers"
            layer = client.json("POST", layers, {
                "name": "bench", "types": ["point"], "labels": [{"id": label} for label in LABELS],
                "properties": [{"id": "confidence", "type": "float32"}], "lower_bound": [0, 0, 0],
                "upper_bound": UPPER}, expect=201)
            layer_path = f"{layers}/{layer['id']}"
            source = f"{layer_path}/precomputed/point/current"
            editing = draw_in_a_session(client)
            held = 0
            for size in sizes:
                result = Result(backend, size)
                result.machine_busy_pct = harness.wait_for_quiet(args.quiet_wait)
                started = time.perf_counter()
                cpu_before = sum(harness.tree_cpu([process.pid]).values())
                sent = _ingest(client, layer_path, held, size)
                cpu = sum(harness.tree_cpu([process.pid]).values()) - cpu_before
                result.ingest_per_s = (size - held) / sent
                result.ingest_server_cpu_s_per_100k = cpu / (size - held) * BATCH
                print(f"  {backend} {size:,}: ingested {size - held:,} in {time.perf_counter() - started:.0f} s "
                      f"({result.ingest_per_s:,.0f}/s over the requests)", flush=True)
                held = size
                harness.wait_for_quiet(args.quiet_wait)
                rng = np.random.default_rng([SEED, size, 1])
                info = orjson.loads(client.request("GET", f"{source}/info")[1])
                result.cells, result.cells_by_level, result.cell_sizes = measure_cells(client, source, info,
                                                                                       args.cells, rng)
                result.editing_cells, _, _ = measure_cells(client, editing, info, args.cells, rng)
                result.boxes, result.box_mean_annotations = measure_boxes(client, layer_path, size, args.boxes, rng)
                result.export_s, result.export_bytes, result.export_note = measure_export(client, layer_path, tmp)
                if args.ng_max > 0:
                    result.ng_writer_s, result.ng_writer_note = measure_ng_writer(size, args.ng_max, tmp)
                results.append(result)
                print(f"  {backend} {size:,}: cells p50 {result.cells.p50_ms:.1f} ms p99 {result.cells.p99_ms:.1f} "
                      f"ms; boxes p50 {result.boxes.p50_ms:.1f} ms", flush=True)
            client.close()
            procs.stop(process)
    finally:
        procs.stop_all()
    return results


def _ingest(client: Client, layer_path: str, held: int, target: int) -> float:
    """Bulk creates from ``held`` to ``target`` annotations; returns the seconds the requests took."""
    sent = 0.0
    while held < target:
        count = min(BATCH, target - held)
        body = bulk_body(*batch_points(held // BATCH, count))
        started = time.perf_counter()
        status, answer = client.request("POST", f"{layer_path}/annotations", body)
        sent += time.perf_counter() - started
        if status != 201 or orjson.loads(answer)["count"] != count:
            raise BenchError(f"bulk create: {status} {answer[:300]!r}")
        held += count
    return sent


# --------------------------------------------------------------------------- report


def report(results: Sequence[Result]) -> list[str]:
    lines = ["", "annotations (per backend and size)",
             f"{'backend':<11}{'size':>12}{'ingest/s':>10}{'cpu/100k':>10}{'cell p50':>10}{'cell p99':>10}"
             f"{'edit p50':>10}{'edit p99':>10}{'box p50':>9}{'box p99':>9}{'box n':>7}{'export s':>10}"
             f"{'NG writer s':>13}"]
    for r in results:
        export = "n/a" if r.export_s is None else f"{r.export_s:.1f}"
        writer = "n/a" if r.ng_writer_s is None else f"{r.ng_writer_s:.1f}{'*' if r.ng_writer_note else ''}"
        lines.append(f"{r.backend:<11}{r.size:>12,}{r.ingest_per_s:>10,.0f}{r.ingest_server_cpu_s_per_100k:>9.1f}s"
                     f"{r.cells.p50_ms:>8.1f}ms{r.cells.p99_ms:>8.1f}ms{r.editing_cells.p50_ms:>8.1f}ms"
                     f"{r.editing_cells.p99_ms:>8.1f}ms{r.boxes.p50_ms:>7.1f}ms{r.boxes.p99_ms:>7.1f}ms"
                     f"{r.box_mean_annotations:>7.0f}{export:>10}{writer:>13}")
    lines += ["", "cells by level: p50 / p99 ms (mean annotations a cell)"]
    for r in results:
        levels = "  ".join(f"L{level} {lat.p50_ms:.1f}/{lat.p99_ms:.1f} ({r.cell_sizes[level]:.0f})"
                           for level, lat in r.cells_by_level.items())
        lines.append(f"{r.backend:<11}{r.size:>12,}  {levels}")
    lines += ["", "against the targets (>= 1 meets it)"]
    for r in results:
        ratios = [f"cell p99 {TARGET_CELL_P99_MS / r.cells.p99_ms:.2f} (target {TARGET_CELL_P99_MS:.0f} ms)",
                  f"ingest {r.ingest_per_s / TARGET_INGEST_PER_S:.2f} (target {TARGET_INGEST_PER_S:,.0f}/s)"]
        if r.export_s is not None and r.ng_writer_s is not None:
            ratios.append(f"export {r.ng_writer_s / r.export_s:.2f} (NG writer time / export time)")
        lines.append(f"{r.backend:<11}{r.size:>12,}  " + "; ".join(ratios))
    notes = sorted({n for r in results for n in (r.export_note, r.ng_writer_note) if n})
    if notes:
        lines += ["", "notes:"] + [f"  * {note}" if "scaled" in note else f"  {note}" for note in notes]
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="layer sizes to measure at, in order (default 1e6,1e7)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 100,000 points, fewer samples")
    parser.add_argument("--cells", type=int, default=300, help="random cells requested per level")
    parser.add_argument("--boxes", type=int, default=200, help="bounding-box queries")
    parser.add_argument("--ng-max", type=float, default=1e6,
                        help="points Neuroglancer's writer writes at most (one file each); 0: skip it")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="seconds to wait for other load to stop before each size")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    args.sizes = [int(float(s)) for s in args.sizes.split(",")]
    args.backends = args.backends.split(",")
    args.ng_max = int(args.ng_max)
    if args.quick:
        args.sizes, args.cells, args.boxes = [100_000], min(args.cells, 60), min(args.boxes, 50)
    if any(b not in ("sqlite", "postgresql") for b in args.backends):
        parser.error("backends are sqlite and postgresql")
    if any(b <= a for a, b in zip(args.sizes, args.sizes[1:], strict=False)):
        parser.error("sizes grow, one layer taking them in turn")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lamella-annotations-bench-"))
    results: list[Result] = []
    try:
        for backend in args.backends:
            print(f"{backend}: sizes {', '.join(f'{s:,}' for s in args.sizes)}", flush=True)
            results += run_backend(args, backend, args.sizes, tmp)
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    lines = report(results)
    print("\n".join(lines))
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps({"args": {k: v for k, v in vars(args).items()},
                                        "results": [asdict(r) for r in results], "report": lines}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
