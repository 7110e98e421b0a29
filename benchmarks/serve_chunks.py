#!/usr/bin/env python
"""Chunk-serving throughput: Lamella against Neuroglancer's Python server and nginx.

One run builds a 256³ uint8 demo volume twice (sharded OME-Zarr 0.5 as Lamella writes it,
and an unsharded Zarr v3 copy with one zstd file per 64³ chunk), registers both with a
fresh Lamella catalog and measures, with wrk at 1, 8 and 64 connections over all 64
level-0 chunks:

* Lamella precomputed JPEG chunks (encoded-chunk LRU warm; and, unless --quick, with the
  LRU disabled so every request reads and encodes);
* Neuroglancer's own Python server (``LocalVolume``) serving the same array as JPEG;
* Lamella's Zarr passthrough: unsharded chunk keys, and byte ranges of the shard file;
* nginx serving the same files from disk (sendfile, open_file_cache);
* nginx in front of Lamella started with ``--accel-redirect /_stored``: Lamella checks
  dataset, image and key on every request and nginx sends the file;
* the deployment of docs/deploy-nginx.md (the site docs/nginx/lamella.conf, as the test suite
  runs it): nginx serves the keys from disk after Lamella's access decision, which it keeps
  for a few seconds per dataset, image and credential; once for a public dataset and once for
  a private one read with an API token (``Authorization: Bearer``), beside plain nginx in the
  same nginx instance;
* the cost of access checks: precomputed JPEG from Lamella as it is (a public dataset read
  anonymously, and a private one read with an API token) beside the same code with its access
  layer switched off (benchmarks/no_access_checks.py: every request admitted as anonymous), and
  beside the last commit before accounts, access checks and the hostile-input hardening
  (``--access-baseline``, run from a git worktree of it), taking turns, ``--access-rounds`` times.

Lamella and nginx run with 1 and then 2 processes/workers. wrk runs on the same cores as
the servers, so the numbers are a lower bound for what a separate client would see.

Usage: .venv/bin/python benchmarks/serve_chunks.py [--duration S] [--quick] [--processes 1,2]
                                                   [--nginx-only] [--access-baseline REV] [--access-rounds N]
                                                   [--quiet-wait S] [--keep]
Results are printed and written to benchmarks/results/serve_chunks.json. Before each run
the script waits (up to --quiet-wait seconds) for load from other programs to stop, and it
reports per run how much CPU the server, wrk, interrupts and everything else took.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tensorstore as ts

from tiling.demo import make_demo_volume
from tiling.pyramid import PyramidOptions, data_window, multiscale_metadata, plan_pyramid, write_pyramid
from tiling.sources import ArraySource

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_paths.lua"
NGINX_TEMPLATE = HERE / "nginx-bench.conf.in"
SITE_TEMPLATE = HERE.parent / "docs" / "nginx" / "lamella.conf"
NEUROGLANCER_PEER = HERE / "neuroglancer_peer.py"
NO_ACCESS_CHECKS = HERE / "no_access_checks.py"
RESULTS_PATH = HERE / "results" / "serve_chunks.json"

SHAPE = (256, 256, 256)  # z, y, x
CHUNK = 64
GRID = SHAPE[0] // CHUNK  # chunks per axis at level 0
VOXEL_NM = (8.0, 8.0, 8.0)
DATASET = "bench"
PRIVATE_DATASET = "bench-private"  # the same two images again, readable only with the token below
ACCOUNT = "bench-admin"
CONCURRENCY = (1, 8, 64)
ACCEL_PREFIX = "/_stored"
TARGET_JPEG_RATIO = 5.0  # Lamella warm JPEG / Neuroglancer JPEG, at 8 connections
TARGET_PASSTHROUGH_RATIO = 0.25  # Lamella passthrough / nginx, at every concurrency
TARGET_DEPLOY_PUBLIC_RATIO = 0.8  # the nginx deployment, public dataset / nginx, at every concurrency
TARGET_DEPLOY_PRIVATE_RATIO = 0.25  # the nginx deployment, private dataset with a token / nginx
TARGET_ACCESS_RATIO = 0.9  # precomputed JPEG with access checks / the same code without them, every concurrency
# The last commit before accounts, private datasets, access checks and the hostile-input hardening: shown beside
# (what all of that costs together), not the "without" of the target (the code has changed in other ways since).
ACCESS_BASELINE = "a92efa7"
ACCESS_ROUNDS = 3  # turns of the access comparison at each concurrency; each server's median run is kept
REPO = HERE.parent


class BenchError(Exception):
    """A step failed; the message says which and why."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Request:
    """One request of a payload set and what a correct answer holds."""

    path: str
    byte_range: tuple[int, int] | None = None  # inclusive, as in a Range header
    expected: bytes | None = None  # exact body (stored bytes)
    region: tuple[slice, slice, slice] | None = None  # JPEG: the (z, y, x) box it shows

    @property
    def headers(self) -> dict[str, str]:
        if self.byte_range is None:
            return {}
        return {"Range": f"bytes={self.byte_range[0]}-{self.byte_range[1]}"}


@dataclass
class Bench:
    """Everything prepared once: folders, the volume and the request sets."""

    tmp: Path
    stores: Path
    data_dir: Path
    volume: np.ndarray
    volume_file: Path
    sharded: Path
    unsharded: Path
    shard_file: Path
    chunk_boxes: list[tuple[slice, slice, slice]]
    requests_dir: Path
    token_headers: Path  # "Authorization: Bearer …" of an admin, for the private dataset (wrk reads it)
    token: str


def chunk_boxes() -> list[tuple[slice, slice, slice]]:
    return [
        tuple(slice(i * CHUNK, (i + 1) * CHUNK) for i in index)  # type: ignore[misc]
        for index in np.ndindex(GRID, GRID, GRID)
    ]


def write_unsharded(volume: np.ndarray, destination: Path) -> None:
    """The same pyramid as write_pyramid, but Zarr v3 without sharding: one zstd file per 64³ chunk.

    This is the layout a plain static server can hand to a Zarr client chunk by chunk.
    """
    options = PyramidOptions(name="em-chunks")
    axes = ["z", "y", "x"]
    levels = plan_pyramid(volume.shape, VOXEL_NM, options.chunk_shape(volume.shape))
    destination.mkdir(parents=True)
    arrays = []
    for i, level in enumerate(levels):
        spec = {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(destination / str(i)) + "/"},
            "metadata": {
                "shape": list(level.shape),
                "data_type": volume.dtype.name,
                "chunk_grid": {
                    "name": "regular",
                    "configuration": {"chunk_shape": list(options.chunk_shape(level.shape))},
                },
                "chunk_key_encoding": {"name": "default"},
                "fill_value": 0,
                "codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "zstd", "configuration": {"level": options.zstd_level}},
                ],
                "dimension_names": axes,
            },
            "create": True,
        }
        arrays.append(ts.open(spec).result())
    arrays[0].write(volume).result()
    for i in range(1, len(levels)):
        arrays[i].write(ts.downsample(arrays[i - 1], list(levels[i].factors), "mean")).result()
    attributes = multiscale_metadata(levels, axes, options, data_window(arrays[-1]))
    group = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": "0.5", **attributes}}}
    (destination / "zarr.json").write_text(json.dumps(group, indent=2))


