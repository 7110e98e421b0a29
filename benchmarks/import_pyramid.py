#!/usr/bin/env python
"""Import throughput: TIFF stack to sharded OME-Zarr pyramid, Lamella against ome-zarr-py and ngff-zarr.

One run generates an uncompressed multi-page uint8 TIFF (default 1 GiB: 256 x 2048 x 2048)
with EM-like content (``tiling.demo.make_demo_volume`` tiles, mirrored so tiles join
seamlessly) and converts that same file with:

* Lamella: ``lamella import STACK.tif --dataset bench --voxel-size 8,8,8 --quiet --data-dir D``
  (OME-Zarr 0.5, Zarr v3 sharded, 64³ inner chunks in 256³ shards, zstd, mean pyramid
  down to one chunk, then catalog registration);
* ome-zarr-py: ``ome_zarr.writer.write_image`` on a dask array over the TIFF (tifffile's
  ``imread(aszarr=True)`` store, rechunked to the level-0 shard shape; ``--peer-input memmap``
  uses a read-only memory map instead), FormatV05 (Zarr v3), the same chunk and shard shapes
  per level, zstd, ``Methods.LOCAL_MEAN`` (the same 2x2x2 mean) and as many levels;
* ngff-zarr: ``to_multiscales`` (``Methods.DASK_BIN_SHRINK``, the mean, chunks 64) and
  ``to_ngff_zarr`` (version 0.5, 4 chunks per shard edge, zstd) on the same dask array.

Every converter writes the same zstd level (``--zstd-level``, default Lamella's own default, 1);
the level stored in each output's metadata is checked.

The peers run through ``benchmarks/import_peer.py``. Each converter runs ``--rounds`` times
(default 3) in rounds that each start with the next converter, so that none always runs first
(on these VMs the first run after a pause meets memory the host has taken back, ~2 s of CPU per
GB touched); the median run by wall time is reported and every run is kept in the JSON. A run is
a process of its own under GNU time (peak RSS = ru_maxrss, which counts touched pages of a memory-mapped
input too; anonymous and file-backed RSS are sampled from /proc as well), after a warm-up
read of the whole TIFF so that every converter reads from the page cache (the generated file is
dropped from it once, right after it is written, so that it is then cached as a file read from
disk is). Dirty pages are flushed (``sync``) before each run so no run pays for the
previous one's writeback. Each output is verified: level-0 shape, random blocks of level 0
against the input, and a level-1 block against the 2x2x2 mean of the input.

The machine is shared: a full-size run first waits (up to 15 min) until
benchmarks/serve_chunks.py and wrk are gone, waits before each run for the CPUs to be idle,
and measures the CPU time other processes used during each run; a converter is run again
(up to --attempts) when that exceeds --max-foreign % of the machine.

Usage: .venv/bin/python benchmarks/import_pyramid.py [--gib G] [--quick] [--keep] [--no-wait]
Results are printed and written to benchmarks/results/import_pyramid.json (import_pyramid_quick.json
with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts
import tifffile
from machine import cpu_busy_seconds, machine, ratio_line

from tiling.demo import make_demo_volume
from tiling.pyramid import PyramidOptions, plan_pyramid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_SCRIPT = HERE / "import_peer.py"
RESULTS_PATH = HERE / "results" / "import_pyramid.json"
VENV_BIN = Path(sys.executable).parent
GNU_TIME = Path("/usr/bin/time")

PLANE = (2048, 2048)  # y, x of the full-size stack
QUICK_SHAPE = (128, 512, 512)
TILE = (256, 512, 512)  # the demo volume that is tiled into the stack
VOXEL_NM = (8.0, 8.0, 8.0)
DATASET = "bench"
TARGET_THROUGHPUT_RATIO = 5.0  # Lamella / peer, at least
TARGET_RSS_RATIO = 0.5  # Lamella / peer, at most
MEAN_METHODS = {"local_mean", "dask_bin_shrink", "itkwasm_bin_shrink", "itk_bin_shrink"}
OTHER_BENCHMARKS = (["pgrep", "-f", "serve_chunks.py"], ["pgrep", "wrk"])


class BenchError(Exception):
    """A step failed; the message says which and why."""


# --------------------------------------------------------------------------- input


def stack_shape(gib: float) -> tuple[int, int, int]:
    depth = max(1, round(gib * (1 << 30) / (PLANE[0] * PLANE[1])))
    return (depth, *PLANE)


def _mirrored(tile: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    """The tile, flipped along every axis where its grid index is odd, so neighbours join seamlessly."""
    flips = tuple(axis for axis, i in enumerate(index) if i % 2)
    return np.flip(tile, axis=flips) if flips else tile


def generate_stack(path: Path, shape: tuple[int, int, int]) -> float:
    """Write an uncompressed multi-page uint8 TIFF of EM-like content; returns seconds taken."""
    started = time.perf_counter()
    tile = make_demo_volume(tuple(min(t, s) for t, s in zip(TILE, shape, strict=True)))  # type: ignore[arg-type]
    out = tifffile.memmap(path, shape=shape, dtype=np.uint8, photometric="minisblack")
    try:
        grid = [range(0, s, t) for s, t in zip(shape, tile.shape, strict=True)]
        for index in np.ndindex(*(len(g) for g in grid)):
            starts = [g[i] for g, i in zip(grid, index, strict=True)]
            region = tuple(slice(a, min(a + t, s)) for a, t, s in zip(starts, tile.shape, shape, strict=True))
            piece = _mirrored(tile, index)
            out[region] = piece[tuple(slice(0, r.stop - r.start) for r in region)]
        out.flush()
    finally:
        del out
    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        if tuple(series.shape) != shape or series.dataoffset is None or len(series.pages) != shape[0]:
            raise BenchError(f"{path}: expected a contiguous {shape[0]}-page stack, got {series.shape}")
    os.sync()
    # Dropped from the page cache once on disk: the warm-up reads then cache it as a file read from
    # disk is cached (large folios, where the kernel uses them), not in the pages the generator wrote.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)
    return time.perf_counter() - started


def warm_read(path: Path) -> float:
    """Read the whole file (into the page cache); returns MB/s."""
    started = time.perf_counter()
    with path.open("rb", buffering=0) as handle:
        while handle.read(16 << 20):
            pass
    return path.stat().st_size / 1e6 / (time.perf_counter() - started)


def resident_bytes(path: Path) -> int | None:
    """Bytes of ``path`` in the page cache (util-linux fincore), None if unknown."""
    if shutil.which("fincore") is None:
        return None
    result = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                            capture_output=True, text=True, check=False)
    return int(result.stdout.split()[0]) if result.returncode == 0 and result.stdout.strip() else None


# --------------------------------------------------------------------------- measurement


@dataclass
class Measurement:
    wall_s: float
    exit_code: int
    peak_rss_mib: float  # ru_maxrss of the converter process (GNU time)
    peak_anon_mib: float  # sampled RssAnon peak
    peak_file_mib: float  # sampled RssFile peak (mapped files, e.g. the input memory map)
    user_s: float
    sys_s: float
    cpu_percent: float
    stdout: str
    stderr_tail: str


class RssSampler(threading.Thread):
    """Polls /proc/PID/status of the measured process for anonymous and file-backed RSS."""

    def __init__(self, wrapper_pid: int, through_time: bool, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.wrapper_pid = wrapper_pid
        self.through_time = through_time
        self.interval = interval
        self.stop = threading.Event()
        self.peaks: dict[str, int] = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}

    def _find_pid(self) -> int | None:
        if not self.through_time:
            return self.wrapper_pid
        try:
            children = Path(f"/proc/{self.wrapper_pid}/task/{self.wrapper_pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def run(self) -> None:
        pid: int | None = None
        while not self.stop.is_set():
            pid = pid or self._find_pid()
            if pid is not None:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    status = ""
                for key in self.peaks:
                    match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
                    if match:
                        self.peaks[key] = max(self.peaks[key], int(match.group(1)))
            self.stop.wait(self.interval)


def _gnu_time_field(text: str, label: str) -> str:
    match = re.search(rf"^\s*{re.escape(label)}: (.+)$", text, re.MULTILINE)
    if match is None:
        raise BenchError(f"GNU time output has no {label!r}")
    return match.group(1).strip()


def measure(command: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Measurement:
    """Run ``command`` once in a fresh process; wall time, peak RSS and CPU time."""
    through_time = GNU_TIME.exists()
    stats = log.with_suffix(".time")
    full = [str(GNU_TIME), "-v", "-o", str(stats), *command] if through_time else list(command)
    with log.open("w") as err:
        started = time.perf_counter()
        process = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        sampler = RssSampler(process.pid, through_time)
        sampler.start()
        if through_time:
            stdout, _ = process.communicate()
            wall = time.perf_counter() - started
            usage = None
        else:  # wait4 gives this child's own rusage
            assert process.stdout is not None
            stdout = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop.set()
        sampler.join()
    lines = log.read_text().splitlines()
    if usage is None:
        text = stats.read_text()
        exit_code = int(_gnu_time_field(text, "Exit status"))
        peak_kib = int(_gnu_time_field(text, "Maximum resident set size (kbytes)"))
        user = float(_gnu_time_field(text, "User time (seconds)"))
        system = float(_gnu_time_field(text, "System time (seconds)"))
    else:
        exit_code = process.returncode
        peak_kib, user, system = usage.ru_maxrss, usage.ru_utime, usage.ru_stime
    return Measurement(
        wall_s=wall,
        exit_code=exit_code,
        peak_rss_mib=peak_kib / 1024,
        peak_anon_mib=sampler.peaks["RssAnon"] / 1024,
        peak_file_mib=sampler.peaks["RssFile"] / 1024,
        user_s=user,
        sys_s=system,
        cpu_percent=100 * (user + system) / wall if wall else 0.0,
        stdout=stdout,
        stderr_tail="\n".join(lines[-15:]),
    )


# --------------------------------------------------------------------------- verification


def _group_datasets(root: Path) -> tuple[str, int, list[str]]:
    """OME version, Zarr format and level paths read from the group metadata."""
    if (root / "zarr.json").exists():
        attributes = json.loads((root / "zarr.json").read_text()).get("attributes", {})
        ome = attributes.get("ome", attributes)
        zarr_format = 3
    elif (root / ".zattrs").exists():
        ome = json.loads((root / ".zattrs").read_text())
        zarr_format = 2
    else:
        raise BenchError(f"{root}: no zarr.json or .zattrs")
    multiscale = ome["multiscales"][0]
    version = str(ome.get("version") or multiscale.get("version"))
    return version, zarr_format, [str(d["path"]) for d in multiscale["datasets"]]


def _array_layout(path: Path) -> dict[str, Any]:
    """Inner chunk, shard and compressor of a stored array, from its metadata."""
    if (path / "zarr.json").exists():
        meta = json.loads((path / "zarr.json").read_text())
        outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
        codecs = meta["codecs"]
        if codecs and codecs[0]["name"] == "sharding_indexed":
            config = codecs[0]["configuration"]
            inner, codecs = config["chunk_shape"], config["codecs"]
            return {"chunk": inner, "shard": outer, "codecs": [c["name"] for c in codecs],
                    "zstd_level": next((c.get("configuration", {}).get("level") for c in codecs
                                        if c["name"] == "zstd"), None)}
        return {"chunk": outer, "shard": None, "codecs": [c["name"] for c in codecs], "zstd_level": None}
    meta = json.loads((path / ".zarray").read_text())
    compressor = meta.get("compressor") or {}
    return {"chunk": meta["chunks"], "shard": None, "codecs": [compressor.get("id")],
            "zstd_level": compressor.get("level")}


def _open(path: Path, zarr_format: int) -> ts.TensorStore:
    spec = {"driver": "zarr3" if zarr_format == 3 else "zarr", "kvstore": {"driver": "file", "path": str(path) + "/"}}
    return ts.open(spec, read=True).result()


@dataclass
class Verification:
    ok: bool
    ome_version: str = ""
    zarr_format: int = 0
    levels: int = 0
    level_shapes: list[list[int]] = field(default_factory=list)
    layout: dict[str, Any] = field(default_factory=dict)
    blocks_checked: int = 0
    level1_max_abs_diff: float | None = None
    problems: list[str] = field(default_factory=list)


def verify(root: Path, stack: np.ndarray, method: str, blocks: int, seed: int) -> Verification:
    """Level 0 equals the input on random blocks; shapes; level 1 is the 2x2x2 mean."""
    result = Verification(ok=False)
    try:
        result.ome_version, result.zarr_format, paths = _group_datasets(root)
        arrays = [_open(root / p, result.zarr_format) for p in paths]
    except (BenchError, KeyError, ValueError, OSError) as error:
        result.problems.append(f"cannot open the pyramid: {error}")
        return result
    result.levels = len(arrays)
    result.level_shapes = [[int(s) for s in a.shape] for a in arrays]
    result.layout = _array_layout(root / paths[0])
    shape = stack.shape
    if tuple(arrays[0].shape) != shape:
        result.problems.append(f"level 0 shape {tuple(arrays[0].shape)} != input {shape}")
        return result
    if np.dtype(arrays[0].dtype.numpy_dtype) != stack.dtype:
        result.problems.append(f"level 0 dtype {arrays[0].dtype} != input {stack.dtype}")
    rng = np.random.default_rng(seed)
    size = np.minimum(np.array(shape), (80, 96, 112))  # unaligned to chunks on purpose
    corners = [np.array(shape) - size, np.zeros(3, dtype=int)]  # the far corner and the origin
    corners += [rng.integers(0, np.array(shape) - size + 1) for _ in range(max(0, blocks - 2))]
    for start in corners:
        region = tuple(slice(int(a), int(a + s)) for a, s in zip(start, size, strict=True))
        got = np.asarray(arrays[0][region].read().result())
        want = np.asarray(stack[region])
        if not np.array_equal(got, want):
            differing = int(np.count_nonzero(got != want))
            result.problems.append(f"level 0 block at {tuple(int(a) for a in start)}: {differing} voxels differ")
        result.blocks_checked += 1
    if len(arrays) > 1:
        half = tuple(max(1, s // 2) for s in shape)
        if tuple(arrays[1].shape) != half:
            result.problems.append(f"level 1 shape {tuple(arrays[1].shape)} != {half}")
        else:
            edge = np.minimum(np.array(half), 48)
            start = rng.integers(0, np.array(half) - edge + 1)
            region = tuple(slice(int(a), int(a + e)) for a, e in zip(start, edge, strict=True))
            got = np.asarray(arrays[1][region].read().result()).astype(np.float64)
            source = np.asarray(stack[tuple(slice(2 * r.start, 2 * r.stop) for r in region)], dtype=np.float64)
            mean = source.reshape(edge[0], 2, edge[1], 2, edge[2], 2).mean(axis=(1, 3, 5))
            result.level1_max_abs_diff = float(np.abs(got - mean).max())
            if method in MEAN_METHODS and result.level1_max_abs_diff > 1.0:
                result.problems.append(f"level 1 differs from the 2x2x2 mean by up to {result.level1_max_abs_diff}")
    result.ok = not result.problems
    return result


def directory_bytes(path: Path) -> tuple[int, int]:
    """Total bytes of the files under ``path`` and how many files."""
    total = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            total += (Path(folder) / name).stat().st_size
            files += 1
    return total, files


# --------------------------------------------------------------------------- converters


@dataclass
class Converter:
    name: str
    label: str
    method: str
    settings: str
    command: list[str]
    output: Path  # the OME-Zarr image folder
    clean: Path  # removed before each run (the output, or Lamella's data folder)


def converters(args: argparse.Namespace, stack: Path, work: Path, levels: int) -> list[Converter]:
    python = str(VENV_BIN / "python")
    lamella = VENV_BIN / "lamella"
    result: list[Converter] = []
    if "lamella" in args.peers:
        data_dir = work / "lamella-data"
        command = ([str(lamella)] if lamella.exists() else [python, "-m", "viewer.cli"]) + [
            "import", str(stack), "--dataset", DATASET, "--voxel-size", ",".join(f"{v:g}" for v in VOXEL_NM),
            "--quiet", "--data-dir", str(data_dir), "--zstd-level", str(args.zstd_level)]
        result.append(Converter(
            "lamella", "Lamella", "mean",
            "lamella import CLI: own shard encoder (imagecodecs zstd), 64³ chunks in 256³ shards, "
            f"zstd {args.zstd_level}, mean, "
            "+ catalog registration",
            command, data_dir / "images" / DATASET / f"{stack.stem}.ome.zarr", data_dir))
    peer_common = ["--levels", str(levels), "--chunk", "64", "--shard-chunks", "4",
                   "--zstd-level", str(args.zstd_level), "--input", args.peer_input, "--threads", str(args.threads),
                   "--ome-version", "0.5"]
    if "ome-zarr" in args.peers:
        output = work / "ome-zarr.ome.zarr"
        result.append(Converter(
            "ome-zarr", "ome-zarr-py", args.ome_zarr_method,
            f"write_image, FormatV05, dask {args.peer_input} input, per-level chunks/shards as Lamella, "
            f"zstd {args.zstd_level}, Methods({args.ome_zarr_method!r}), {args.threads} dask threads",
            [python, str(PEER_SCRIPT), "ome-zarr", str(stack), str(output), "--method", args.ome_zarr_method,
             *peer_common], output, output))
    if "ngff-zarr" in args.peers:
        output = work / "ngff-zarr.ome.zarr"
        result.append(Converter(
            "ngff-zarr", "ngff-zarr", args.ngff_zarr_method,
            f"to_multiscales(chunks=64, Methods({args.ngff_zarr_method!r})) + to_ngff_zarr(version 0.5, "
            f"chunks_per_shard=4, zstd {args.zstd_level}), dask {args.peer_input} input, "
            f"{args.threads} dask threads",
            [python, str(PEER_SCRIPT), "ngff-zarr", str(stack), str(output), "--method", args.ngff_zarr_method,
             *peer_common], output, output))
    return result


def installed(peers: Sequence[str]) -> dict[str, bool]:
    found = {"lamella": True}
    for peer, module in (("ome-zarr", "ome_zarr"), ("ngff-zarr", "ngff_zarr")):
        if peer in peers:
            found[peer] = subprocess.run([str(VENV_BIN / "python"), "-c", f"import {module}"],
                                         capture_output=True, check=False).returncode == 0
    return found


def versions() -> dict[str, str]:
    names = ["lamella", "ome-zarr", "ngff-zarr", "zarr", "dask", "tensorstore", "tifffile", "numpy", "numcodecs",
             "scikit-image", "itkwasm-downsample", "zarrista"]
    found: dict[str, str] = {"python": platform.python_version()}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found["lamella-git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "tiling", "viewer"],
                                 capture_output=True, text=True, check=True).stdout.split("\n")
        found["lamella-uncommitted"] = ", ".join(line.strip() for line in changed if line.strip()) or "none"
    return found





def wait_for_idle_cpu(limit_s: float, busy_fraction: float = 0.1, window_s: float = 2.0) -> float:
    """Wait (at most ``limit_s``) until the machine's CPUs are less than ``busy_fraction`` busy; returns it."""
    cores = os.cpu_count() or 1
    started = time.monotonic()
    while True:
        before = cpu_busy_seconds()
        time.sleep(window_s)
        busy = (cpu_busy_seconds() - before) / (window_s * cores)
        if busy < busy_fraction or time.monotonic() - started >= limit_s:
            return busy


