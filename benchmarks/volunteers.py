#!/usr/bin/env python
"""Citizen Science volunteers: many simulated volunteers at once against a real ``lamella serve``, on PostgreSQL and
SQLite.

For each backend, one fresh database with the demo's reference image (``em``, 512x512x256 uint8, 8 nm,
generated once into ``--demo-dir`` and registered without copying) and an admin; for each run a new point-tool
project on it, tiled into 128x128x1 tasks (4,096 tasks) with a redundancy of 5, and a server started for the
run (``--processes`` processes). Each simulated volunteer is an anonymous browser with its own cookie jar and
connections (aiohttp, in ``--client-processes`` client processes separate from the server), and does what the
task page does:

1. opens the dataset page (the ``_xsrf`` cookie), then, for each task:
2. ``POST …/next`` (timed: *next*): its open task, or a new one;
3. loads the view as Neuroglancer would: the state's image layer source ``<source>/info``, then the chunks of every
   scale from the coarsest down to the one whose voxels fit the view's pixels (Neuroglancer's choice for a cross
   section, coarse ones first as placeholders) that meet the task's middle slice (timed: *chunk*);
4. looks for a while (the think time, uniform in ``--think``), then submits 5 to 20 random points inside the region
   (timed: *submit*; the answer also hands out the next task, which step 2 then returns).

The per-address rate limit is off for every run (all simulated volunteers share 127.0.0.1, where a classroom
behind one address would too); the per-volunteer limit stays at its default (30 a minute) for the paced runs, which
keep under it as people do. The stress runs (no think time) turn the per-volunteer limit off too, so that they
measure the server, not the limiter. Latencies are of requests started within the measured window (after
``--warmup``); volunteers arrive spread over the warm-up.

After each run the database is checked: every submission acknowledged with 201 must be there (*lost* counts those
that are not: must be 0), and no task may be out with more volunteers than its redundancy (*over-assigned*: must
be 0; also ``handed_out`` must equal its open and submitted assignments).

Target: p99 of *next* and *submit* under 250 ms with 500 paced volunteers on PostgreSQL (``p99 / 250 ms`` is
printed: at most 1 meets it).

Usage: .venv/bin/python benchmarks/volunteers.py [--backends postgresql,sqlite] [--volunteers 100,500]
                                                 [--duration 60] [--warmup 10] [--think 1,5] [--processes 2]
                                                 [--stress-volunteers 100] [--stress-duration 30]
                                                 [--client-processes 1] [--quick] [--profile] [--quiet-wait 60]
Results are printed and written to benchmarks/results/volunteers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.util
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_PATH = HERE / "results" / "volunteers.json"
# benchmarks/annotations.py would shadow the package of that name: load the helpers by path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


machine_info = _load("machine")
Latency = machine_info.Latency
harness = _load("serve_chunks")  # processes, CPU accounting, quiet wait

DATASET = "demo"
IMAGE = "em"
LABELS = ["mitochondrion", "synapse", "vesicle"]
TASK_SHAPE = [128, 128, 1]
REDUNDANCY = 5
TARGET_P99_MS = 250.0
PANEL_PIXELS = 560  # the task view's width the server's state is zoomed for (crossSectionScale = side / 560)
POSTGRES_ADMIN = os.environ.get("LAMELLA_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_DEMO = REPO / "build" / "volunteers-demo"


class BenchError(Exception):
    """A step failed; the message says which and why."""


# --------------------------------------------------------------------------- what a volunteer's view loads


def chunk_paths(info: dict[str, Any], state: dict[str, Any], task: dict[str, Any]) -> list[str]:
    """The chunks (``<scale key>/<x0-x1_y0-y1_z0-z1>``) Neuroglancer's cross section loads for the task: every scale
    from the coarsest to the first whose voxels are no larger than the view's pixels, each chunk of the (cropped)
    scale that meets the middle slice."""
    scales = info["scales"]
    base = scales[0]["resolution"]
    dims = state.get("dimensions", {})
    pixel_nm = float(state.get("crossSectionScale", 1.0)) * (
        float(dims["x"][0]) * 1e9 if "x" in dims else base[0])
    z_nm = (task["slice"] + 0.5) * base[2]
    paths = []
    for scale in reversed(scales):  # coarsest first
        resolution, chunk = scale["resolution"], scale["chunk_sizes"][0]
        low, size = scale["voxel_offset"], scale["size"]
        z = int(z_nm // resolution[2])
        z0 = z // chunk[2] * chunk[2]
        if not low[2] <= z < low[2] + size[2]:
            continue
        ranges = []
        for axis in (0, 1):
            start = low[axis] // chunk[axis] * chunk[axis]
            ranges.append([(a, min(a + chunk[axis], low[axis] + size[axis]))
                           for a in range(start, low[axis] + size[axis], chunk[axis])])
        z1 = min(z0 + chunk[2], low[2] + size[2])
        for x0, x1 in ranges[0]:
            for y0, y1 in ranges[1]:
                paths.append(f"{scale['key']}/{x0}-{x1}_{y0}-{y1}_{z0}-{z1}")
        if max(resolution[0], resolution[1]) <= pixel_nm * 1.1 or resolution == base:
            break  # this scale's voxels fit the view's pixels: no finer one is loaded
    return paths


def image_source(state: dict[str, Any]) -> str:
    layer = next(layer for layer in state["layers"] if layer["type"] == "image")
    source = layer["source"] if isinstance(layer["source"], str) else layer["source"]["url"]
    return source.removeprefix("precomputed://")


def random_points(rng: random.Random, task: dict[str, Any]) -> list[dict[str, Any]]:
    lower, upper = task["lower"], task["upper"]
    return [{"type": "point", "label": rng.choice(LABELS),
             "point": [round(rng.uniform(lower[0], upper[0]), 2), round(rng.uniform(lower[1], upper[1]), 2),
                       task["slice"] + 0.5]} for _ in range(rng.randint(5, 20))]


# --------------------------------------------------------------------------- the clients (their own processes)


@dataclass
class ClientSpec:
    port: int
    project: str
    first: int  # the volunteers' numbers, [first, first + count)
    count: int
    think: tuple[float, float]
    start_at: float  # time.time() when the first volunteers arrive
    warmup: float
    duration: float
    seed: int


@dataclass
class ClientResult:
    next_s: list[float] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    chunk_s: list[float] = field(default_factory=list)  # info and chunks
    submissions: int = 0  # 201s of requests started in the window
    chunk_requests: int = 0  # likewise
    acknowledged: list[int] = field(default_factory=list)  # every 201's submission id, whenever
    rate_limited: int = 0
    conflicts: int = 0
    nothing_left: int = 0
    errors: list[str] = field(default_factory=list)
    loop_lag_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0


def run_clients(spec: ClientSpec) -> ClientResult:
    result = ClientResult()
    started = time.process_time()
    asyncio.run(_clients(spec, result))
    result.cpu_s = time.process_time() - started
    return result


async def _clients(spec: ClientSpec, result: ClientResult) -> None:
    loop = asyncio.get_running_loop()
    offset = time.time() - loop.time()
    begin = spec.start_at - offset  # the loop's clock
    window = (begin + spec.warmup, begin + spec.warmup + spec.duration)

    async def lag() -> None:
        while loop.time() < window[1]:
            before = loop.time()
            await asyncio.sleep(0.1)
            if loop.time() >= window[0]:
                result.loop_lag_s.append(loop.time() - before - 0.1)

    await asyncio.sleep(max(0.0, begin - loop.time()))
    await asyncio.gather(lag(), *(volunteer(spec, spec.first + i, window, result) for i in range(spec.count)))


async def volunteer(spec: ClientSpec, number: int, window: tuple[float, float], result: ClientResult) -> None:
    import aiohttp
    from yarl import URL

    loop = asyncio.get_running_loop()
    rng = random.Random(spec.seed * 100_003 + number)
    base = URL(f"http://127.0.0.1:{spec.port}")
    project = f"/api/datasets/{DATASET}/projects/{spec.project}"
    await asyncio.sleep(rng.uniform(0, spec.warmup * 0.8))  # volunteers arrive over the warm-up

    def counted(started: float) -> bool:
        return window[0] <= started < window[1]

    async def call(http: Any, method: str, path: str, samples: list[float] | None,
                   **kwargs: Any) -> tuple[int, bytes, Any]:
        started = loop.time()
        async with http.request(method, path, **kwargs) as answer:
            body = await answer.read()
        if samples is not None and counted(started):
            samples.append(loop.time() - started)
        return answer.status, body, answer.headers

    jar = aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1 too
    connector = aiohttp.TCPConnector(limit=6)  # a browser's connections to one host
    timeout = aiohttp.ClientTimeout(total=300)
    try:
        async with aiohttp.ClientSession(base, cookie_jar=jar, connector=connector, timeout=timeout) as http:
            status, _, _ = await call(http, "GET", f"/datasets/{DATASET}", None)
            if status != 200:
                raise BenchError(f"dataset page: {status}")
            xsrf = jar.filter_cookies(base)["_xsrf"].value
            headers = {"X-XSRFToken": xsrf}
            while loop.time() < window[1]:
                started = loop.time()
                status, body, _ = await call(http, "POST", f"{project}/next", result.next_s, headers=headers)
                if status != 200:
                    raise BenchError(f"next: {status} {body[:200]!r}")
                offer = json.loads(body)
                task, state = offer["task"], offer["state"]
                if task is None:
                    result.nothing_left += counted(started)
                    await asyncio.sleep(rng.uniform(*spec.think) or 1.0)
                    continue
                source = image_source(state)
                started = loop.time()
                status, body, _ = await call(http, "GET", f"{source}/info", result.chunk_s)
                if status != 200:
                    raise BenchError(f"region info: {status} {body[:200]!r}")
                result.chunk_requests += counted(started)
                paths = chunk_paths(json.loads(body), state, task)
                started = loop.time()
                answers = await asyncio.gather(*(call(http, "GET", f"{source}/{p}", result.chunk_s) for p in paths))
                bad = [a[0] for a in answers if a[0] != 200]
                if bad:
                    raise BenchError(f"chunks: {bad}")
                result.chunk_requests += len(paths) * counted(started)
                await asyncio.sleep(rng.uniform(*spec.think))
                marks = random_points(rng, task)
                while True:
                    started = loop.time()
                    status, body, answer_headers = await call(
                        http, "POST", f"{project}/tasks/{task['task']}/submission", result.submit_s,
                        headers=headers, json={"marks": marks})
                    if status != 429:
                        break
                    result.rate_limited += 1
                    await asyncio.sleep(float(answer_headers.get("Retry-After", "1")))
                if status == 201:
                    result.acknowledged.append(json.loads(body)["submission"])
                    result.submissions += counted(started)
                elif status == 409:  # the task retired or was given to someone else meanwhile
                    result.conflicts += 1
                else:
                    raise BenchError(f"submission: {status} {body[:200]!r}")
    except Exception as error:  # counted; the run goes on without this volunteer
        result.errors.append(f"volunteer {number}: {type(error).__name__}: {error}"[:400])


# --------------------------------------------------------------------------- server, database, checks


def lamella_cli(*args: str) -> str:
    done = subprocess.run([str(REPO / ".venv" / "bin" / "lamella"), *args], capture_output=True, text=True,
                          cwd=REPO)
    if done.returncode != 0:
        raise BenchError(f"lamella {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def ensure_demo(demo_dir: Path) -> Path:
    """The demo's EM volume (made once: about 90 s), registered in each run's database without copying."""
    store = demo_dir / "images" / DATASET / "em.ome.zarr"
    if not (store / "zarr.json").exists() and not (store / ".zattrs").exists():
        print(f"generating the demo in {demo_dir} (once; about 90 s)", flush=True)
        lamella_cli("demo", "--data-dir", str(demo_dir))
    return store


@contextlib.contextmanager
def database(backend: str, data_dir: Path) -> Iterator[tuple[list[str], str]]:
    """The CLI options naming a fresh database of ``backend``, and a URL to check it with."""
    if backend == "sqlite":
        yield [], str(data_dir / "lamella.sqlite")
        return
    import psycopg

    name = f"lamella_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield ["--database-url", url], url
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(backend: str, url: str, sql: str, values: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(url, timeout=60)) as db:
            return db.execute(sql.replace("%s", "?"), values).fetchall()
    import psycopg

    with psycopg.connect(url) as db:
        return db.execute(sql, values).fetchall()


def check(backend: str, url: str, project_id: int, acknowledged: Sequence[int]) -> tuple[int, int, int]:
    """(lost: acknowledged submissions not stored, over-assigned tasks, tasks whose handed_out disagrees with their
    open and submitted assignments)."""
    stored = {row[0] for row in query(backend, url, "SELECT id FROM crowd_submissions WHERE project_id = %s",
                                      [project_id])}
    lost = len(set(acknowledged) - stored)
    rows = query(backend, url, """
        SELECT t.id, t.handed_out, t.submissions,
               (SELECT count(*) FROM crowd_assignments a WHERE a.task_id = t.id AND a.status IN ('open', 'submitted')),
               (SELECT count(*) FROM crowd_submissions s WHERE s.task_id = t.id)
        FROM crowd_tasks t WHERE t.project_id = %s""", [project_id])
    over = sum(1 for _, handed_out, _, holding, stored_count in rows
               if max(handed_out, holding, stored_count) > REDUNDANCY)
    wrong = sum(1 for _, handed_out, submissions, holding, stored_count in rows
                if handed_out != holding or submissions != stored_count)
    return lost, over, wrong


def start_server(procs: Any, name: str, options: Sequence[str], env: dict[str, str],
                 profile_dir: Path | None) -> tuple[Any, int]:
    if profile_dir is None:
        argv = [str(REPO / ".venv" / "bin" / "lamella"), "serve"]
    else:  # every thread of the server under cProfile, written out when it stops
        argv = [str(REPO / ".venv" / "bin" / "python"), str(HERE / "volunteers.py"), "--profiled-server",
                str(profile_dir), "--", "serve"]
    process = procs.start(name, [*argv, "--port", "0", *options], env={**os.environ, **env}, cwd=REPO)
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


def admin_json(port: int, token: str, method: str, path: str, document: Any, expect: int) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request(method, path, body=json.dumps(document),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        answer = connection.getresponse()
        body = answer.read()
        if answer.status != expect:
            raise BenchError(f"{method} {path}: {answer.status} {body[:300]!r}")
        return json.loads(body)
    finally:
        connection.close()


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    backend: str
    volunteers: int
    mode: str  # "paced" (think time, per-volunteer limit on) or "stress" (no think time, no limits)
    processes: int
    duration_s: float
    next: Latency = field(default_factory=Latency)
    submit: Latency = field(default_factory=Latency)
    chunk: Latency = field(default_factory=Latency)
    submissions_per_s: float = 0.0
    chunk_requests_per_s: float = 0.0
    acknowledged: int = 0
    lost: int = -1
    over_assigned: int = -1
    counts_wrong: int = -1
    rate_limited: int = 0
    conflicts: int = 0
    nothing_left: int = 0
    errors: list[str] = field(default_factory=list)
    client_lag_p99_ms: float = float("nan")
    server_cpu_pct: float = float("nan")  # of one core
    server_cpu_ms_per_submission: float = float("nan")  # the server's CPU over the run / submissions acknowledged
    postgres_cpu_pct: float = float("nan")  # PostgreSQL's processes, of one core
    client_cpu_pct: float = float("nan")
    machine_busy_pct: float = float("nan")  # of all cores, during the run
    quiet_before_pct: float = float("nan")
    load_before: str = ""


def measure(args: argparse.Namespace, backend: str, base: list[str], check_url: str, token: str, procs: Any,
            volunteers: int, mode: str, index: int, tmp: Path) -> Run:
    stress = mode == "stress"
    duration = args.stress_duration if stress else args.duration
    env = {"LAMELLA_ADDRESS_SUBMISSIONS_PER_MINUTE": "0"}
    if stress:
        env["LAMELLA_VOLUNTEER_SUBMISSIONS_PER_MINUTE"] = "0"
    run = Run(backend, volunteers, mode, args.processes, duration)
    profile_dir = tmp / f"profile-{backend}-{mode}-{volunteers}" if args.profile else None
    name = f"lamella-{backend}-{mode}-{volunteers}"
    process, port = start_server(procs, name, [*base, "--processes", str(args.processes)], env, profile_dir)
    try:
        project = f"v{index}-{mode}-{volunteers}"
        made = admin_json(port, token, "POST", f"/api/datasets/{DATASET}/projects", {
            "name": project, "title": f"Benchmark {project}", "image": IMAGE,
            "workflow": {"tool": "point", "labels": LABELS, "task_shape": TASK_SHAPE, "redundancy": REDUNDANCY,
                         "instructions": "Click the centre of every mitochondrion, synapse and vesicle."}}, 201)
        admin_json(port, token, "POST", f"/api/datasets/{DATASET}/projects/{project}/tasks", {}, 201)
        run.quiet_before_pct = harness.wait_for_quiet(args.quiet_wait)
        run.load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        think = (0.0, 0.0) if stress else args.think
        per = -(-volunteers // args.client_processes)
        start_at = time.time() + 1.0 + 0.5 * args.client_processes  # the client processes start meanwhile
        specs = [ClientSpec(port, project, first, min(per, volunteers - first), think, start_at, args.warmup,
                            duration, args.seed + index) for first in range(0, volunteers, per)]
        cpu_before = sum(harness.tree_cpu([process.pid]).values())
        postgres_before = postgres_cpu()
        machine_before = harness.MachineCpu.read()
        started = time.monotonic()
        with ProcessPoolExecutor(len(specs)) as pool:
            parts = list(pool.map(run_clients, specs))
        elapsed = time.monotonic() - started
        server_cpu = sum(harness.tree_cpu([process.pid]).values()) - cpu_before
        postgres = postgres_cpu() - postgres_before
        machine_busy = (harness.MachineCpu.read() - machine_before).busy
        merged = ClientResult()
        for part in parts:
            for key in ("next_s", "submit_s", "chunk_s", "acknowledged", "errors", "loop_lag_s"):
                getattr(merged, key).extend(getattr(part, key))
            for key in ("submissions", "chunk_requests", "rate_limited", "conflicts", "nothing_left", "cpu_s"):
                setattr(merged, key, getattr(merged, key) + getattr(part, key))
        run.next, run.submit, run.chunk = (Latency.of(merged.next_s), Latency.of(merged.submit_s),
                                           Latency.of(merged.chunk_s))
        run.submissions_per_s = merged.submissions / duration
        run.chunk_requests_per_s = merged.chunk_requests / duration
        run.acknowledged = len(merged.acknowledged)
        run.rate_limited, run.conflicts, run.nothing_left = merged.rate_limited, merged.conflicts, merged.nothing_left
        run.errors = merged.errors[:20] + ([f"... {len(merged.errors) - 20} more"] if len(merged.errors) > 20 else [])
        run.client_lag_p99_ms = float(np.percentile(merged.loop_lag_s, 99) * 1000) if merged.loop_lag_s else 0.0
        run.server_cpu_pct = 100 * server_cpu / elapsed
        run.server_cpu_ms_per_submission = 1000 * server_cpu / max(1, len(merged.acknowledged))
        run.postgres_cpu_pct = 100 * postgres / elapsed
        run.client_cpu_pct = 100 * merged.cpu_s / elapsed
        run.machine_busy_pct = 100 * machine_busy / elapsed / (os.cpu_count() or 1)
    finally:
        procs.stop(process)
    if profile_dir is not None:
        print(profile_report(profile_dir), flush=True)
    run.lost, run.over_assigned, run.counts_wrong = check(backend, check_url, made["id"], merged.acknowledged)
    return run


def postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL process so far (the server's backends do the database's share)."""
    table = harness.process_table()
    total = 0.0
    for pid, (_, seconds) in table.items():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres":
                total += seconds
    return total