def shard_index(shard: Path) -> np.ndarray:
    """(offset, nbytes) of each inner chunk, shape (GRID, GRID, GRID, 2), from the index at the end.

    Layout per the Zarr v3 sharding codec as write_pyramid configures it: little-endian
    uint64 pairs in C order of the inner-chunk grid, then a 4-byte crc32c.
    """
    entries = GRID**3
    with shard.open("rb") as file:
        file.seek(-(entries * 16 + 4), os.SEEK_END)
        raw = file.read(entries * 16)
    return np.frombuffer(raw, dtype="<u8").reshape(GRID, GRID, GRID, 2)


def prepare(tmp: Path, lamella: Path) -> Bench:
    stores = tmp / "stores"
    stores.mkdir()
    data_dir = tmp / "data"
    print(f"building the {SHAPE[0]}³ demo volume and writing it twice under {stores} ...", flush=True)
    volume = make_demo_volume(SHAPE)
    if volume.shape != SHAPE or volume.dtype != np.uint8:
        raise BenchError(f"demo volume is {volume.shape} {volume.dtype}, expected {SHAPE} uint8")
    volume_file = tmp / "volume.npy"
    np.save(volume_file, volume)  # the Neuroglancer peer serves exactly these voxels
    sharded = stores / "em.ome.zarr"
    write_pyramid(ArraySource(volume), sharded, voxel_size=VOXEL_NM)
    unsharded = stores / "em-chunks.ome.zarr"
    write_unsharded(volume, unsharded)

    shard_files = sorted(p for p in (sharded / "0" / "c").rglob("*") if p.is_file())
    if len(shard_files) != 1:
        raise BenchError(f"expected level 0 to be one 256³ shard, found {len(shard_files)} shard files")
    chunk_files = sorted(p for p in (unsharded / "0" / "c").rglob("*") if p.is_file())
    if len(chunk_files) != GRID**3:
        raise BenchError(f"expected {GRID**3} chunk files at level 0 of {unsharded}, found {len(chunk_files)}")

    for location, name in ((sharded, "em"), (unsharded, "em-chunks")):
        run_checked([str(lamella), "add", str(location), "--dataset", DATASET, "--name", name,
                     "--data-dir", str(data_dir)], f"lamella add {name}")
        run_checked([str(lamella), "add", str(location), "--dataset", PRIVATE_DATASET, "--name", name, "--private",
                     "--data-dir", str(data_dir)], f"lamella add --private {name}")
    run_checked([str(lamella), "user", "add", ACCOUNT, "--role", "admin", "--data-dir", str(data_dir)],
                f"lamella user add {ACCOUNT}")
    token = run_output([str(lamella), "token", "create", ACCOUNT, "--label", "serve_chunks",
                        "--data-dir", str(data_dir)], "lamella token create").strip().splitlines()[-1]
    token_headers = tmp / "token-headers.txt"
    token_headers.write_text(f"Authorization: Bearer {token}\n")
    token_headers.chmod(0o600)
    requests_dir = tmp / "requests"
    requests_dir.mkdir()
    return Bench(tmp, stores, data_dir, volume, volume_file, sharded, unsharded, shard_files[0],
                 chunk_boxes(), requests_dir, token_headers, token)


def run_checked(argv: list[str], what: str) -> None:
    run_output(argv, what)


