#!/usr/bin/env python
"""Mesh build: Lamella's multi-resolution sharded meshes against igneous', on the same labels and cores.

Two label volumes, each written once (untimed) to a work folder in both tools' input formats:

* ``fibsem``: the real FIB-SEM ground truth of ../shared/data/fibsem_drosophila_medulla_250cube_neuroproof
  (250³ uint32 at 10 nm, 526 proofread bodies, one of them ~24% of the voxels, dense neuropil);
* ``generated``: a 1024 x 1024 x 512 (x, y, z) uint32 volume at 8 nm of ``--objects`` (default 6000)
  rotated ellipsoids with lumpy surfaces (a few random sine waves on the radius), sizes log-uniform
  from 3 to 40 voxels (x0.5 to x1.5 per axis), later objects overwriting earlier ones, ~30% of the
  voxels labelled; deterministic (``--seed``), generated block-wise in ``--cores`` processes.

Inputs: for Lamella, OME-Zarr labels as its import writes them (``tiling.pyramid.write_pyramid``
with ``PyramidOptions(labels=True)``: 64³ chunks in 256³ shards, zstd, mode-downsampled levels down
to one chunk); for igneous, a precomputed segmentation written with cloud-volume (file://, ``raw``
encoding uncompressed, 64³ chunks: the cheapest input for it to read).

The builds, each in a fresh process (``benchmarks/mesh_peer.py``):

* Lamella: ``tiling.meshes.build_meshes(labels, destination, threads=CORES)``: a
  ``neuroglancer_multilod_draco`` sharded mesh (info + shard files), levels of detail from the
  label pyramid.
* igneous (``igneous-pipeline`` from PyPI) run locally as its CLI does (``igneous -p CORES mesh forge
  --sharded`` then ``igneous -p CORES mesh merge-sharded``), with ``taskqueue.LocalTaskQueue(parallel=
  CORES)``: forge = marching cubes and simplification (zmesh, igneous' defaults: reduction factor 100,
  max error 40 nm) per task cutout, fragments stored as mapbuffers with a spatial index; merge = per
  shard, the fragments of each segment joined, levels of detail made by simplifying the joined mesh
  (``num_lod``), split into an octree of fragments from ``min_chunk_size`` up, Draco-encoded (level 7,
  16-bit quantization), written as ``neuroglancer_uint64_sharded_v1`` shard files. Its settings here,
  chosen for speed on this machine and for the same output (see ``--igneous-*``):
  - task shape: igneous' default 448³ where that makes at least 2 tasks per core, else the largest of
    256³ / 128³ / 64³ that does (448³ is a single task for a 250³ volume: one core idle). Measured on
    the 2-core VM, fibsem, whole build: 128³ (8 tasks) 31 s, 64³ (64 tasks, more fragments to join)
    52 s, 256,256,128 (2 unequal tasks) 38 s. The generated volume keeps 448³ (18 tasks, 4 of them
    full 448³ cubes, the rest cut by the volume's edge; not yet compared with other shapes there).
    ``--igneous-shape`` overrides.
  - shards: at least one per core (``min_shards=CORES``; igneous' default of up to 1000 labels per
    shard gives one shard, so one merge task, for the 526 fibsem bodies).
  - levels of detail: as many as Lamella's label pyramid has levels (``num_lod`` = levels - 1), with
    ``min_chunk_size`` 64³ (Lamella's chunk) so that segments large enough get them: igneous gives a
    segment ``min(num_lod, floor(log2(min(extent / min_chunk_size))))`` extra levels, so segments
    smaller than 128 voxels across get none whatever ``num_lod`` is. igneous' CLI defaults
    (``--nlod 1``, 256³) would do less work: ``--igneous-nlod 1 --igneous-min-chunk 256``.
  - Draco level 7 and 16-bit quantization: igneous' defaults (a lower level would be faster but larger).
  - simplification as igneous does it by default: zmesh reduction factor 100, at most 40 nm of error
    (4 voxels of fibsem, 5 of the generated volume). Lamella simplifies less (``tiling.meshes``: factor 10,
    at most half a voxel of the level meshed, 10-bit vertices), so its level 0 has more triangles (the
    ``faces`` column); ``--igneous-matched`` adds a row ``igneous=q`` with Lamella's error (half a voxel) and
    10-bit vertices, for the same detail.

Measured per run: wall time of the build only (imports and process start excluded for both), so
throughput = level-0 voxels / build seconds, including levels of detail and sharding; peak memory
of the process tree, sampled every 100 ms from /proc (the peak of the sum of RSS, and of PSS every 0.5 s, over
the build process and every worker it spawns: igneous' pathos pool spawns ``CORES`` workers, each
importing igneous; Lamella's build spawns ``CORES`` worker processes too), and the peak RSS (VmHWM)
of the build process itself; the
bytes of the written meshes (Lamella's destination; igneous' shard files + info, and apart from
those, the fragments and spatial index its forge step leaves in the mesh folder). Every run gets a
fresh output folder, ``sync`` and a warm read of its input before it starts and waits for idle CPUs
(``--settle``). Each tool runs ``--repeat`` times (default 3) in rounds that alternate which goes
first; the median run by wall time is reported. The CPU time other processes take during a run is
measured (/proc/stat less the tree's own); a run they took more than ``--max-foreign`` % of the
machine from is made again (up to ``--attempts``) and the least disturbed one kept. Each output is
then read back with cloud-volume (``mesh.get`` of the largest segment and a few others at several
sizes, at LOD 0): non-empty meshes whose bounding boxes are within 3 voxels of the segment's voxel
bounding box.

What limits each: igneous' forge is dominated by zmesh's quadric simplification of every marching-
cubes mesh (``MeshTask.compute_meshes`` was 88% of a one-process igneous build of fibsem under
cProfile; marching cubes alone is a few % of that), one task per process, so it uses every core only
while there are at least as many tasks left as workers, and each worker holds a whole task cutout
and its meshes (about 0.9 GB per worker with 448³ tasks on the generated volume); its merge
(a few % of the time here) reads every fragment file of the segments of its shard, simplifies
each joined mesh once per level of detail and cuts it into the octree. The workers are spawned
processes that import igneous and cloud-volume (included: it is how igneous runs locally).
igneous gives a segment levels of detail only when it spans at least ``min_chunk_size * 2`` voxels
on every axis, so on the generated volume (objects under ~150 voxels across) it builds one level
where Lamella builds up to five: part of Lamella's larger output. Lamella's limits are those of
``tiling.meshes`` (see its docstring). Wall time moves by tens of % on a shared VM (the ``other %``
column); the CPU seconds of each build, also printed, move less.

Usage: .venv/bin/python benchmarks/meshes.py [--quick] [--volumes fibsem generated] [--repeat N]
       [--tools lamella igneous] [--work-dir DIR] [--cores N]
--quick: the fibsem volume only, one run each, no settling. Results are printed and written to
benchmarks/results/meshes.json (meshes_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import multiprocessing
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from machine import cpu_busy_seconds, machine, ratio_line

from tiling.meshes import MAX_ERROR
from tiling.pyramid import PyramidOptions, plan_pyramid, write_pyramid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER_SCRIPT = HERE / "mesh_peer.py"
RESULTS_PATH = HERE / "results" / "meshes.json"
VENV_PYTHON = Path(sys.executable)
FIBSEM_TIFF = (ROOT.parent / "shared" / "data" / "fibsem_drosophila_medulla_250cube_neuroproof"
               / "groundtruth_bodies_uint32_zyx.tif")
FIBSEM_VOXEL_NM = (10.0, 10.0, 10.0)  # z, y, x
GENERATED_SHAPE = (512, 1024, 1024)  # z, y, x
GENERATED_VOXEL_NM = (8.0, 8.0, 8.0)
PRECOMPUTED_CHUNK = (64, 64, 64)
TARGET_THROUGHPUT_RATIO = 1.5  # Lamella / igneous, at least
TARGET_MEMORY_RATIO = 1.0  # Lamella / igneous, at most
TASK_EDGES = (448, 256, 128, 64)  # igneous' default first


class BenchError(Exception):
    """A step failed; the message says which and why."""


# --------------------------------------------------------------------------- input volumes


class ArraySource:
    """A (z, y, x) array (in memory or memory-mapped) as tiling.pyramid reads sources."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        return np.ascontiguousarray(self.array[region])