def others_running() -> list[str]:
    found = []
    for command in OTHER_BENCHMARKS:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        pids = [p for p in result.stdout.split() if p != str(os.getpid())]
        if pids:
            found.append(f"{command[-1]} (pids {', '.join(pids)})")
    return found


def wait_for_quiet(limit_s: float, interval_s: float = 30.0) -> float:
    """Wait until serve_chunks.py and wrk are gone (at most ``limit_s``); returns seconds waited."""
    started = time.monotonic()
    while busy := others_running():
        waited = time.monotonic() - started
        if waited >= limit_s:
            print(f"warning: still running after {waited:.0f} s: {'; '.join(busy)}; measuring anyway", flush=True)
            break
        print(f"waiting for other benchmarks to finish: {'; '.join(busy)} ({waited:.0f} s so far)", flush=True)
        time.sleep(interval_s)
    return time.monotonic() - started


# --------------------------------------------------------------------------- report



def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'converter':<12} {'wall s':>8} {'MB/s':>8} {'peak RSS':>9} {'anon':>7} {'file':>7} {'CPU %':>6} "
              f"{'output MiB':>10} {'ratio':>6} {'levels':>6}  verified")
    print(header)
    print("-" * len(header))
    for row in rows:
        if row.get("skipped"):
            print(f"{row['label']:<12} skipped: {row['skipped']}")
            continue
        print(f"{row['label']:<12} {row['wall_s']:8.2f} {row['throughput_mb_s']:8.1f} {row['peak_rss_mib']:9.0f} "
              f"{row['peak_anon_mib']:7.0f} {row['peak_file_mib']:7.0f} {row['cpu_percent']:6.0f} "
              f"{row['output_bytes'] / (1 << 20):10.1f} {row['compression_ratio']:6.2f} {row['levels']:6d}  "
              f"{'yes' if row['verified'] else 'NO: ' + '; '.join(row['problems'])}")
    print("(peak RSS = ru_maxrss MiB incl. touched pages of the memory-mapped input; anon/file = sampled "
          "RssAnon/RssFile peaks MiB; MB = 10^6 bytes of input per wall second; ratio = input/output bytes)")


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    by_name = {r["name"]: r for r in rows if not r.get("skipped") and r.get("exit_code") == 0}
    lamella = by_name.get("lamella")
    result: dict[str, dict[str, float | None]] = {}
    for peer in ("ome-zarr", "ngff-zarr"):
        other = by_name.get(peer)
        if lamella is None or other is None:
            continue
        result[peer] = {
            "throughput": lamella["throughput_mb_s"] / other["throughput_mb_s"],
            "peak_rss": lamella["peak_rss_mib"] / other["peak_rss_mib"],
            "peak_anon_rss": (lamella["peak_anon_mib"] / other["peak_anon_mib"]) if other["peak_anon_mib"] else None,
        }
    return result