def run_output(argv: list[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def lamella_image_base(image: str, dataset: str = DATASET) -> str:
    return f"/api/datasets/{dataset}/images/{image}"


def jpeg_requests(bench: Bench, dataset: str = DATASET) -> list[Request]:
    """Lamella precomputed names are x0-x1_y0-y1_z0-z1 (voxel_offset is 0 here, checked later)."""
    base = lamella_image_base("em", dataset)
    return [
        Request(f"{base}/precomputed/0/{x.start}-{x.stop}_{y.start}-{y.stop}_{z.start}-{z.stop}", region=(z, y, x))
        for z, y, x in bench.chunk_boxes
    ]


def neuroglancer_requests(bench: Bench, volume_key: str) -> list[Request]:
    """Neuroglancer's LocalVolume takes start/end in array order (z, y, x) at scale 1,1,1."""
    return [
        Request(f"/neuroglancer/jpeg/{volume_key}/1,1,1/{z.start},{y.start},{x.start}/{z.stop},{y.stop},{x.stop}",
                region=(z, y, x))
        for z, y, x in bench.chunk_boxes
    ]


def chunk_key_requests(bench: Bench, prefix: str) -> list[Request]:
    """Level-0 keys of the unsharded copy, ``0/c/z/y/x``, under ``prefix``."""
    requests = []
    for index in np.ndindex(GRID, GRID, GRID):
        key = "0/c/" + "/".join(str(i) for i in index)
        requests.append(Request(f"{prefix}/{key}", expected=(bench.unsharded / key).read_bytes()))
    return requests


def shard_range_requests(bench: Bench, prefix: str) -> list[Request]:
    """One Range request per inner chunk of the level-0 shard, as a sharding-aware client reads."""
    key = bench.shard_file.relative_to(bench.sharded).as_posix()
    data = bench.shard_file.read_bytes()
    index = shard_index(bench.shard_file)
    requests = []
    for chunk in np.ndindex(GRID, GRID, GRID):
        offset, nbytes = (int(v) for v in index[chunk])
        if offset == 2**64 - 1:
            raise BenchError(f"inner chunk {chunk} of {bench.shard_file} is empty")
        requests.append(Request(f"{prefix}/{key}", byte_range=(offset, offset + nbytes - 1),
                                expected=data[offset : offset + nbytes]))
    # Check the index reading once: the first inner chunk decodes to the right voxels.
    first = requests[0].expected or b""
    decoded = np.frombuffer(imagecodecs.zstd_decode(first), dtype=np.uint8).reshape((CHUNK,) * 3)
    if not np.array_equal(decoded, bench.volume[bench.chunk_boxes[0]]):
        raise BenchError("shard index misread: inner chunk 0 does not hold the first 64³ block")
    return requests


def write_requests_file(bench: Bench, name: str, requests: Sequence[Request]) -> Path:
    path = bench.requests_dir / f"{name}.txt"
    lines = []
    for request in requests:
        range_value = request.headers.get("Range", "")
        lines.append(request.path + (f"\t{range_value}" if range_value else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Servers started by this script, each in its own process group so all its workers stop with it."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        # Output goes to a file: a pipe nobody reads would block a server that logs every request.
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env=env, cwd=cwd)
        self.running.append(process)
        return process

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.logs / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process in self.running:
            self.running.remove(process)
        group = process.pid  # start_new_session: the group id is the leader's pid
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
                process.wait()
        # Forked workers may outlive the leader by a moment; the group id cannot be reused while they live.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)

    def stop_all(self) -> None:
        for process in reversed(list(self.running)):
            self.stop(process)


def http_get(port: int, path: str, headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def wait_until(port: int, path: str, process: subprocess.Popen[bytes], procs: Processes, name: str,
               timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with {process.returncode}:\n{procs.log_tail(name)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(port, path, timeout=2)[0] == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"{name} did not answer GET {path} on port {port} within {timeout:.0f} s:\n{procs.log_tail(name)}")


def start_lamella(procs: Processes, lamella: Path, bench: Bench, name: str, processes: int,
                  extra: Sequence[str] = (), env: dict[str, str] | None = None,
                  baseline: Baseline | None = None, checks_off: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """``lamella serve`` on the bench's data (or, given ``baseline``, that commit's code on its own data; with
    ``checks_off``, the current code with its access layer switched off)."""
    if checks_off:
        argv = [sys.executable, str(NO_ACCESS_CHECKS), "serve", "--data-dir", str(bench.data_dir)]
    elif baseline is None:
        argv = [str(lamella), "serve", "--data-dir", str(bench.data_dir)]
    else:
        argv = [*baseline.lamella, "serve", "--data-dir", str(baseline.data_dir)]
        env = {**(env or {}), "PYTHONPATH": str(baseline.code)}
    argv += ["--host", "127.0.0.1", "--port", "0", "--processes", str(processes), *extra]
    process = procs.start(name, argv, env={**os.environ, **(env or {})}, cwd=baseline.code if baseline else None)
    # --port 0: the server prints the port it bound before forking.
    deadline = time.monotonic() + 60
    port = None
    while port is None and time.monotonic() < deadline:
        match = re.search(r"serving on http://127\.0\.0\.1:(\d+)/", procs.log_tail(name, 50))
        if match:
            port = int(match.group(1))
        elif process.poll() is not None:
            raise BenchError(f"{name} exited with {process.returncode}:\n{procs.log_tail(name)}")
        else:
            time.sleep(0.1)
    if port is None:
        raise BenchError(f"{name} never printed its address:\n{procs.log_tail(name)}")
    wait_until(port, "/api/datasets", process, procs, name)
    return process, port



def fill(template: str, values: dict[str, str]) -> str:
    """A template with every @NAME@ placeholder replaced (an unknown or missing one is an error)."""
    text = template
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise BenchError(f"placeholders without a value: {', '.join(left)}")
    return text


@dataclass(frozen=True)
class NginxPorts:
    static: int  # plain nginx: the stores from disk
    deploy: int  # docs/nginx/lamella.conf: from disk after Lamella's cached access decision
    front: int  # every key through Lamella (X-Accel-Redirect)


def start_nginx(procs: Processes, nginx: str, bench: Bench, workers: int,
                lamella_port: int) -> tuple[subprocess.Popen[bytes], NginxPorts]:
    ports: list[int] = []
    while len(ports) < 3:
        port = free_port()
        if port not in ports:
            ports.append(port)
    chosen = NginxPorts(*ports)
    (bench.tmp / "nginx-temp").mkdir(exist_ok=True)
    site = bench.tmp / f"lamella-site-{workers}.conf"
    site.write_text(fill(SITE_TEMPLATE.read_text(), {
        "LISTEN": f"127.0.0.1:{chosen.deploy}", "SERVER_NAME": "localhost", "LAMELLA": f"127.0.0.1:{lamella_port}",
        "CACHE_DIR": str(bench.tmp / f"nginx-access-cache-{workers}"), "ACCESS_LOG": "off",
    }))
    config = bench.tmp / f"nginx-{workers}.conf"
    config.write_text(fill(NGINX_TEMPLATE.read_text(), {
        "WORKERS": str(workers), "TMP": str(bench.tmp), "STORES": str(bench.stores), "SITE": str(site),
        "STATIC_PORT": str(chosen.static), "FRONT_PORT": str(chosen.front),
    }))
    name = f"nginx-{workers}"
    process = procs.start(name, [nginx, "-p", str(bench.tmp), "-e", str(bench.tmp / "nginx-error.log"),
                                 "-c", str(config), "-g", "daemon off;"])
    wait_until(chosen.static, "/em-chunks.ome.zarr/zarr.json", process, procs, name)
    return process, chosen


def start_neuroglancer(procs: Processes, bench: Bench) -> tuple[subprocess.Popen[bytes], int, str]:
    ready = bench.tmp / "neuroglancer-ready.json"
    process = procs.start("neuroglancer", [sys.executable, str(NEUROGLANCER_PEER), str(bench.volume_file), str(ready)])
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None:
            raise BenchError(
                f"the Neuroglancer peer exited with {process.returncode}:\n{procs.log_tail('neuroglancer')}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"the Neuroglancer peer did not start:\n{procs.log_tail('neuroglancer')}")
        time.sleep(0.1)
    info = json.loads(ready.read_text())
    match = re.match(r"http://127\.0\.0\.1:(\d+)", info["url"])
    if match is None:
        raise BenchError(f"the Neuroglancer peer is not on 127.0.0.1: {info['url']}")
    return process, int(match.group(1)), info["key"]


# --------------------------------------------------------------------------- CPU accounting

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far) for every process we can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = (Path("/proc") / entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return table


@dataclass(frozen=True)
class MachineCpu:
    """CPU seconds since boot, all cores, from /proc/stat."""

    processes: float  # user + nice + system: time charged to some process
    irq: float  # hard and soft interrupts, mostly loopback TCP here
    steal: float  # taken by the hypervisor for other guests

    @classmethod
    def read(cls) -> MachineCpu:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(v) / CLOCK_TICKS for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
        )
        return cls(user + nice + system, irq + softirq, steal)

    def __sub__(self, other: MachineCpu) -> MachineCpu:
        return MachineCpu(self.processes - other.processes, self.irq - other.irq, self.steal - other.steal)

    @property
    def busy(self) -> float:
        return self.processes + self.irq + self.steal


def wait_for_quiet(max_wait: float, threshold_pct: float = 15.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine is nearly idle; returns the last busy % seen.

    Called between runs, when the servers under test are idle: whatever is busy then is
    someone else's work, which would otherwise be counted against the servers.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = MachineCpu.read()
        time.sleep(0.5)
        busy_pct = 100 * (MachineCpu.read() - before).busy / 0.5
        if busy_pct < threshold_pct or time.monotonic() >= deadline:
            return busy_pct
        time.sleep(1.0)


def tree_cpu(roots: Sequence[int]) -> dict[int, float]:
    """CPU seconds of each live process in the trees under ``roots``."""
    table = process_table()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (parent, _) in table.items():
        children[parent].append(pid)
    found: dict[int, float] = {}
    stack = [pid for pid in roots if pid in table]
    while stack:
        pid = stack.pop()
        found[pid] = table[pid][1]
        stack.extend(children[pid])
    return found


# --------------------------------------------------------------------------- wrk

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNITS_B = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


@dataclass
class WrkStats:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mb_per_s: float
    errors: int  # non-2xx/3xx responses plus socket errors
    wrk_cpu_s: float
    wall_s: float


def parse_wrk(text: str) -> tuple[int, float, float, float, float, int]:
    def duration_ms(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
        if match is None:
            raise BenchError(f"no {label}% latency in wrk output:\n{text}")
        return float(match.group(1)) * _UNITS_S[match.group(2)] * 1e3

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    transfer = re.search(r"^Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    if rps is None or transfer is None or total is None:
        raise BenchError(f"cannot parse wrk output:\n{text}")
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non2xx:
        errors += int(non2xx.group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sockets:
        errors += sum(int(v) for v in sockets.groups())
    mb_per_s = float(transfer.group(1)) * _UNITS_B[transfer.group(2)] / 1e6
    return int(total.group(1)), float(rps.group(1)), duration_ms("50"), duration_ms("99"), mb_per_s, errors


def run_wrk(wrk: str, port: int, requests_file: Path, connections: int, duration: float,
            out_dir: Path, headers_file: Path | None = None) -> WrkStats:
    threads = 1 if connections == 1 else 2  # 2 cores: more wrk threads would only steal CPU
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "30s",
            "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}", "--", str(requests_file)]
    if headers_file is not None:
        argv.append(str(headers_file))
    out = out_dir / "wrk.out"
    started = time.monotonic()
    with out.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            # wait4 gives wrk's own CPU time: how much of the 2 cores the load generator took.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # interrupted: do not leave wrk running
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    text = out.read_text(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"wrk failed ({process.returncode}):\n{text}")
    total, rps, p50, p99, mb_per_s, errors = parse_wrk(text)
    return WrkStats(total, rps, p50, p99, mb_per_s, errors, usage.ru_utime + usage.ru_stime, wall)


# --------------------------------------------------------------------------- checks


def verify(port: int, requests: Sequence[Request], volume: np.ndarray, what: str,
           extra_headers: dict[str, str] | None = None) -> float:
    """Every request once, sequentially (also a first warming pass); returns the mean body size."""
    sizes = []
    for request in requests:
        status, headers, body = http_get(port, request.path, {**request.headers, **(extra_headers or {})})
        expected_status = 206 if request.byte_range is not None else 200
        if status != expected_status:
            raise BenchError(f"{what}: GET {request.path} {request.headers} answered {status}, "
                             f"expected {expected_status}: {body[:200]!r}")
        if request.expected is not None and body != request.expected:
            raise BenchError(f"{what}: GET {request.path} {request.headers} returned {len(body)} bytes "
                             f"that differ from the stored {len(request.expected)} bytes")
        if request.region is not None:
            if not headers.get("content-type", "").startswith("image/jpeg") or body[:2] != b"\xff\xd8":
                raise BenchError(f"{what}: GET {request.path} is not a JPEG ({headers.get('content-type')})")
            decoded = np.asarray(imagecodecs.jpeg8_decode(body), dtype=np.float32)
            truth = volume[request.region].reshape(-1, CHUNK).astype(np.float32)
            if decoded.shape != truth.shape:
                raise BenchError(f"{what}: JPEG of {request.path} is {decoded.shape}, expected {truth.shape}")
            # Correlation, not equality: JPEG is lossy, but the wrong box would correlate near 0.
            correlation = float(np.corrcoef(decoded.ravel(), truth.ravel())[0, 1])
            if correlation < 0.8:  # q75 on this noisy volume: ~0.89; one voxel off in z: ~0.6
                raise BenchError(f"{what}: JPEG of {request.path} does not show its box (r={correlation:.2f})")
        sizes.append(len(body))
    return float(np.mean(sizes))


# --------------------------------------------------------------------------- measuring


@dataclass
class Result:
    server: str  # lamella, lamella-nocache, neuroglancer, nginx, nginx+lamella-accel, deploy-public, deploy-private
    payload: str  # jpeg, zarr-chunk, shard-range
    processes: int  # Lamella processes / nginx workers (both, for the accel front); Neuroglancer: 1
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mb_per_s: float
    mean_body_bytes: float
    errors: int
    requests: int
    server_cpu_pct: float  # of one core, all server processes together (max 100 x cores)
    wrk_cpu_pct: float
    other_cpu_pct: float  # other processes on the machine, plus hypervisor steal (should be near 0)
    irq_cpu_pct: float  # interrupts, mostly the loopback TCP traffic of the run itself
    server_cpu_by_process_pct: list[float] = field(default_factory=list)
    rounds_requests_per_s: list[float] = field(default_factory=list)  # every run when measured in rounds
    rounds_cpu_us_per_request: list[float] = field(default_factory=list)  # the server's CPU per answer, each run

    @property
    def cpu_us_per_request(self) -> float:
        """The server's CPU time per answer (µs): the median of the rounds when measured in rounds."""
        if self.rounds_cpu_us_per_request:
            return statistics.median(self.rounds_cpu_us_per_request)
        return 1e4 * self.server_cpu_pct / self.requests_per_s if self.requests_per_s else 0.0


@dataclass(frozen=True)
class Measured:
    """One server and payload to measure: where it listens, what wrk asks, whose CPU counts."""

    server: str
    payload: str
    processes: int
    port: int
    requests_file: Path
    mean_body: float
    server_roots: Sequence[int]
    headers_file: Path | None = None


@dataclass
class Runner:
    wrk: str
    duration: float
    warmup: float
    concurrency: Sequence[int]
    out_dir: Path
    quiet_wait: float
    results: list[Result] = field(default_factory=list)

    def measure(self, server: str, payload: str, processes: int, port: int, requests_file: Path,
                mean_body: float, server_roots: Sequence[int], headers_file: Path | None = None) -> None:
        self.side_by_side([Measured(server, payload, processes, port, requests_file, mean_body, server_roots,
                                    headers_file)])

    def side_by_side(self, servers: Sequence[Measured], rounds: int = 1) -> None:
        """Each server at each concurrency, the servers taking turns at each concurrency: servers
        compared with each other are measured minutes apart at most, not one after the other.
        With ``rounds`` > 1 they take ``rounds`` turns (in alternating order) and each server's
        median run (by requests/s) is kept, with every run's figure beside it."""
        # A short untimed run at 8 connections: reaches every process (the LRU is per process)
        # and fills caches the same way for every server.
        for m in servers:
            run_wrk(self.wrk, m.port, m.requests_file, 8, self.warmup, self.out_dir, m.headers_file)
        for connections in self.concurrency:
            runs: dict[int, list[Result]] = defaultdict(list)
            for turn in range(rounds):
                for index in (range(len(servers)) if turn % 2 == 0 else reversed(range(len(servers)))):
                    runs[index].append(self._run(servers[index], connections, quiet=rounds > 1))
            if rounds > 1:
                for index, m in enumerate(servers):
                    ordered = sorted(runs[index], key=lambda r: r.requests_per_s)
                    median = ordered[(len(ordered) - 1) // 2]
                    median.rounds_requests_per_s = [round(r.requests_per_s) for r in runs[index]]
                    median.rounds_cpu_us_per_request = [round(r.cpu_us_per_request, 1) for r in runs[index]]
                    self.results.append(median)
                    print(f"  {label(median):<36} {m.payload:<12} c={connections:<3} median "
                          f"{median.requests_per_s:>7.0f} req/s of {median.rounds_requests_per_s}; server CPU "
                          f"{median.cpu_us_per_request:.0f} µs per answer", flush=True)

    def _run(self, m: Measured, connections: int, quiet: bool = False) -> Result:
        server, payload, processes, port, requests_file = m.server, m.payload, m.processes, m.port, m.requests_file
        mean_body, server_roots, headers_file = m.mean_body, m.server_roots, m.headers_file
        idle_busy = wait_for_quiet(self.quiet_wait) if self.quiet_wait > 0 else 0.0
        if idle_busy >= 15:
            print(f"  (machine still {idle_busy:.0f}% busy with other work after {self.quiet_wait:g} s; "
                  "measuring anyway)", flush=True)
        before, machine_before = tree_cpu(server_roots), MachineCpu.read()
        stats = run_wrk(self.wrk, port, requests_file, connections, self.duration, self.out_dir, headers_file)
        after, machine = tree_cpu(server_roots), MachineCpu.read() - machine_before
        by_process = [100 * (after[pid] - before.get(pid, 0.0)) / stats.wall_s for pid in sorted(after)]
        wrk_pct = 100 * stats.wrk_cpu_s / stats.wall_s
        other = max(0.0, 100 * (machine.processes + machine.steal) / stats.wall_s - sum(by_process) - wrk_pct)
        irq = 100 * machine.irq / stats.wall_s
        result = Result(
            server=server, payload=payload, processes=processes, concurrency=connections,
            requests_per_s=stats.requests_per_s, p50_ms=stats.p50_ms, p99_ms=stats.p99_ms,
            mb_per_s=stats.mb_per_s, mean_body_bytes=mean_body, errors=stats.errors, requests=stats.requests,
            server_cpu_pct=sum(by_process), wrk_cpu_pct=wrk_pct, other_cpu_pct=other, irq_cpu_pct=irq,
            server_cpu_by_process_pct=[round(v, 1) for v in by_process if v >= 0.5],
        )
        if not quiet:
            self.results.append(result)
        flag = f"  ERRORS: {stats.errors}" if stats.errors else ""
        print(f"  {label(result):<36} {payload:<12} c={connections:<3} {stats.requests_per_s:>9.0f} req/s  "
              f"p50 {stats.p50_ms:7.2f} ms  p99 {stats.p99_ms:7.2f} ms  "
              f"CPU% server {result.server_cpu_pct:3.0f} wrk {wrk_pct:3.0f} irq {irq:3.0f} "
              f"other {other:3.0f}{flag}",
              flush=True)
        return result


def label(result: Result) -> str:
    if result.server == "neuroglancer":
        return "neuroglancer (1 proc)"
    if result.server == "nginx":
        return f"nginx ({result.processes} worker{'s' if result.processes > 1 else ''})"
    if result.server == "nginx+lamella-accel":
        return f"nginx+lamella accel ({result.processes}+{result.processes})"
    if result.server in ("deploy-public", "deploy-private"):
        return f"deployment, {result.server[7:]} ({result.processes}+{result.processes})"
    if result.server == "lamella-before-access":
        return f"lamella {ACCESS_BASELINE}, before ({result.processes} proc)"
    if result.server == "lamella-checks-off":
        return f"lamella, access checks off ({result.processes} proc)"
    if result.server == "lamella-checks-off-token":
        return f"lamella, checks off, +token ({result.processes} proc)"
    if result.server == "lamella-private-token":
        return f"lamella private+token ({result.processes} proc)"
    return f"{result.server} ({result.processes} proc)"


def check_accel(front_port: int, lamella_port: int, bench: Bench, chunk_requests: Sequence[Request]) -> dict[str, str]:
    """The accel front returns the stored bytes and the internal location is unreachable directly.

    Also records what a client sees for metadata and for a key naming a folder, which Lamella
    alone answers with 404 but hands to nginx in accel mode.
    """
    sample = chunk_requests[0]
    status, headers, body = http_get(front_port, sample.path)
    if status != 200 or body != sample.expected:
        raise BenchError(f"accel front: GET {sample.path} gave {status} with {len(body)} bytes, not the stored "
                         f"{len(sample.expected or b'')} bytes (is Lamella started with --accel-redirect?)")
    _, lamella_headers, lamella_body = http_get(lamella_port, sample.path)
    if lamella_body or "x-accel-redirect" not in lamella_headers:
        raise BenchError("accel front: Lamella itself answered with a body, not an X-Accel-Redirect")
    direct = ACCEL_PREFIX + str(bench.unsharded / "zarr.json")
    status, _, _ = http_get(front_port, direct)
    if status != 404:
        raise BenchError(f"accel front: the internal location answered a direct GET {direct} with {status}")
    base = lamella_image_base("em-chunks") + "/zarr"
    status, _, _ = http_get(front_port, base + "/0/c/9/9/9")
    if status != 404:
        raise BenchError(f"accel front: a missing key answered {status}, expected 404")
    notes = {
        "accel chunk answer headers": ", ".join(
            f"{k}: {v}" for k, v in headers.items()
            if k in ("content-type", "cache-control", "etag", "accept-ranges", "access-control-allow-origin")
        ),
        "accel zarr.json content-type": http_get(front_port, base + "/zarr.json")[1].get("content-type", "-"),
    }
    folder_status, folder_headers, _ = http_get(front_port, base + "/0")
    notes["accel folder key (zarr/0)"] = f"{folder_status} {folder_headers.get('location', '')}".strip()
    return notes


RequestSet = tuple[list[Request], Path]  # the requests and the file wrk reads them from


@dataclass
class Baseline:
    """A commit's code in a git worktree, with a data directory of its own (older schemas differ)."""

    rev: str
    code: Path
    data_dir: Path
    lamella: list[str]


def prepare_baseline(bench: Bench, rev: str) -> Baseline:
    """A worktree of ``rev`` with the bench's sharded volume registered by that commit's own CLI."""
    code = bench.tmp / f"baseline-{rev}"
    run_checked(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(code), rev],
                f"git worktree add {rev}")
    baseline = Baseline(rev, code, bench.tmp / "baseline-data", [sys.executable, "-m", "viewer.cli"])
    result = subprocess.run([*baseline.lamella, "add", str(bench.sharded), "--dataset", DATASET, "--name", "em",
                             "--data-dir", str(baseline.data_dir)], cwd=code, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(code)}, check=False)
    if result.returncode != 0:
        raise BenchError(f"lamella add ({rev}) failed: {result.stderr.strip()[-500:]}")
    return baseline


def remove_baseline(baseline: Baseline | None) -> None:
    if baseline is not None:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline.code)],
                       capture_output=True, check=False)


def measure_lamella(runner: Runner, procs: Processes, lamella: Path, bench: Bench, processes: int,
                    with_extras: bool, jpeg_set: RequestSet, chunk_set: RequestSet, range_set: RequestSet,
                    private_jpeg_set: RequestSet, baseline: Baseline | None, access_rounds: int) -> None:
    """Lamella alone: precomputed JPEG (LRU warm, and off unless --quick) and the Zarr passthrough.

    JPEG is measured taking turns with the same code with its access layer switched off, with the
    private dataset read with a token, and (given a baseline) with the baseline commit's server:
    what access checks cost.
    """
    (jpeg, jpeg_file), (lamella_chunks, chunks_file), (lamella_ranges, ranges_file) = jpeg_set, chunk_set, range_set
    private_jpeg, private_jpeg_file = private_jpeg_set
    process, port = start_lamella(procs, lamella, bench, f"lamella-{processes}", processes)
    _, _, info = http_get(port, lamella_image_base("em") + "/precomputed/info")
    scale = json.loads(info)["scales"][0]
    if scale["voxel_offset"] != [0, 0, 0] or scale["chunk_sizes"] != [[CHUNK] * 3]:
        raise BenchError(f"unexpected level 0 of the precomputed info: {scale}")
    size = verify(port, jpeg, bench.volume, "lamella jpeg")
    token = {"Authorization": f"Bearer {bench.token}"}
    off, off_port = start_lamella(procs, lamella, bench, f"lamella-checks-off-{processes}", processes,
                                  checks_off=True)
    private_size = verify(port, private_jpeg, bench.volume, "lamella private jpeg", token)
    compared = [  # the same requests with checks on and off: the private ones with the token's header too
        Measured("lamella-checks-off", "jpeg", processes, off_port, jpeg_file,
                 verify(off_port, jpeg, bench.volume, "lamella jpeg, access checks off"), [off.pid]),
        Measured("lamella", "jpeg", processes, port, jpeg_file, size, [process.pid]),
        Measured("lamella-checks-off-token", "jpeg", processes, off_port, private_jpeg_file, private_size,
                 [off.pid], bench.token_headers),
        Measured("lamella-private-token", "jpeg", processes, port, private_jpeg_file, private_size, [process.pid],
                 bench.token_headers),
    ]
    old = None
    if baseline is not None:
        old, old_port = start_lamella(procs, lamella, bench, f"lamella-{baseline.rev}-{processes}", processes,
                                      baseline=baseline)
        compared.append(Measured("lamella-before-access", "jpeg", processes, old_port, jpeg_file,
                                 verify(old_port, jpeg, bench.volume, f"lamella {baseline.rev} jpeg"), [old.pid]))
    runner.side_by_side(compared, rounds=access_rounds)
    procs.stop(off)
    if old is not None:
        procs.stop(old)
    size = verify(port, lamella_chunks, bench.volume, "lamella zarr chunks")
    runner.measure("lamella", "zarr-chunk", processes, port, chunks_file, size, [process.pid])
    if with_extras:
        size = verify(port, lamella_ranges, bench.volume, "lamella shard ranges")
        runner.measure("lamella", "shard-range", processes, port, ranges_file, size, [process.pid])
    procs.stop(process)

    if with_extras:
        # LAMELLA_CHUNK_CACHE_MB=0: every request reads (tensorstore cache) and encodes, like Neuroglancer.
        name = f"lamella-nocache-{processes}"
        process, port = start_lamella(procs, lamella, bench, name, processes, env={"LAMELLA_CHUNK_CACHE_MB": "0"})
        size = verify(port, jpeg, bench.volume, "lamella jpeg, no LRU")
        runner.measure("lamella-nocache", "jpeg", processes, port, jpeg_file, size, [process.pid])
        procs.stop(process)


def check_deployment(port: int, public: Sequence[Request], private: Sequence[Request],
                     token: dict[str, str]) -> dict[str, str]:
    """The deployment answers as docs/deploy-nginx.md says, before it is measured.

    Public keys: the stored bytes, public caching and any-origin CORS. Private keys: 404 JSON
    without a credential; with the token the stored bytes, private caching, Vary, no CORS.
    """
    sample = public[0]
    status, headers, body = http_get(port, sample.path)
    if status != 200 or body != sample.expected:
        raise BenchError(f"deployment: GET {sample.path} gave {status} with {len(body)} bytes, not the stored bytes")
    if not headers.get("cache-control", "").startswith("public") or headers.get("access-control-allow-origin") != "*":
        raise BenchError(f"deployment: public key without public caching and CORS: {headers}")
    sample = private[0]
    status, _, body = http_get(port, sample.path)
    if status != 404 or json.loads(body).get("code") != "dataset_not_found":
        raise BenchError(f"deployment: private key without a token gave {status} {body[:200]!r}, not 404 JSON")
    status, headers, body = http_get(port, sample.path, token)
    if status != 200 or body != sample.expected:
        raise BenchError(f"deployment: private key with the token gave {status} with {len(body)} bytes")
    if (not headers.get("cache-control", "").startswith("private") or "access-control-allow-origin" in headers
            or "Authorization" not in headers.get("vary", "")):
        raise BenchError(f"deployment: private key served with the wrong caching or CORS headers: {headers}")
    return {"deployment private key headers": ", ".join(
        f"{k}: {v}" for k, v in headers.items() if k in ("content-type", "cache-control", "vary", "etag")
    )}


def run_all(args: argparse.Namespace, wrk: str, nginx: str, lamella: Path, tmp: Path,
            procs: Processes) -> tuple[list[Result], dict[str, Any]]:
    bench = prepare(tmp, lamella)
    baseline = None
    if args.access_baseline and not args.nginx_only:
        baseline = prepare_baseline(bench, args.access_baseline)
    try:
        return _run_all(args, wrk, nginx, lamella, procs, bench, baseline)
    finally:
        procs.stop_all()
        remove_baseline(baseline)


def _run_all(args: argparse.Namespace, wrk: str, nginx: str, lamella: Path, procs: Processes, bench: Bench,
             baseline: Baseline | None) -> tuple[list[Result], dict[str, Any]]:
    runner = Runner(wrk, args.duration, args.warmup, CONCURRENCY, bench.tmp, args.quiet_wait)
    notes: dict[str, Any] = {}
    if baseline is not None:
        notes["before access checks"] = (f"commit {baseline.rev} (the last without accounts, access checks and the "
                                         "hostile-input hardening)")
    notes["access checks off"] = ("the current code started through benchmarks/no_access_checks.py: every request "
                                  "admitted as anonymous, nothing else changed")

    jpeg = jpeg_requests(bench)
    jpeg_file = write_requests_file(bench, "lamella-jpeg", jpeg)
    private_jpeg = jpeg_requests(bench, PRIVATE_DATASET)
    private_jpeg_file = write_requests_file(bench, "lamella-private-jpeg", private_jpeg)
    lamella_chunks = chunk_key_requests(bench, lamella_image_base("em-chunks") + "/zarr")
    lamella_chunks_file = write_requests_file(bench, "lamella-zarr-chunks", lamella_chunks)
    lamella_ranges = shard_range_requests(bench, lamella_image_base("em") + "/zarr")
    lamella_ranges_file = write_requests_file(bench, "lamella-zarr-ranges", lamella_ranges)
    nginx_chunks = chunk_key_requests(bench, "/em-chunks.ome.zarr")
    nginx_chunks_file = write_requests_file(bench, "nginx-chunks", nginx_chunks)
    nginx_ranges = shard_range_requests(bench, "/em.ome.zarr")
    nginx_ranges_file = write_requests_file(bench, "nginx-ranges", nginx_ranges)
    private_chunks = chunk_key_requests(bench, lamella_image_base("em-chunks", PRIVATE_DATASET) + "/zarr")
    private_chunks_file = write_requests_file(bench, "private-zarr-chunks", private_chunks)
    private_ranges = shard_range_requests(bench, lamella_image_base("em", PRIVATE_DATASET) + "/zarr")
    private_ranges_file = write_requests_file(bench, "private-zarr-ranges", private_ranges)
    token = {"Authorization": f"Bearer {bench.token}"}
    with_extras = not args.quick

    if not args.nginx_only:
        print("\nNeuroglancer's Python server (LocalVolume, JPEG, one process):", flush=True)
        process, port, key = start_neuroglancer(procs, bench)
        ng = neuroglancer_requests(bench, key)
        ng_file = write_requests_file(bench, "neuroglancer-jpeg", ng)
        size = verify(port, ng, bench.volume, "neuroglancer jpeg")
        runner.measure("neuroglancer", "jpeg", 1, port, ng_file, size, [process.pid])
        procs.stop(process)

    for processes in args.processes:
        if not args.nginx_only:
            print(f"\nLamella, {processes} process(es):", flush=True)
            measure_lamella(runner, procs, lamella, bench, processes, with_extras, (jpeg, jpeg_file),
                            (lamella_chunks, lamella_chunks_file), (lamella_ranges, lamella_ranges_file),
                            (private_jpeg, private_jpeg_file), baseline, args.access_rounds)

        print(f"\nnginx, {processes} worker(s); the deployment of docs/deploy-nginx.md; nginx in front of "
              "Lamella --accel-redirect:", flush=True)
        accel, accel_port = start_lamella(procs, lamella, bench, f"lamella-accel-{processes}", processes,
                                          extra=["--accel-redirect", ACCEL_PREFIX])
        server, ports = start_nginx(procs, nginx, bench, processes, accel_port)
        static_port, front_port, deploy_port = ports.static, ports.front, ports.deploy
        roots = [server.pid, accel.pid]
        notes.update(check_deployment(deploy_port, lamella_chunks, private_chunks, token))
        # Plain nginx and the deployment take turns at each concurrency, so their ratios compare
        # runs made moments apart (this machine's speed drifts with other load).
        runner.side_by_side([
            Measured("nginx", "zarr-chunk", processes, static_port, nginx_chunks_file,
                     verify(static_port, nginx_chunks, bench.volume, "nginx chunks"), [server.pid]),
            Measured("deploy-public", "zarr-chunk", processes, deploy_port, lamella_chunks_file,
                     verify(deploy_port, lamella_chunks, bench.volume, "deployment, public chunks"), roots),
            Measured("deploy-private", "zarr-chunk", processes, deploy_port, private_chunks_file,
                     verify(deploy_port, private_chunks, bench.volume, "deployment, private chunks", token), roots,
                     bench.token_headers),
        ])
        if with_extras:
            runner.side_by_side([
                Measured("nginx", "shard-range", processes, static_port, nginx_ranges_file,
                         verify(static_port, nginx_ranges, bench.volume, "nginx shard ranges"), [server.pid]),
                Measured("deploy-public", "shard-range", processes, deploy_port, lamella_ranges_file,
                         verify(deploy_port, lamella_ranges, bench.volume, "deployment, public shard ranges"), roots),
                Measured("deploy-private", "shard-range", processes, deploy_port, private_ranges_file,
                         verify(deploy_port, private_ranges, bench.volume, "deployment, private shard ranges", token),
                         roots, bench.token_headers),
            ])
        notes.update(check_accel(front_port, accel_port, bench, lamella_chunks))
        size = verify(front_port, lamella_chunks, bench.volume, "accel chunks")
        runner.measure("nginx+lamella-accel", "zarr-chunk", processes, front_port, lamella_chunks_file, size,
                       [server.pid, accel.pid])
        if with_extras:
            size = verify(front_port, lamella_ranges, bench.volume, "accel shard ranges")
            runner.measure("nginx+lamella-accel", "shard-range", processes, front_port, lamella_ranges_file, size,
                           [server.pid, accel.pid])
        procs.stop(server)
        procs.stop(accel)
    return runner.results, notes


# --------------------------------------------------------------------------- reporting


def find(results: Sequence[Result], server: str, payload: str, processes: int, concurrency: int) -> Result | None:
    for result in results:
        if (result.server, result.payload, result.processes, result.concurrency) == (
            server, payload, processes, concurrency
        ):
            return result
    return None


@dataclass
class Ratio:
    name: str
    processes: int
    concurrency: int
    value: float
    target: float | None = None
    # The denominator's server CPU per answer over ours (medians of the rounds): the cost per request, beside the
    # requests/s that wrk and outside load on the same cores also move
    cpu_value: float | None = None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "meets target" if self.value >= self.target else "BELOW target"


def ratios(results: Sequence[Result], process_counts: Sequence[int]) -> list[Ratio]:
    out = []
    specs: list[tuple[str, tuple[str, str], tuple[str, str], bool, float | None, set[int] | None]] = [
        # name, numerator, denominator, denominator is the single-process Neuroglancer, target, at concurrency
        ("Lamella JPEG warm / Neuroglancer JPEG", ("lamella", "jpeg"), ("neuroglancer", "jpeg"), True,
         TARGET_JPEG_RATIO, {8}),
        ("Lamella JPEG no LRU / Neuroglancer JPEG", ("lamella-nocache", "jpeg"), ("neuroglancer", "jpeg"), True,
         None, None),
        ("Lamella passthrough chunk / nginx chunk", ("lamella", "zarr-chunk"), ("nginx", "zarr-chunk"), False,
         TARGET_PASSTHROUGH_RATIO, None),
        ("Lamella passthrough range / nginx range", ("lamella", "shard-range"), ("nginx", "shard-range"), False,
         TARGET_PASSTHROUGH_RATIO, None),
        ("nginx+Lamella accel chunk / nginx chunk", ("nginx+lamella-accel", "zarr-chunk"), ("nginx", "zarr-chunk"),
         False, None, None),
        ("nginx+Lamella accel range / nginx range", ("nginx+lamella-accel", "shard-range"),
         ("nginx", "shard-range"), False, None, None),
        ("deployment public chunk / nginx chunk", ("deploy-public", "zarr-chunk"), ("nginx", "zarr-chunk"),
         False, TARGET_DEPLOY_PUBLIC_RATIO, None),
        ("deployment private chunk / nginx chunk", ("deploy-private", "zarr-chunk"), ("nginx", "zarr-chunk"),
         False, TARGET_DEPLOY_PRIVATE_RATIO, None),
        ("deployment public range / nginx range", ("deploy-public", "shard-range"), ("nginx", "shard-range"),
         False, TARGET_DEPLOY_PUBLIC_RATIO, None),
        ("deployment private range / nginx range", ("deploy-private", "shard-range"), ("nginx", "shard-range"),
         False, TARGET_DEPLOY_PRIVATE_RATIO, None),
        ("JPEG public, access checks on / off", ("lamella", "jpeg"), ("lamella-checks-off", "jpeg"), False,
         TARGET_ACCESS_RATIO, None),
        ("JPEG private+token, checks on / off", ("lamella-private-token", "jpeg"),
         ("lamella-checks-off-token", "jpeg"), False, TARGET_ACCESS_RATIO, None),
        (f"JPEG public / {ACCESS_BASELINE} (before)", ("lamella", "jpeg"), ("lamella-before-access", "jpeg"),
         False, None, None),
        (f"JPEG private+token / {ACCESS_BASELINE} (before)", ("lamella-private-token", "jpeg"),
         ("lamella-before-access", "jpeg"), False, None, None),
    ]
    for name, (num_server, num_payload), (den_server, den_payload), single, target, target_at in specs:
        for processes in process_counts:
            for concurrency in CONCURRENCY:
                num = find(results, num_server, num_payload, processes, concurrency)
                den = find(results, den_server, den_payload, 1 if single else processes, concurrency)
                if num is None or den is None or den.requests_per_s == 0:
                    continue
                applies = target_at is None or concurrency in target_at
                cpu = None
                if num.rounds_cpu_us_per_request and den.rounds_cpu_us_per_request:
                    cpu = den.cpu_us_per_request / num.cpu_us_per_request
                out.append(Ratio(name, processes, concurrency, num.requests_per_s / den.requests_per_s,
                                 target if applies else None, cpu))
    return out


def print_report(results: Sequence[Result], ratio_list: Sequence[Ratio], notes: dict[str, Any],
                 meta: dict[str, Any]) -> None:
    cores = meta["cpu_count"]
    print("\n" + "=" * 124)
    print(f"Chunk serving, {SHAPE[0]}³ uint8, all {GRID**3} level-0 chunks of {CHUNK}³ cycled; "
          f"{meta['duration_s']:g} s per run; {cores} cores.")
    print(f"NOTE: wrk runs on the same {cores} cores as the servers. CPU columns are % of one core "
          f"(max {100 * cores}): server + wrk + irq + other near {100 * cores} means the machine, not the "
          "server, is the limit. 'irq' is interrupt time (mostly this run's loopback TCP); 'other' is other "
          "processes and hypervisor steal, i.e. load from outside the benchmark.")
    header = (f"{'server':<28} {'payload':<12} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'MB/s':>7} {'body KB':>7} {'srv CPU':>7} {'wrk CPU':>7} {'irq':>5} {'other':>5} {'errors':>6}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{label(r):<28} {r.payload:<12} {r.concurrency:>4} {r.requests_per_s:>9.0f} {r.p50_ms:>8.2f} "
              f"{r.p99_ms:>8.2f} {r.mb_per_s:>7.0f} {r.mean_body_bytes / 1024:>7.1f} {r.server_cpu_pct:>7.0f} "
              f"{r.wrk_cpu_pct:>7.0f} {r.irq_cpu_pct:>5.0f} {r.other_cpu_pct:>5.0f} {r.errors:>6}")
    print("\nRatios (req/s over req/s; Neuroglancer always runs as its one process):")
    for ratio in ratio_list:
        print(f"  {ratio.name:<44} procs={ratio.processes} c={ratio.concurrency:<3} {ratio.value:7.2f}x"
              + (f"  (target >= {ratio.target:g}x: {ratio.verdict})" if ratio.target is not None else "")
              + (f"  [per server CPU: {ratio.cpu_value:.2f}x]" if ratio.cpu_value is not None else ""))
    print("\nJPEG: Lamella encodes at quality 85 (imagecodecs), Neuroglancer at Pillow's default 75; "
          "'body KB' is the mean chunk size.")
    for key, value in notes.items():
        print(f"{key}: {value}")
    noisy = [r for r in results if r.other_cpu_pct > 15]
    if noisy:
        print(f"WARNING: {len(noisy)} run(s) shared the machine with other work (other CPU > 15% of a core, "
              f"up to {max(r.other_cpu_pct for r in noisy):.0f}%); rerun on a quiet machine for firm numbers.")
    if any(r.errors for r in results):
        print("WARNING: some runs had non-2xx/3xx answers or socket errors (see the errors column).")


def software_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("lamella", "neuroglancer", "tornado", "tensorstore", "imagecodecs", "pillow", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def tool_version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"


# --------------------------------------------------------------------------- main


def require_tool(name: str, *fallbacks: str) -> str:
    for candidate in (shutil.which(name), *fallbacks):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    package = "wrk" if name == "wrk" else "nginx-light"
    sys.exit(f"serve_chunks: {name} is not installed or not executable (Debian: apt-get install {package})")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per wrk run [default: 5; 2 with --quick]")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of untimed load before each set of runs [default: 2; 1 with --quick]")
    parser.add_argument("--quick", action="store_true",
                        help="short runs and only the headline rows (no shard ranges, no LRU-off JPEG)")
    parser.add_argument("--processes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2],
                        help="comma-separated Lamella process / nginx worker counts [default: 1,2]")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="before each run, wait up to this many seconds for other load to stop [default: 60]")
    parser.add_argument("--nginx-only", action="store_true",
                        help="only plain nginx, the nginx deployment and nginx in front of Lamella (no Neuroglancer, "
                             "no Lamella alone)")
    parser.add_argument("--access-baseline", default=ACCESS_BASELINE, metavar="REV",
                        help="a commit whose server (run from a git worktree) is measured beside JPEG with access "
                             "checks; '' to skip [default: %(default)s, the last one before accounts, access "
                             "checks and the hostile-input hardening]")
    parser.add_argument("--access-rounds", type=lambda v: max(1, int(v)), default=ACCESS_ROUNDS,
                        help="turns of the access comparison at each concurrency (the median is kept) "
                             "[default: %(default)s]")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, configs, data)")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    args = parser.parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = args.warmup or (1.0 if args.quick else 2.0)
    return args


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so the finally block below stops every server."""
    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = require_tool("wrk", "/usr/bin/wrk")
    nginx = require_tool("nginx", "/usr/sbin/nginx", "/usr/local/sbin/nginx")
    lamella = Path(sys.executable).parent / "lamella"
    if not lamella.exists():
        found = shutil.which("lamella")
        if found is None:
            sys.exit("serve_chunks: the lamella command is not installed (pip install -e . in the project)")
        lamella = Path(found)

    tmp = Path(tempfile.mkdtemp(prefix="lamella-bench-"))
    tmp.chmod(0o755)  # nginx workers run as an unprivileged user when the master is root
    procs = Processes(tmp / "logs")
    started = time.time()
    try:
        with terminate_as_exit():
            results, notes = run_all(args, wrk, nginx, lamella, tmp, procs)
    except BenchError as error:
        print(f"\nserve_chunks: error: {error}", file=sys.stderr)
        print(f"(logs kept in {tmp / 'logs'})", file=sys.stderr)
        args.keep = True
        return 1
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": list(CONCURRENCY),
        "processes": args.processes,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "wrk": tool_version([wrk, "-v"]),
        "nginx": tool_version([nginx, "-v"]),
        "software": software_versions(),
        "volume": {"shape": list(SHAPE), "dtype": "uint8", "chunk": CHUNK, "voxel_nm": list(VOXEL_NM)},
        "note": "wrk shares the machine's cores with the servers under test",
    }
    ratio_list = ratios(results, args.processes)
    print_report(results, ratio_list, notes, meta)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": meta,
        "notes": notes,
        "results": [asdict(r) for r in results],
        "ratios": [{**asdict(r), "verdict": r.verdict} for r in ratio_list],
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