def run_backend(args: argparse.Namespace, backend: str, store: Path, tmp: Path) -> list[Run]:
    data_dir = tmp / backend
    data_dir.mkdir()
    procs = harness.Processes(tmp / "logs")
    runs: list[Run] = []
    try:
        with database(backend, data_dir) as (db, check_url):
            base = ["--data-dir", str(data_dir), *db]
            lamella_cli("add", str(store), "--dataset", DATASET, "--name", IMAGE, *base)
            lamella_cli("user", "add", "bench", "--role", "admin", *base)
            token = lamella_cli("token", "create", "bench", "--label", "benchmark", *base).strip().splitlines()[-1]
            plan = [(n, "paced") for n in args.volunteers] + [(n, "stress") for n in args.stress_volunteers]
            for index, (volunteers, mode) in enumerate(plan):
                run = measure(args, backend, base, check_url, token, procs, volunteers, mode, index, tmp)
                runs.append(run)
                print(f"  {backend} {mode} {volunteers}: next p50/p99 {run.next.p50_ms:.0f}/{run.next.p99_ms:.0f} "
                      f"ms, submit {run.submit.p50_ms:.0f}/{run.submit.p99_ms:.0f} ms, "
                      f"{run.submissions_per_s:.1f} submissions/s, {run.chunk_requests_per_s:.0f} chunks/s, "
                      f"lost {run.lost}, over-assigned {run.over_assigned}, errors {len(run.errors)}", flush=True)
    finally:
        procs.stop_all()
    return runs