# --------------------------------------------------------------------------- main


def run_converter(
    converter: Converter, args: argparse.Namespace, stack: Path, data: np.ndarray, input_bytes: int, seed: int
) -> dict[str, Any]:
    """One measured run (fresh output, warm page cache, idle CPUs), then verification of its output."""
    shutil.rmtree(converter.clean, ignore_errors=True)
    os.sync()
    warm = warm_read(stack)
    cached = resident_bytes(stack)
    row: dict[str, Any] = {"warm_read_mb_s": warm, "input_resident_bytes": cached, "others_running": others_running()}
    print(f"[{converter.label}] warm-up read {warm:.0f} MB/s, "
          f"{'?' if cached is None else f'{100 * cached / stack.stat().st_size:.0f}%'} of the TIFF cached; "
          f"running ...", flush=True)
    row["busy_fraction_before"] = wait_for_idle_cpu(args.settle) if args.settle > 0 else None
    busy_before = cpu_busy_seconds()
    result = measure(converter.command, converter.clean.parent / f"{converter.name}.log")
    foreign = max(0.0, cpu_busy_seconds() - busy_before - result.user_s - result.sys_s)
    row.update(asdict(result))
    row.pop("stdout")
    row.update(loadavg_after=Path("/proc/loadavg").read_text().split()[:3], foreign_cpu_s=foreign,
               foreign_cpu_percent=100 * foreign / (result.wall_s * (os.cpu_count() or 1)),
               throughput_mb_s=input_bytes / 1e6 / result.wall_s)
    with contextlib.suppress(ValueError, IndexError):
        row["phases"] = json.loads(result.stdout.strip().splitlines()[-1]) if converter.name != "lamella" \
            else {"cli_output": result.stdout.strip()}
    print(f"  other processes used {foreign:.1f} CPU s during the run ({row['foreign_cpu_percent']:.0f}% of the "
          f"machine)", flush=True)
    if result.exit_code != 0:
        row.update(verified=False, problems=[f"exit code {result.exit_code}"], levels=0, output_bytes=0,
                   output_files=0, compression_ratio=0.0)
        print(f"  FAILED (exit {result.exit_code}):\n{result.stderr_tail}", flush=True)
        return row
    check = verify(converter.output, data, converter.method, args.blocks, seed=seed)
    if check.layout.get("zstd_level") != args.zstd_level:  # the comparison is only fair at the same level
        check.ok = False
        check.problems.append(f"stored zstd level {check.layout.get('zstd_level')} != {args.zstd_level}")
    size, files = directory_bytes(converter.output)
    row.update(verified=check.ok, problems=check.problems, levels=check.levels, level_shapes=check.level_shapes,
               layout=check.layout, ome_version=check.ome_version, zarr_format=check.zarr_format,
               blocks_checked=check.blocks_checked, level1_max_abs_diff=check.level1_max_abs_diff,
               output_bytes=size, output_files=files, compression_ratio=input_bytes / size if size else 0.0)
    print(f"  {result.wall_s:.2f} s, {row['throughput_mb_s']:.1f} MB/s, peak RSS {result.peak_rss_mib:.0f} MiB "
          f"(anon {result.peak_anon_mib:.0f}, file {result.peak_file_mib:.0f}), OME-Zarr {check.ome_version} / "
          f"Zarr v{check.zarr_format}, {check.levels} levels, level 0 {check.layout.get('chunk')} in "
          f"{check.layout.get('shard')} {check.layout.get('codecs')}", flush=True)
    if check.ok:
        print(f"  verified: shape, {check.blocks_checked} level-0 blocks equal; level 1 vs 2x2x2 mean "
              f"max |diff| {check.level1_max_abs_diff}", flush=True)
    else:
        print(f"  VERIFICATION FAILED for {converter.label}: {'; '.join(check.problems)}", flush=True)
    return row