@dataclass
class Objects:
    """Lumpy rotated ellipsoids: centre (z, y, x), inverse-axes rotation, bounding half-extent, waves."""

    centers: np.ndarray
    forms: np.ndarray  # (n, 3, 3): p -> form @ (p - centre) is inside the unit ball
    extents: np.ndarray
    waves: np.ndarray  # (n, 3, 3) wave vectors, radians per voxel
    phases: np.ndarray  # (n, 3)


BUMP = 0.25  # relative amplitude of the surface lumps


def make_objects(shape: tuple[int, int, int], count: int, seed: int) -> Objects:
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 1, (count, 3)) * np.array(shape)
    radius = np.exp(rng.uniform(np.log(3.0), np.log(40.0), count))
    semi = radius[:, None] * rng.uniform(0.5, 1.5, (count, 3))
    rotation, upper = np.linalg.qr(rng.normal(size=(count, 3, 3)))
    rotation *= np.sign(np.diagonal(upper, axis1=1, axis2=2))[:, None, :]
    forms = np.transpose(rotation, (0, 2, 1)) / semi[:, :, None]
    extents = np.sqrt(((rotation * semi[:, None, :]) ** 2).sum(axis=2)) * (1 + BUMP) + 1
    waves = rng.normal(size=(count, 3, 3)) * (2 * np.pi / 12)
    phases = rng.uniform(0, 2 * np.pi, (count, 3))
    return Objects(centers, forms, extents, waves, phases)


def fill_block(start: tuple[int, int, int], shape: tuple[int, int, int], objects: Objects) -> np.ndarray:
    """Labels of one block: object i+1 where its lumpy ellipsoid covers the voxel centre (later ones win)."""
    lo = np.array(start)
    hi = lo + np.array(shape)
    out = np.zeros(shape, np.uint32)
    low = np.floor(objects.centers - objects.extents).astype(int)
    high = np.ceil(objects.centers + objects.extents).astype(int) + 1
    for i in np.nonzero(np.all((high > lo) & (low < hi), axis=1))[0]:
        a = np.maximum(low[i], lo)
        b = np.minimum(high[i], hi)
        z, y, x = (np.arange(a[k], b[k], dtype=np.float32) - np.float32(objects.centers[i, k]) for k in range(3))
        zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
        form = objects.forms[i].astype(np.float32)
        q = sum((form[r, 0] * zz + form[r, 1] * yy + form[r, 2] * xx) ** 2 for r in range(3))
        wave = objects.waves[i].astype(np.float32)
        bump = sum(np.sin(wave[k, 0] * zz + wave[k, 1] * yy + wave[k, 2] * xx + np.float32(objects.phases[i, k]))
                   for k in range(3))
        inside = q < (1 + BUMP / 3 * bump) ** 2
        region = out[a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1], a[2] - lo[2]:b[2] - lo[2]]
        region[inside] = i + 1
    return out