# --------------------------------------------------------------------------- profiling a server process


def profiled_server(folder: Path, argv: list[str]) -> None:
    """``lamella <argv>`` with every thread of each server process under cProfile, written to ``folder`` when the
    process exits (the server stops on SIGTERM; the pool threads are joined before ``atexit`` runs)."""
    import atexit
    import cProfile
    import threading

    folder.mkdir(parents=True, exist_ok=True)
    profiles: list[cProfile.Profile] = []
    original_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)  # CPU time: waits (I/O, the GIL) are not counted
        profiles.append(profile)
        profile.runcall(original_run, self)

    threading.Thread.run = run  # type: ignore[method-assign]

    def start() -> None:  # this process's own profiles from now on (a forked worker drops its parent's)
        profiles.clear()
        main_thread = cProfile.Profile(time.thread_time)
        profiles.append(main_thread)
        main_thread.enable()

    def dump() -> None:
        if profiles:
            profiles[0].disable()
        for i, profile in enumerate(profiles):
            if profile.getstats():
                profile.dump_stats(folder / f"{os.getpid()}-{i}.prof")

    many = "--processes" in argv and argv[argv.index("--processes") + 1] != "1"
    if many:
        os.register_at_fork(after_in_child=start)
    else:
        start()
    atexit.register(dump)
    from viewer.cli import main

    sys.argv = ["lamella", *argv]
    main()