def undisturbed_run(
    converter: Converter, args: argparse.Namespace, stack: Path, data: np.ndarray, input_bytes: int, seed: int,
    waited: float,
) -> tuple[dict[str, Any], float]:
    """One run of a converter, repeated (up to --attempts) while other processes disturbed it."""
    attempts: list[dict[str, Any]] = []
    for attempt in range(1, args.attempts + 1):
        if not args.no_wait and not args.quick:
            waited += wait_for_quiet(args.wait_limit)
        attempts.append(run_converter(converter, args, stack, data, input_bytes, seed=seed))
        last = attempts[-1]
        if last["exit_code"] != 0 or last["foreign_cpu_percent"] <= args.max_foreign:
            break
        if attempt < args.attempts:
            print(f"  disturbed ({last['foreign_cpu_percent']:.0f}% > {args.max_foreign:g}% of the machine "
                  f"used by other processes): running {converter.label} again", flush=True)
    best = min(attempts, key=lambda a: (a["exit_code"] != 0, a["foreign_cpu_percent"] > args.max_foreign,
                                        a["foreign_cpu_percent"]))
    if best["foreign_cpu_percent"] > args.max_foreign:
        print(f"  warning: every {converter.label} run was disturbed by other processes; keeping the least "
              f"disturbed ({best['foreign_cpu_percent']:.0f}%)", flush=True)
    return {**best, "attempts": len(attempts)}, waited


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="input size in GiB (planes of 2048 x 2048 uint8)")
    parser.add_argument("--quick", action="store_true", help=f"small input {QUICK_SHAPE} for a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (input and outputs)")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for serve_chunks.py / wrk to finish before measuring")
    parser.add_argument("--wait-limit", type=float, default=900.0, help="seconds to wait for them at most")
    parser.add_argument("--peers", nargs="+", default=["lamella", "ome-zarr", "ngff-zarr"],
                        choices=["lamella", "ome-zarr", "ngff-zarr"])
    parser.add_argument("--ome-zarr-method", default="local_mean",
                        help="ome_zarr.scale.Methods value (local_mean = Lamella's 2x2x2 mean; default resize)")
    parser.add_argument("--ngff-zarr-method", default="dask_bin_shrink",
                        help="ngff_zarr.Methods value (dask_bin_shrink = the mean; itkwasm_bin_shrink also)")
    parser.add_argument("--peer-input", choices=["aszarr", "memmap"], default="aszarr",
                        help="how peers read the TIFF: dask over tifffile's Zarr view of the pages (default, "
                             "measured as fast or faster for both peers) or over a memory map, as Lamella reads it")
    parser.add_argument("--zstd-level", type=int, default=PyramidOptions.zstd_level,
                        help="zstd level for every converter (the same for all) [default: Lamella's, %(default)s]")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="dask threads for the peers")
    parser.add_argument("--blocks", type=int, default=12, help="random level-0 blocks compared per output")
    parser.add_argument("--settle", type=float, default=None,
                        help="before each run, wait up to this many seconds for the CPUs to be <10%% busy "
                             "[default: 120, 0 with --quick]")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs of every converter, in rounds that each start with the next converter; the "
                             "median run (by wall time) is reported [default: 3, 1 with --quick]")
    parser.add_argument("--attempts", type=int, default=3,
                        help="runs of a converter at most: another is made while other processes used more than "
                             "--max-foreign %% of the CPUs during a run (the least disturbed run is reported)")
    parser.add_argument("--max-foreign", type=float, default=10.0,
                        help="%% of the machine's CPU time other processes may use during a run")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    if args.settle is None:
        args.settle = 0.0 if args.quick else 120.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shape = QUICK_SHAPE if args.quick else stack_shape(args.gib)
    input_bytes = int(np.prod(shape))
    levels = plan_pyramid(shape, VOXEL_NM, PyramidOptions().chunk_shape(shape))
    info = machine()
    print(f"machine: {info['cpu_count']} CPUs ({info['cpus_usable']} usable, {info['cpu_model']}), "
          f"{info['memory_gib']} GiB RAM, load {' '.join(info['loadavg_at_start'])}")
    print(f"input: {shape[0]} x {shape[1]} x {shape[2]} uint8 = {input_bytes / (1 << 30):.3f} GiB, "
          f"{len(levels)} levels down to {levels[-1].shape}")
    available = installed(args.peers)
    work = Path(tempfile.mkdtemp(prefix="lamella-import-bench-", dir=args.tmp))
    rows: list[dict[str, Any]] = []
    waited = 0.0
    try:
        stack = work / "stack.tif"
        if not args.no_wait and not args.quick:  # generating would disturb them too
            waited = wait_for_quiet(args.wait_limit)
        print(f"generating {stack} ...", flush=True)
        generated = generate_stack(stack, shape)
        print(f"  generated in {generated:.1f} s; uncompressed multi-page TIFF, {stack.stat().st_size} bytes")
        if not args.no_wait and not args.quick:
            waited += wait_for_quiet(max(0.0, args.wait_limit - waited))
        elif busy := others_running():
            print(f"note: other benchmarks are running ({'; '.join(busy)}): timings are disturbed")
        data = tifffile.memmap(stack, mode="r")
        chosen = converters(args, stack, work, len(levels))
        measured: dict[str, list[dict[str, Any]]] = {c.name: [] for c in chosen}
        for converter in chosen:
            row: dict[str, Any] = {"name": converter.name, "label": converter.label, "method": converter.method,
                                   "settings": converter.settings, "command": converter.command}
            rows.append(row)
            if not available.get(converter.name, False):
                row["skipped"] = "not installed"
        runnable = [(index, c) for index, c in enumerate(chosen) if available.get(c.name, False)]
        for round_number in range(args.rounds):
            # Each round starts with the next converter: none always runs first, on memory the VM just got back.
            shift = round_number % max(1, len(runnable))
            for index, converter in runnable[shift:] + runnable[:shift]:
                if args.rounds > 1:
                    print(f"round {round_number + 1}/{args.rounds}: ", end="")
                run, waited = undisturbed_run(converter, args, stack, data, input_bytes, index + 1, waited)
                measured[converter.name].append(run)
        for row in rows:
            runs = measured.get(row["name"])
            if not runs:
                continue
            # The median run by wall time (failed or unverified runs rank last, so they show if frequent).
            ranked = sorted(runs, key=lambda r: (r["exit_code"] != 0 or not r.get("verified"), r["wall_s"]))
            ok = [r for r in ranked if r["exit_code"] == 0 and r.get("verified")]
            median = ok[len(ok) // 2] if len(ok) == len(runs) else ranked[-1]  # even count: the slower middle
            row.update(median)
            row["runs"] = [{k: r.get(k) for k in ("wall_s", "peak_rss_mib", "peak_anon_mib", "user_s", "sys_s",
                                                  "foreign_cpu_percent", "exit_code", "verified", "attempts")}
                           for r in runs]
        del data
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"TIFF {shape} uint8 ({input_bytes / (1 << 30):.3f} GiB) -> sharded OME-Zarr pyramid; "
          f"{info['cpu_count']} CPUs; input read from page cache (warm-up read before each run; "
          "dropped once after generation)")
    print_table(rows)
    for row in rows:
        if row.get("runs") and len(row["runs"]) > 1:
            walls = ", ".join(f"{r['wall_s']:.2f}" for r in row["runs"])
            print(f"  {row['label']}: wall s of the {len(row['runs'])} runs {walls} (median reported)")
    found = ratios(rows)
    print()
    for peer, values in found.items():
        print(f"Lamella vs {peer}:")
        print(ratio_line("throughput (Lamella / peer)", values["throughput"], TARGET_THROUGHPUT_RATIO, "higher"))
        print(ratio_line("peak RSS (Lamella / peer)", values["peak_rss"], TARGET_RSS_RATIO, "lower"))
        print(ratio_line("peak anonymous RSS (Lamella / peer, sampled)", values["peak_anon_rss"], TARGET_RSS_RATIO,
                         "lower"))
    failed = [r["label"] for r in rows if not r.get("skipped") and not r.get("verified")]
    if failed:
        print(f"\nFAILURE: output not verified for {', '.join(failed)}")
    report = {
        "benchmark": "import_pyramid",
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "quick": args.quick,
        "input": {"shape": list(shape), "dtype": "uint8", "bytes": input_bytes,
                  "format": "uncompressed multi-page TIFF",
                  "content": f"tiling.demo.make_demo_volume({TILE}) tiles, mirrored", "voxel_nm": list(VOXEL_NM),
                  "generate_s": generated},
        "expected_levels": [list(level.shape) for level in levels],
        "page_cache": ("warm: whole TIFF read before each run; dropped once right after generation "
                       "(cached as read from disk); sync before each run"),
        "machine": info,
        "waited_for_other_benchmarks_s": waited,
        "versions": versions(),
        "runs": rows,
        "ratios": found,
        "targets": {"throughput_ratio_min": TARGET_THROUGHPUT_RATIO, "rss_ratio_max": TARGET_RSS_RATIO},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.quick and args.results == RESULTS_PATH:  # a smoke run never replaces a real measurement
        args.results = RESULTS_PATH.with_name("import_pyramid_quick.json")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nresults written to {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