def _generate_slab(job: tuple[str, tuple[int, int, int], int, int, int, int]) -> None:
    path, shape, count, seed, z0, z1 = job
    objects = make_objects(shape, count, seed)
    out = np.memmap(path, dtype=np.uint32, mode="r+", shape=shape)
    step = 256
    for y0 in range(0, shape[1], step):
        for x0 in range(0, shape[2], step):
            block = (z1 - z0, min(step, shape[1] - y0), min(step, shape[2] - x0))
            out[z0:z1, y0:y0 + block[1], x0:x0 + block[2]] = fill_block((z0, y0, x0), block, objects)
    out.flush()


def generate_volume(path: Path, shape: tuple[int, int, int], count: int, seed: int, processes: int) -> float:
    started = time.perf_counter()
    np.memmap(path, dtype=np.uint32, mode="w+", shape=shape).flush()
    slab = 64
    jobs = [(str(path), shape, count, seed, z0, min(z0 + slab, shape[0])) for z0 in range(0, shape[0], slab)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        for _ in pool.imap_unordered(_generate_slab, jobs):
            pass
    return time.perf_counter() - started


def label_statistics(array: np.ndarray) -> dict[int, dict[str, Any]]:
    """Voxel count and (z, y, x) bounding box of every label, slab by slab."""
    from scipy import ndimage

    counts: np.ndarray = np.zeros(1, np.int64)
    boxes: dict[int, list[int]] = {}
    for z0 in range(0, array.shape[0], 64):
        slab = np.ascontiguousarray(array[z0:z0 + 64])
        found = np.bincount(slab.ravel())
        if len(found) > len(counts):
            counts = np.pad(counts, (0, len(found) - len(counts)))
        counts[:len(found)] += found
        for index, box in enumerate(ndimage.find_objects(slab), start=1):
            if box is None:
                continue
            low = [box[0].start + z0, box[1].start, box[2].start]
            high = [box[0].stop + z0, box[1].stop, box[2].stop]
            if index in boxes:
                old = boxes[index]
                boxes[index] = [min(old[0], low[0]), min(old[1], low[1]), min(old[2], low[2]),
                                max(old[3], high[0]), max(old[4], high[1]), max(old[5], high[2])]
            else:
                boxes[index] = low + high
    return {int(label): {"voxels": int(counts[label]), "box_zyx": boxes[label]}
            for label in np.nonzero(counts)[0] if label != 0}


def write_precomputed(array: np.ndarray, layer: Path, voxel_nm: tuple[float, float, float]) -> None:
    """The labels as a precomputed segmentation (x, y, z), raw and uncompressed, for igneous."""
    from cloudvolume import CloudVolume

    z, y, x = array.shape
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type=str(array.dtype), encoding="raw",
        resolution=list(voxel_nm[::-1]), voxel_offset=[0, 0, 0], chunk_size=list(PRECOMPUTED_CHUNK[::-1]),
        volume_size=[x, y, z],
    )
    volume = CloudVolume(f"file://{layer}", info=info, compress=False, progress=False)
    volume.commit_info()
    for z0 in range(0, z, PRECOMPUTED_CHUNK[0]):
        slab = np.asarray(array[z0:z0 + PRECOMPUTED_CHUNK[0]])
        volume[:, :, z0:z0 + slab.shape[0]] = np.ascontiguousarray(slab.transpose(2, 1, 0))[..., None]
    shutil.copy(layer / "info", layer / "info.pristine")


@dataclass
class Volume:
    name: str
    description: str
    shape: tuple[int, int, int]  # z, y, x
    voxel_nm: tuple[float, float, float]
    folder: Path
    labels: Path  # Lamella's OME-Zarr labels
    layer: Path  # igneous' precomputed segmentation
    segments: dict[int, dict[str, Any]]
    levels: int  # of Lamella's label pyramid
    prepare_s: float

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))