FOCUS = [("handlers/crowd.py", "post", "a volunteer's POST (next or submission), whole"),
         ("handlers/crowd.py", "get", "a region info or chunk GET, whole"),
         ("annotations/crowd.py", "next_task_and_progress", "next: hand-out (or the open task) and progress"),
         ("annotations/crowd.py", "submit", "submit: both transactions and the consensus"),
         ("annotations/crowd.py", "consensus_for_task", "consensus of a retiring task"),
         ("annotations/crowd.py", "_next", "a hand-out"),
         ("annotations/crowd.py", "_check_rate", "rate limit check"),
         ("viewer/handlers/base.py", "prepare", "every request: identity, access, rule"),
         ("sqlalchemy/engine/base.py", "_execute_context", "SQLAlchemy statement execution (all)"),
         ("psycopg/cursor.py", "execute", "psycopg execute (all)")]


def profile_report(folder: Path, lines: int = 25) -> str:
    """CPU seconds (thread time) by function, over every thread of every server process, with the hot path's own
    functions first."""
    import io
    import pstats

    files = sorted(str(p) for p in folder.glob("*.prof") if p.stat().st_size)
    if not files:
        return f"no profiles in {folder}"
    out = io.StringIO()
    stats = pstats.Stats(files[0], stream=out)
    for file in files[1:]:
        with contextlib.suppress(Exception):
            stats.add(file)
    table = stats.stats  # type: ignore[attr-defined]
    out.write(f"server CPU by function (cProfile, thread time; {len(files)} profiles)\n")
    for path, function, what in FOCUS:
        found = [(key, value) for key, value in table.items() if key[0].endswith(path) and key[2] == function]
        calls = sum(value[1] for _, value in found)
        cumulative = sum(value[3] for _, value in found)
        if calls:
            out.write(f"  {what:<52} {calls:>7} calls {cumulative:8.2f} s  {1000 * cumulative / calls:7.2f} ms each\n")
    stats.sort_stats("tottime").print_stats(lines)
    return out.getvalue()


