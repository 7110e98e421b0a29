#!/usr/bin/env python
"""One mesh build for benchmarks/meshes.py, run in a fresh process per measurement.

* ``lamella LABELS.ome.zarr DEST``: ``tiling.meshes.build_meshes`` on Lamella's OME-Zarr labels,
  with ``--threads`` threads.
* ``igneous LAYER_DIR``: igneous' two local steps on a precomputed segmentation (cloud-volume,
  file://): ``create_meshing_tasks(sharded=True, spatial_index=True)`` (marching cubes and
  simplification per task cutout, fragments as mapbuffers), then
  ``create_sharded_multires_mesh_tasks`` (fragments of a segment gathered, levels of detail by
  simplifying the merged mesh, octree fragments, Draco, shard files), each run by
  ``taskqueue.LocalTaskQueue(parallel=N)`` (a pathos process pool of N spawned workers), as
  ``igneous -p N mesh forge --sharded`` and ``igneous -p N mesh merge-sharded`` do.

Only the build is timed (imports are not); the process's own peak RSS (VmHWM) and CPU time go into
the JSON line printed last on stdout. The caller samples the memory of the whole process tree.

Usage: mesh_peer.py lamella LABELS.ome.zarr DEST [--threads N]
       mesh_peer.py igneous LAYER_DIR [--parallel N] [--shape X,Y,Z] [--nlod N] ...
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any


def triple(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z, got {text!r}")
    return values  # type: ignore[return-value]


def run_lamella(args: argparse.Namespace) -> dict[str, Any]:
    import tiling.omezarr  # noqa: F401  (an import, untimed as igneous' are: the build opens the labels with it)
    from tiling.meshes import build_meshes

    started = time.perf_counter()
    summary = build_meshes(str(args.labels), Path(args.destination), threads=args.threads, show_progress=False)
    wall = time.perf_counter() - started
    found = {name: getattr(summary, name) for name in ("segments", "fragments", "bytes") if hasattr(summary, name)}
    extra = {k: v for k, v in vars(summary).items() if k not in found and isinstance(v, (int, float, str))} \
        if hasattr(summary, "__dict__") else {}
    return {"wall_s": wall, "stages": {"build_meshes": wall}, "summary": {**found, **extra}}


def run_igneous(args: argparse.Namespace) -> dict[str, Any]:
    import igneous.task_creation as tc
    from taskqueue import LocalTaskQueue

    layer = f"file://{Path(args.layer).resolve()}"
    stages: dict[str, float] = {}
    started = time.perf_counter()
    queue = LocalTaskQueue(parallel=args.parallel, progress=False)
    # (1) forge: marching cubes + simplification per task cutout (zmesh), fragments per cutout.
    tasks = tc.create_meshing_tasks(
        layer, mip=0, shape=args.shape, simplification=True, max_simplification_error=args.max_error,
        mesh_dir=args.mesh_dir, sharded=True, spatial_index=True, closed_dataset_edges=True,
    )
    forge_tasks = len(tasks)
    queue.insert(tasks)
    queue.execute(progress=False)
    stages["forge"] = time.perf_counter() - started
    # (2) merge: per shard, gather fragments, LODs by simplification, octree split, Draco, shard files.
    mark = time.perf_counter()
    tasks = tc.create_sharded_multires_mesh_tasks(
        layer, num_lod=args.nlod, draco_compression_level=args.draco_level, vertex_quantization_bits=args.vqb,
        min_chunk_size=args.min_chunk, max_labels_per_shard=args.max_labels_per_shard, min_shards=args.min_shards,
        mesh_dir=args.mesh_dir, progress=False,
    )
    merge_tasks = len(tasks)
    queue.insert(tasks)
    queue.execute(progress=False)
    stages["merge"] = time.perf_counter() - mark
    wall = time.perf_counter() - started
    return {"wall_s": wall, "stages": stages, "summary": {"forge_tasks": forge_tasks, "merge_tasks": merge_tasks}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="tool", required=True)
    lamella = sub.add_parser("lamella")
    lamella.add_argument("labels", type=Path)
    lamella.add_argument("destination", type=Path)
    lamella.add_argument("--threads", type=int, default=2)
    igneous = sub.add_parser("igneous")
    igneous.add_argument("layer", type=Path)
    igneous.add_argument("--mesh-dir", default="mesh")
    igneous.add_argument("--parallel", type=int, default=2)
    igneous.add_argument("--shape", type=triple, default=(448, 448, 448), help="forge task shape, voxels x,y,z")
    igneous.add_argument("--max-error", type=float, default=40.0, help="simplification error, physical units")
    igneous.add_argument("--nlod", type=int, default=1, help="levels of detail beyond the first")
    igneous.add_argument("--min-chunk", type=triple, default=(256, 256, 256))
    igneous.add_argument("--draco-level", type=int, default=7)
    igneous.add_argument("--vqb", type=int, default=16, choices=[10, 16], help="vertex quantization bits")
    igneous.add_argument("--max-labels-per-shard", type=int, default=1000)
    igneous.add_argument("--min-shards", type=int, default=1)
    args = parser.parse_args(argv)
    result = run_lamella(args) if args.tool == "lamella" else run_igneous(args)
    own = resource.getrusage(resource.RUSAGE_SELF)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a process started by a large parent
    # (subprocess uses vfork) reports the parent's peak; VmHWM belongs to this process's own memory.
    peak = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    result.update(
        peak_rss_self_mib=int(peak.group(1)) / 1024 if peak else None, cpu_self_s=own.ru_utime + own.ru_stime,
    )
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