def prepare_volume(name: str, work: Path, args: argparse.Namespace) -> Volume:
    """Both tools' inputs for one volume, written once (kept in --work-dir between invocations)."""
    if name == "fibsem":
        shape, voxel = (250, 250, 250), FIBSEM_VOXEL_NM
        key = {"source": str(FIBSEM_TIFF)}
        description = "FIB-SEM Drosophila medulla ground truth (NeuroProof), 526 bodies"
    else:
        shape, voxel = args.generated_shape, GENERATED_VOXEL_NM
        key = {"shape": list(shape), "objects": args.objects, "seed": args.seed, "bump": BUMP}
        description = f"{args.objects} lumpy ellipsoids, seed {args.seed}"
    folder = work / (name if name == "fibsem" else f"generated-{'x'.join(map(str, shape))}-{args.objects}-{args.seed}")
    ready = folder / "READY.json"
    levels = len(plan_pyramid(shape, voxel, PyramidOptions(labels=True).chunk_shape(shape)))
    if ready.exists():
        stored = json.loads(ready.read_text())
        if stored.get("key") == key:
            print(f"{name}: inputs reused from {folder}", flush=True)
            return Volume(name, description, shape, voxel, folder, folder / "labels.ome.zarr", folder / "precomputed",
                          {int(k): v for k, v in stored["segments"].items()}, levels, stored["prepare_s"])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    if name == "fibsem":
        import tifffile

        array = tifffile.imread(FIBSEM_TIFF)
        if array.shape != shape or array.dtype != np.uint32:
            raise BenchError(f"{FIBSEM_TIFF}: expected {shape} uint32, got {array.shape} {array.dtype}")
    else:
        raw = folder / "labels.u32"
        print(f"{name}: generating {shape} (z, y, x) uint32 ...", flush=True)
        seconds = generate_volume(raw, shape, args.objects, args.seed, args.cores)
        print(f"  generated in {seconds:.1f} s", flush=True)
        array = np.memmap(raw, dtype=np.uint32, mode="r", shape=shape)
    print(f"{name}: writing Lamella OME-Zarr labels and the precomputed segmentation for igneous ...", flush=True)
    write_pyramid(ArraySource(array), folder / "labels.ome.zarr", voxel_size=voxel,
                  options=PyramidOptions(labels=True, name="labels"))
    write_precomputed(array, folder / "precomputed", voxel)
    segments = label_statistics(array)
    del array
    prepare_s = time.perf_counter() - started
    ready.write_text(json.dumps({"key": key, "segments": segments, "prepare_s": prepare_s}))
    print(f"  {len(segments)} segments, prepared in {prepare_s:.1f} s", flush=True)
    return Volume(name, description, shape, voxel, folder, folder / "labels.ome.zarr", folder / "precomputed",
                  segments, levels, prepare_s)


# --------------------------------------------------------------------------- measurement