# --------------------------------------------------------------------------- report


def report(runs: Sequence[Run], args: argparse.Namespace) -> list[str]:
    lines = ["", f"Citizen Science volunteers ({runs[0].processes if runs else '?'} server process(es); "
                 f"task {TASK_SHAPE[0]}x{TASK_SHAPE[1]}x{TASK_SHAPE[2]}, redundancy {REDUNDANCY}; think time "
                 f"{args.think[0]:g}-{args.think[1]:g} s for paced runs, none for stress runs)",
             "per-address rate limit OFF for every run (all simulated volunteers share 127.0.0.1); per-volunteer "
             "limit at its default (30/min) for paced runs, OFF for stress runs",
             "next = POST .../next (the task the previous submission already handed out, else a new hand-out); "
             "sub = POST .../submission (stored, counted, the task retired with its consensus at its redundancy, the "
             "next task handed out); chunk = the view's region info and chunks; ms/sub = server CPU per submission "
             "(all of that volunteer round's requests); PG CPU = every postgres process on the machine",
             f"{'backend':<11}{'mode':<8}{'vol':>5}{'next p50':>10}{'next p99':>10}{'sub p50':>9}{'sub p99':>9}"
             f"{'chunk p50':>11}{'chunk p99':>11}{'subs/s':>8}{'chunks/s':>10}{'lost':>6}{'over':>6}{'errors':>8}"
             f"{'server CPU':>12}{'ms/sub':>8}{'PG CPU':>8}{'client CPU':>12}{'lag p99':>9}"]
    for r in runs:
        pg = r.postgres_cpu_pct if r.backend == "postgresql" else float("nan")
        lines.append(
            f"{r.backend:<11}{r.mode:<8}{r.volunteers:>5}{r.next.p50_ms:>8.0f}ms{r.next.p99_ms:>8.0f}ms"
            f"{r.submit.p50_ms:>7.0f}ms{r.submit.p99_ms:>7.0f}ms{r.chunk.p50_ms:>9.1f}ms{r.chunk.p99_ms:>9.0f}ms"
            f"{r.submissions_per_s:>8.1f}{r.chunk_requests_per_s:>10.0f}{r.lost:>6}{r.over_assigned:>6}"
            f"{len(r.errors):>8}{r.server_cpu_pct:>11.0f}%{r.server_cpu_ms_per_submission:>8.0f}"
            f"{pg:>7.0f}%{r.client_cpu_pct:>11.0f}%{r.client_lag_p99_ms:>7.0f}ms")
    lines += ["", "against the target (p99 of next and of submit under 250 ms; ratio = p99 / 250 ms, <= 1 meets it)"]
    for r in runs:
        worst = max(r.next.p99_ms, r.submit.p99_ms)
        lines.append(machine_info.ratio_line(f"{r.backend} {r.mode} {r.volunteers} volunteers",
                                             worst / TARGET_P99_MS if worst == worst else None, 1.0, "lower"))
    notes = []
    for r in runs:
        if r.counts_wrong:
            notes.append(f"{r.backend} {r.mode} {r.volunteers}: {r.counts_wrong} tasks whose counts disagree "
                         "with their rows")
        if r.rate_limited or r.conflicts or r.nothing_left:
            notes.append(f"{r.backend} {r.mode} {r.volunteers}: {r.rate_limited} submissions rate-limited (429), "
                         f"{r.conflicts} refused (409), {r.nothing_left} told nothing was left")
        notes += [f"{r.backend} {r.mode} {r.volunteers}: {e}" for e in r.errors[:5]]
        notes.append(f"{r.backend} {r.mode} {r.volunteers}: machine {r.machine_busy_pct:.0f}% busy during the run; "
                     f"before it {r.quiet_before_pct:.0f}% (load {r.load_before})")
    return lines + ["", "notes:"] + [f"  {n}" for n in notes]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--volunteers", default="100,500", help="paced runs: volunteers at once")
    parser.add_argument("--stress-volunteers", default="100", help="stress runs (no think time); '' for none")
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds of each paced run")
    parser.add_argument("--stress-duration", type=float, default=30.0, help="measured seconds of each stress run")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring (volunteers arrive)")
    parser.add_argument("--think", default="1,5", help="seconds a volunteer looks at a task: min,max (uniform)")
    parser.add_argument("--processes", type=int, default=2, help="server processes")
    parser.add_argument("--client-processes", type=int, default=1, help="processes the volunteers run in")
    parser.add_argument("--demo-dir", type=Path, default=DEFAULT_DEMO, help="where the demo is made once")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 volunteers, 8 s, SQLite and PG")
    parser.add_argument("--profile", action="store_true", help="cProfile every server thread; print the top")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="seconds to wait for other load to stop before each run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    args.backends = args.backends.split(",")
    args.volunteers = [int(v) for v in args.volunteers.split(",") if v]
    args.stress_volunteers = [int(v) for v in args.stress_volunteers.split(",") if v]
    low, high = (float(v) for v in args.think.split(","))
    args.think = (low, high)
    if args.quick:
        args.volunteers, args.stress_volunteers = [20], [10]
        args.duration = args.stress_duration = 8.0
        args.warmup, args.quiet_wait = 2.0, min(args.quiet_wait, 5.0)
    if any(b not in ("sqlite", "postgresql") for b in args.backends):
        parser.error("backends are sqlite and postgresql")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--profiled-server"]:
        profiled_server(Path(argv[1]), argv[3:])
        return 0
    args = parse_args(argv)
    info = machine_info.machine()
    print(f"machine: {info['cpu_count']} CPUs ({info['cpus_usable']} usable, {info['cpu_model']}), "
          f"{info['memory_gib']} GiB, load {' '.join(info['loadavg_at_start'])}", flush=True)
    store = ensure_demo(args.demo_dir)
    tmp = Path(tempfile.mkdtemp(prefix="lamella-volunteers-bench-"))
    runs: list[Run] = []
    try:
        for backend in args.backends:
            print(f"{backend}: {args.volunteers} paced, {args.stress_volunteers} stress", flush=True)
            runs += run_backend(args, backend, store, tmp)
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    lines = report(runs, args)
    print("\n".join(lines))
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps({"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                                        "runs": [asdict(r) for r in runs], "report": lines}, indent=1))
    failed = any(r.lost or r.over_assigned or r.counts_wrong for r in runs)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