def _status(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon kB of one process (/proc/PID/status: cheap); empty once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = {}
    for key in ("VmRSS", "RssAnon"):
        match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
        if match:
            found[key] = int(match.group(1))
    return found


def _pss(pid: int) -> int:
    """Pss kB of one process (/proc/PID/smaps_rollup: walks its page tables, so read less often), 0 if gone."""
    try:
        match = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.MULTILINE)
    except OSError:
        return 0
    return int(match.group(1)) if match else 0


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (/proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (/proc/PID/task/TID/children)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    queue.extend(int(child) for child in (task / "children").read_text().split())
    return found


class TreeSampler(threading.Thread):
    """Samples the memory (sum over the process tree) and CPU time of a process and its descendants.

    Every ``interval`` s: the tree, each process's VmRSS and RssAnon and CPU time; every ``pss_every``
    samples, its PSS as well (shared pages split among the processes that map them). Cheap enough
    (about 1% of a core) not to disturb what it measures.
    """

    def __init__(self, pid: int, interval: float = 0.1, pss_every: int = 5) -> None:
        super().__init__(daemon=True)
        self.root = pid
        self.interval = interval
        self.pss_every = pss_every
        self.stop = threading.Event()
        self.peak = {"Rss": 0, "Pss": 0, "Anonymous": 0}
        self.peak_processes = 0
        self.pids: set[int] = set()
        self.cpu: dict[int, float] = {}

    def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            rss = anon = pss = alive = 0
            for pid in _descendants(self.root):
                values = _status(pid)
                if not values:
                    continue
                alive += 1
                self.pids.add(pid)
                rss += values.get("VmRSS", 0)
                anon += values.get("RssAnon", 0)
                if tick % self.pss_every == 0:
                    pss += _pss(pid)
                seconds = _cpu_seconds(pid)
                if seconds is not None:
                    self.cpu[pid] = seconds
            self.peak["Rss"] = max(self.peak["Rss"], rss)
            self.peak["Anonymous"] = max(self.peak["Anonymous"], anon)
            self.peak["Pss"] = max(self.peak["Pss"], pss)
            self.peak_processes = max(self.peak_processes, alive)
            tick += 1
            self.stop.wait(self.interval)


def wait_for_idle_cpu(limit_s: float, busy_fraction: float = 0.1, window_s: float = 2.0) -> float:
    """Wait (at most ``limit_s``) until the CPUs are less than ``busy_fraction`` busy; returns seconds waited."""
    cores = os.cpu_count() or 1
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = cpu_busy_seconds()
        time.sleep(window_s)
        if (cpu_busy_seconds() - before) / (window_s * cores) < busy_fraction:
            break
    return time.monotonic() - started


def warm_read(root: Path) -> None:
    """Read every file under ``root`` (into the page cache)."""
    for folder, _, names in os.walk(root):
        for name in names:
            with (Path(folder) / name).open("rb", buffering=0) as handle:
                while handle.read(16 << 20):
                    pass


def directory_bytes(path: Path, pattern: str | None = None) -> tuple[int, int]:
    """Total bytes of the files under ``path`` (whose name matches ``pattern``) and how many files."""
    total = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            if pattern is None or re.search(pattern, name):
                total += (Path(folder) / name).stat().st_size
                files += 1
    return total, files


@dataclass
class Tool:
    name: str
    label: str
    settings: str
    command: list[str]
    output: Path  # the mesh folder
    input: Path  # warmed before each run


def tools(volume: Volume, args: argparse.Namespace) -> list[Tool]:
    python = str(VENV_PYTHON)
    chosen = []
    if "lamella" in args.tools:
        output = volume.folder / "out-lamella"
        chosen.append(Tool(
            "lamella", "Lamella", f"build_meshes(threads={args.cores})",
            [python, str(PEER_SCRIPT), "lamella", str(volume.labels), str(output), "--threads", str(args.cores)],
            output, volume.labels,
        ))
    if "igneous" in args.tools:
        variants = [("igneous", "igneous", {})]
        if args.igneous_matched:  # Lamella's level-0 simplification error and vertex quantization
            matched = {"max_error": min(volume.voxel_nm) * MAX_ERROR, "vqb": 10}
            variants.append(("igneous-matched", "igneous=q", matched))
        for name, label, override in variants:
            settings = {**igneous_settings(volume, args), **override}
            flags = ["--parallel", str(args.cores), "--shape", ",".join(map(str, settings["shape"])),
                     "--nlod", str(settings["nlod"]), "--min-chunk", ",".join(map(str, settings["min_chunk"])),
                     "--draco-level", str(settings["draco_level"]), "--vqb", str(settings["vqb"]),
                     "--min-shards", str(settings["min_shards"]), "--max-error", str(settings["max_error"])]
            mesh_dir = "mesh" if name == "igneous" else f"mesh-{name}"
            chosen.append(Tool(
                name, label, " ".join(flags),
                [python, str(PEER_SCRIPT), "igneous", str(volume.layer), "--mesh-dir", mesh_dir, *flags],
                volume.layer / mesh_dir, volume.layer,
            ))
    return chosen


def igneous_settings(volume: Volume, args: argparse.Namespace) -> dict[str, Any]:
    xyz = volume.shape[::-1]
    if args.igneous_shape:
        shape = args.igneous_shape
    else:  # igneous' default 448³ unless that leaves cores idle: then the largest cube with 2 tasks per core
        shape = (TASK_EDGES[-1],) * 3
        for edge in TASK_EDGES:
            if math.prod(math.ceil(s / edge) for s in xyz) >= 2 * args.cores:
                shape = (edge,) * 3
                break
    return {
        "shape": tuple(shape),
        "nlod": args.igneous_nlod if args.igneous_nlod is not None else max(volume.levels - 1, 0),
        "min_chunk": tuple(args.igneous_min_chunk),
        "draco_level": args.igneous_draco_level,
        "vqb": args.igneous_vqb,
        "min_shards": args.igneous_min_shards if args.igneous_min_shards is not None else args.cores,
        "max_error": args.igneous_max_error,
    }


def clean(tool: Tool, volume: Volume) -> None:
    if tool.name == "lamella":
        shutil.rmtree(tool.output, ignore_errors=True)
    else:  # a fresh layer: no mesh folder, the info as written, no provenance of earlier runs
        shutil.rmtree(tool.output, ignore_errors=True)
        shutil.copy(volume.layer / "info.pristine", volume.layer / "info")
        with contextlib.suppress(FileNotFoundError):
            (volume.layer / "provenance").unlink()


def run_tool(tool: Tool, volume: Volume, args: argparse.Namespace) -> dict[str, Any]:
    clean(tool, volume)
    os.sync()
    warm_read(tool.input)
    waited = wait_for_idle_cpu(args.settle) if args.settle > 0 else 0.0
    print(f"{volume.name}: {tool.label} ({tool.settings}) ...", flush=True)
    busy_before = cpu_busy_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(tool.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=ROOT)
    sampler = TreeSampler(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.stop.set()
    sampler.join()
    elapsed = time.perf_counter() - started
    busy = cpu_busy_seconds() - busy_before
    row: dict[str, Any] = {"exit_code": process.returncode, "settled_s": waited, "process_s": elapsed}
    if process.returncode != 0:
        row["error"] = stderr.strip().splitlines()[-15:]
        print(f"  FAILED (exit {process.returncode}):\n    " + "\n    ".join(row["error"]), flush=True)
        return row
    result = json.loads(stdout.strip().splitlines()[-1])
    tree_cpu = sum(sampler.cpu.values())
    row.update(
        wall_s=result["wall_s"], stages=result["stages"], summary=result["summary"],
        throughput_vox_s=volume.voxels / result["wall_s"],
        peak_rss_mib=sampler.peak["Rss"] / 1024, peak_pss_mib=sampler.peak["Pss"] / 1024,
        peak_anon_mib=sampler.peak["Anonymous"] / 1024, processes=len(sampler.pids),
        processes_at_once=sampler.peak_processes, peak_rss_main_mib=result["peak_rss_self_mib"],
        cpu_s=tree_cpu, cpu_percent=100 * tree_cpu / elapsed,
        foreign_cpu_percent=max(0.0, 100 * (busy - tree_cpu) / (elapsed * (os.cpu_count() or 1))),
    )
    if tool.name == "lamella":
        row["mesh_bytes"], row["mesh_files"] = directory_bytes(tool.output)
    else:
        row["mesh_bytes"], row["mesh_files"] = directory_bytes(tool.output, r"(\.shard|^info)$")
        row["intermediate_bytes"], row["intermediate_files"] = directory_bytes(
            tool.output, r"(\.frags|\.spatial(\.gz)?|\.labels(\.gz)?)$")
    print(f"  {row['wall_s']:.2f} s ({', '.join(f'{k} {v:.1f} s' for k, v in row['stages'].items())}), "
          f"{row['throughput_vox_s'] / 1e6:.2f} Mvoxel/s, peak tree RSS {row['peak_rss_mib']:.0f} MiB "
          f"(PSS {row['peak_pss_mib']:.0f}, {row['processes_at_once']} processes at once), "
          f"meshes {row['mesh_bytes'] / (1 << 20):.1f} MiB in {row['mesh_files']} files, "
          f"CPU {row['cpu_percent']:.0f}%, other processes {row['foreign_cpu_percent']:.0f}% of the machine",
          flush=True)
    return row


def undisturbed_run(tool: Tool, volume: Volume, args: argparse.Namespace) -> dict[str, Any]:
    """A run, made again (up to --attempts) while other processes took more than --max-foreign % of the machine."""
    attempts = []
    for attempt in range(1, args.attempts + 1):
        attempts.append(run_tool(tool, volume, args))
        last = attempts[-1]
        if last["exit_code"] != 0 or last["foreign_cpu_percent"] <= args.max_foreign:
            break
        if attempt < args.attempts:
            print(f"  disturbed ({last['foreign_cpu_percent']:.0f}% > {args.max_foreign:g}% of the machine used by "
                  f"other processes): running {tool.label} again", flush=True)
    best = min(attempts, key=lambda a: (a["exit_code"] != 0, a.get("foreign_cpu_percent", 0.0)))
    if best["exit_code"] == 0 and best["foreign_cpu_percent"] > args.max_foreign:
        print(f"  warning: every {tool.label} run was disturbed; keeping the least disturbed "
              f"({best['foreign_cpu_percent']:.0f}%)", flush=True)
    return {**best, "attempts": len(attempts)}


# --------------------------------------------------------------------------- verification


def verify_meshes(tool: Tool, volume: Volume, count: int) -> dict[str, Any]:
    """Read a few segments' LOD-0 meshes back with cloud-volume; bounding boxes against the voxels'."""
    from cloudvolume import CloudVolume

    if tool.name == "igneous":
        layer = volume.layer
    else:  # a precomputed segmentation whose mesh folder is Lamella's output, for cloud-volume to read
        layer = volume.folder / "lamella-view"
        shutil.rmtree(layer, ignore_errors=True)
        layer.mkdir()
        info = json.loads((volume.layer / "info.pristine").read_text())
        info["mesh"] = "mesh"  # read as the layer's mesh source
        (layer / "info").write_text(json.dumps(info))
        (layer / "mesh").symlink_to(tool.output.resolve())
    problems: list[str] = []
    checked: list[dict[str, Any]] = []
    try:
        cv = CloudVolume(f"file://{layer}", progress=False)
        if cv.mesh.meta.info.get("@type") != "neuroglancer_multilod_draco" or "sharding" not in cv.mesh.meta.info:
            problems.append(f"mesh info is {cv.mesh.meta.info.get('@type')}, sharded: "
                            f"{'sharding' in cv.mesh.meta.info}")
        meshed = 0
        for shard in (tool.output).glob("*.shard"):
            meshed += len(cv.mesh.reader.list_labels(shard.name, path=cv.mesh.meta.mesh_path))
        by_size = sorted(volume.segments, key=lambda s: -volume.segments[s]["voxels"])
        picks = sorted({by_size[int(i)] for i in np.linspace(0, len(by_size) - 1, count)}, key=by_size.index)
        voxel = np.array(volume.voxel_nm[::-1])  # x, y, z
        for segment in picks:
            entry: dict[str, Any] = {"segment": segment, "voxels": volume.segments[segment]["voxels"]}
            try:
                manifest = cv.mesh.get_manifest(segment)
                entry["lods"] = int(manifest.num_lods) if manifest is not None else 0
                mesh = cv.mesh.get(segment, lod=0)
                mesh = mesh[segment] if isinstance(mesh, dict) else mesh
            except Exception as error:
                problems.append(f"segment {segment}: {type(error).__name__}: {error}")
                checked.append(entry)
                continue
            entry.update(vertices=len(mesh.vertices), faces=len(mesh.faces))
            if not len(mesh.faces):
                problems.append(f"segment {segment}: empty mesh")
            else:
                box = volume.segments[segment]["box_zyx"]
                expected_low = np.array(box[:3][::-1]) * voxel
                expected_high = np.array(box[3:][::-1]) * voxel
                low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
                deviation = max(np.max(np.abs(low - expected_low) / voxel),
                                np.max(np.abs(high - expected_high) / voxel))
                entry["bbox_deviation_voxels"] = round(float(deviation), 2)
                if deviation > 3:
                    problems.append(f"segment {segment}: mesh bounding box {deviation:.1f} voxels off the voxels'")
            checked.append(entry)
    except Exception as error:
        problems.append(f"{type(error).__name__}: {error}")
        meshed = -1
    return {"ok": not problems, "problems": problems, "segments_meshed": meshed,
            "segments_in_volume": len(volume.segments), "checked": checked}


# --------------------------------------------------------------------------- report


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sorted((r for r in runs if r["exit_code"] == 0), key=lambda r: r["wall_s"])
    if len(ok) < len(runs) or not ok:
        return next(r for r in runs if r["exit_code"] != 0)
    return ok[(len(ok) - 1) // 2 + (1 if len(ok) % 2 == 0 else 0)]  # even count: the slower middle


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'volume':<10} {'tool':<8} {'wall s':>8} {'Mvox/s':>8} {'tree RSS':>9} {'PSS':>7} {'main RSS':>9} "
              f"{'procs':>5} {'CPU s':>7} {'CPU %':>6} {'other %':>7} {'meshes MiB':>10} {'segments':>9} {'LODs':>9} "
              f"{'faces':>9}  verified")
    print(header)
    print("-" * len(header))
    for row in rows:
        if row.get("exit_code", 0) != 0 or "wall_s" not in row:
            print(f"{row['volume']:<10} {row['label']:<8} FAILED: {row.get('error', row.get('skipped'))}")
            continue
        check = row.get("verification", {})
        lods = sorted({c.get("lods", 0) for c in check.get("checked", [])})
        faces = sum(c.get("faces", 0) for c in check.get("checked", []))
        print(f"{row['volume']:<10} {row['label']:<8} {row['wall_s']:8.2f} {row['throughput_vox_s'] / 1e6:8.2f} "
              f"{row['peak_rss_mib']:9.0f} {row['peak_pss_mib']:7.0f} {row['peak_rss_main_mib']:9.0f} "
              f"{row['processes']:5d} {row['cpu_s']:7.1f} {row['cpu_percent']:6.0f} {row['foreign_cpu_percent']:7.0f} "
              f"{row['mesh_bytes'] / (1 << 20):10.2f} "
              f"{check.get('segments_meshed', -1):9d} {'-'.join(map(str, lods)) if lods else '?':>9} {faces:9d}  "
              f"{'yes' if check.get('ok') else 'NO: ' + '; '.join(check.get('problems', ['not checked']))[:200]}")
    print("(wall s = the mesh build alone, LODs and sharding included; Mvox/s = level-0 voxels per second; "
          "tree RSS / PSS = peak of the sum over the process tree, MiB, sampled every 0.1 s (PSS 0.5 s); "
          "main RSS = peak RSS (VmHWM) of the build process itself; procs = processes in the tree; "
          "CPU s = the tree's CPU time (sampled); CPU % = that per wall second (100 = one core); "
          "other % = CPU taken by other processes "
          "during the run, % of the machine; meshes = final mesh files (igneous: shards + info); "
          "segments = segments with a mesh; LODs = levels of detail of the segments checked; "
          "faces = their LOD-0 triangles, summed; igneous=q: igneous with Lamella's simplification error and "
          "quantization)")


def versions() -> dict[str, str]:
    found: dict[str, str] = {"python": platform.python_version()}
    for name in ("lamella", "igneous-pipeline", "cloud-volume", "zmesh", "DracoPy", "task-queue", "pathos",
                 "numpy", "tensorstore", "zarr"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found["lamella-git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                              capture_output=True, text=True, check=True).stdout.strip()
    return found





# --------------------------------------------------------------------------- main


def triple(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated integers, got {text!r}")
    return values  # type: ignore[return-value]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: the fibsem volume only, one run each")
    parser.add_argument("--volumes", nargs="+", choices=["fibsem", "generated"], default=None,
                        help="[default: both; fibsem with --quick]")
    parser.add_argument("--tools", nargs="+", choices=["lamella", "igneous"], default=["lamella", "igneous"])
    parser.add_argument("--repeat", type=int, default=None, help="runs per tool and volume [default 3, 1 with --quick]")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="Lamella's threads and igneous' worker processes [default: all, %(default)s]")
    parser.add_argument("--generated-shape", type=triple, default=GENERATED_SHAPE, help="z,y,x [%(default)s]")
    parser.add_argument("--objects", type=int, default=6000, help="objects in the generated volume")
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the inputs (and the last outputs) here and reuse them next time "
                             "[default: a temporary folder, removed]")
    parser.add_argument("--settle", type=float, default=None,
                        help="before each run, wait up to this many seconds for idle CPUs [30; 0 with --quick]")
    parser.add_argument("--attempts", type=int, default=None,
                        help="runs of a tool at most while other processes use more than --max-foreign %% of the "
                             "CPUs during a run; the least disturbed is kept [default 2, 1 with --quick]")
    parser.add_argument("--max-foreign", type=float, default=10.0,
                        help="%% of the machine's CPU time other processes may use during a run")
    parser.add_argument("--verify-segments", type=int, default=6, help="segments read back per output")
    parser.add_argument("--igneous-shape", type=triple, default=None,
                        help="forge task shape x,y,z [default: 448³ or the largest cube with 2 tasks per core]")
    parser.add_argument("--igneous-nlod", type=int, default=None,
                        help="extra levels of detail [default: Lamella's label pyramid levels - 1]")
    parser.add_argument("--igneous-min-chunk", type=triple, default=(64, 64, 64),
                        help="multires min_chunk_size [%(default)s; igneous' CLI default 256,256,256]")
    parser.add_argument("--igneous-draco-level", type=int, default=7, help="[igneous' default, %(default)s]")
    parser.add_argument("--igneous-matched", action="store_true",
                        help="also run igneous at Lamella's level-0 simplification error (half a voxel) and 10-bit "
                             "vertices (row igneous=q): the same mesh detail, not igneous' defaults")
    parser.add_argument("--igneous-vqb", type=int, choices=[10, 16], default=16,
                        help="vertex quantization bits [igneous' default, %(default)s; Lamella writes 10]")
    parser.add_argument("--igneous-min-shards", type=int, default=None, help="[default: --cores]")
    parser.add_argument("--igneous-max-error", type=float, default=40.0,
                        help="forge simplification max error, nm [igneous' default, %(default)s]")
    parser.add_argument("--results", type=Path, default=RESULTS_PATH)
    args = parser.parse_args(argv)
    args.volumes = args.volumes or (["fibsem"] if args.quick else ["fibsem", "generated"])
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.attempts = args.attempts or (1 if args.quick else 2)
    if args.settle is None:
        args.settle = 0.0 if args.quick else 30.0
    if args.quick and args.results == RESULTS_PATH:  # a smoke run never replaces a real measurement
        args.results = RESULTS_PATH.with_name("meshes_quick.json")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    print(f"machine: {info['cpu_count']} CPUs ({info['cpus_usable']} usable, {info['cpu_model']}), "
          f"{info['memory_gib']} GiB RAM, load {' '.join(info['loadavg_at_start'])}; both tools on {args.cores} cores")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lamella-mesh-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    volumes: list[Volume] = []
    try:
        for name in args.volumes:
            volume = prepare_volume(name, work, args)
            volumes.append(volume)
            chosen = tools(volume, args)
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in chosen}
            for round_number in range(args.repeat):
                shift = round_number % len(chosen)
                for tool in chosen[shift:] + chosen[:shift]:
                    if args.repeat > 1:
                        print(f"round {round_number + 1}/{args.repeat}: ", end="")
                    runs[tool.name].append(undisturbed_run(tool, volume, args))
                    if runs[tool.name][-1]["exit_code"] == 0:  # verify the output the table reports on
                        runs[tool.name][-1]["verification"] = verify_meshes(tool, volume, args.verify_segments) \
                            if round_number == args.repeat - 1 else None
            for tool in chosen:
                row = {"volume": name, "name": tool.name, "label": tool.label, "settings": tool.settings,
                       "command": tool.command, **median_run(runs[tool.name])}
                last = runs[tool.name][-1].get("verification")
                if last is not None:
                    row["verification"] = last
                row["runs"] = [{k: r.get(k) for k in ("wall_s", "peak_rss_mib", "peak_pss_mib", "cpu_percent",
                                                      "foreign_cpu_percent", "exit_code", "stages", "attempts")}
                               for r in runs[tool.name]]
                rows.append(row)
    finally:
        if args.work_dir:
            print(f"inputs and last outputs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print_table(rows)
    for row in rows:
        if len(row.get("runs", [])) > 1:
            walls = ", ".join(f"{r['wall_s']:.2f}" if r.get("wall_s") else "failed" for r in row["runs"])
            print(f"  {row['volume']} {row['label']}: wall s of the {len(row['runs'])} runs {walls} (median reported)")
    found: dict[str, dict[str, float | None]] = {}
    print()
    for volume in volumes:
        by_tool = {r["name"]: r for r in rows if r["volume"] == volume.name and r.get("exit_code") == 0}
        lamella = by_tool.get("lamella")
        for peer, label in (("igneous", "igneous"), ("igneous-matched", "igneous=q")):
            other = by_tool.get(peer)
            if lamella is None or other is None:
                continue
            key = volume.name if peer == "igneous" else f"{volume.name} vs {label}"
            found[key] = {
                "throughput": lamella["throughput_vox_s"] / other["throughput_vox_s"],
                "peak_rss": lamella["peak_rss_mib"] / other["peak_rss_mib"],
                "peak_pss": lamella["peak_pss_mib"] / other["peak_pss_mib"],
                "mesh_bytes": lamella["mesh_bytes"] / other["mesh_bytes"] if other["mesh_bytes"] else None,
                "cpu_time": other["cpu_s"] / lamella["cpu_s"] if lamella["cpu_s"] else None,
            }
            print(f"{volume.name} ({volume.shape[2]} x {volume.shape[1]} x {volume.shape[0]}, "
                  f"{volume.voxels / 1e6:.1f} Mvoxels, {len(volume.segments)} segments), Lamella vs {label}:")
            print(ratio_line(f"throughput (Lamella / {label})", found[key]["throughput"], TARGET_THROUGHPUT_RATIO,
                             "higher", width=44))
            print(ratio_line(f"peak tree RSS (Lamella / {label})", found[key]["peak_rss"], TARGET_MEMORY_RATIO,
                             "lower", width=44))
            print(ratio_line(f"peak tree PSS (Lamella / {label})", found[key]["peak_pss"], TARGET_MEMORY_RATIO,
                             "lower", width=44))
            size = found[key]["mesh_bytes"]
            if size:
                print(f"  {f'mesh bytes (Lamella / {label})':<44} {size:7.2f}x")
            if found[key]["cpu_time"]:  # steadier than wall time when other processes share the machine
                print(f"  {f'CPU seconds ({label} / Lamella)':<44} {found[key]['cpu_time']:7.2f}x")
    failed = [f"{r['volume']} {r['label']}" for r in rows
              if r.get("exit_code") != 0 or not (r.get("verification") or {}).get("ok")]
    if failed:
        print(f"\nFAILURE: run failed or output not verified for {', '.join(failed)}")
    report = {
        "benchmark": "meshes",
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "quick": args.quick,
        "volumes": [{"name": v.name, "description": v.description, "shape_zyx": list(v.shape),
                     "voxel_nm_zyx": list(v.voxel_nm), "voxels": v.voxels, "segments": len(v.segments),
                     "lamella_pyramid_levels": v.levels, "prepare_s": v.prepare_s} for v in volumes],
        "cores": args.cores,
        "machine": info,
        "versions": versions(),
        "runs": rows,
        "ratios": found,
        "targets": {"throughput_ratio_min": TARGET_THROUGHPUT_RATIO, "memory_ratio_max": TARGET_MEMORY_RATIO},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nresults written to {args.results}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
