#!/usr/bin/env python
"""Latency of thin-plate-spline resampled chunks beside plain precomputed chunks, in one run.

Makes the demo (EM 512x512x256 uint8 at 8 nm; fluorescence 200x200x56 uint16 at 24x24x40 nm),
starts ``lamella serve`` with one process, registers the fluorescence by a thin-plate spline
through 16 landmark pairs (the demo's affine plus a smooth bend, so the spline is not affine),
then requests, one at a time like a single viewer, every 64^3 level-0 chunk of:

* the warped fluorescence on the EM grid (uint16, raw + gzip): cold (computed) and cached;
* the EM itself (uint8, JPEG): cold (read + encode) and cached;
* the stored fluorescence in its own grid (uint16, raw + gzip, 64^3 chunks): cold and cached.

Cold means the first request of that chunk since the server started; the tensorstore cache
is warm only for what earlier chunks already read. Prints p50/p99 in ms and ratios.

Usage: .venv/bin/python benchmarks/tps_chunks.py [--chunks N] [--keep]
Results: benchmarks/results/tps_chunks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from tiling.demo import fluorescence_affine
from tiling.transforms import apply_affine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LAMELLA = [sys.executable, "-m", "viewer.cli"]


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([*LAMELLA, "serve", "--data-dir", str(data_dir), "--port", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    match = re.search(r"(http://[\d.]+:\d+)/", process.stdout.readline())
    if match is None:
        process.kill()
        raise SystemExit("lamella serve did not start")
    url = match.group(1)
    for _ in range(300):
        try:
            if requests.get(url + "/api/datasets", timeout=5).ok:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("lamella serve did not answer")


def chunk_names(info: dict[str, Any], limit: int) -> list[str]:
    scale = info["scales"][0]
    size, chunk, offset = scale["size"], scale["chunk_sizes"][0], scale["voxel_offset"]
    names = []
    for z in range(0, size[2], chunk[2]):
        for y in range(0, size[1], chunk[1]):
            for x in range(0, size[0], chunk[0]):
                begin = [x + offset[0], y + offset[1], z + offset[2]]
                end = [min(b + c, o + s) for b, c, o, s in zip(begin, chunk, offset, size, strict=True)]
                names.append("_".join(f"{b}-{e}" for b, e in zip(begin, end, strict=True)))
    step = max(1, len(names) // limit)
    return names[::step][:limit]


def timed(session: requests.Session, url: str) -> float:
    start = time.perf_counter()
    response = session.get(url, headers={"Accept-Encoding": "gzip"}, timeout=60)
    response.raise_for_status()
    _ = response.content
    return (time.perf_counter() - start) * 1000


def measure(session: requests.Session, base: str, limit: int) -> dict[str, Any]:
    info = session.get(base + "/info", timeout=60).json()
    names = chunk_names(info, limit)
    cold = [timed(session, f"{base}/0/{name}") for name in names]
    cached = [timed(session, f"{base}/0/{name}") for name in names]
    scale = info["scales"][0]
    return {
        "chunks": len(names),
        "chunk_size": scale["chunk_sizes"][0],
        "encoding": scale["encoding"],
        "data_type": info["data_type"],
        "cold_p50_ms": float(np.percentile(cold, 50)),
        "cold_p99_ms": float(np.percentile(cold, 99)),
        "cached_p50_ms": float(np.percentile(cached, 50)),
        "cached_p99_ms": float(np.percentile(cached, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=128, help="chunks per payload (spread over the volume)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="lamella-tps-bench-"))
    process = None
    try:
        print("making the demo …", flush=True)
        subprocess.run([*LAMELLA, "demo", "--data-dir", str(tmp)], cwd=ROOT, check=True, capture_output=True)
        process, url = start_server(tmp)
        rng = np.random.default_rng(3)
        moving = rng.uniform([0, 0, 0], [4800, 4800, 2240], (16, 3))
        reference = apply_affine(fluorescence_affine(), moving)
        reference[:, 0] += 60 * np.sin(reference[:, 1] / 900)  # a smooth non-linear bend (nm)
        answer = requests.post(f"{url}/api/datasets/demo/images/fluorescence/landmarks", timeout=60,
                               json={"moving": moving.tolist(), "reference": reference.tolist(), "fit": "tps"})
        answer.raise_for_status()
        transform_id = answer.json()["transform"]["id"]
        image = f"{url}/api/datasets/demo/images"
        session = requests.Session()
        results = {
            "tps_warped": measure(session, f"{image}/fluorescence/warped/{transform_id}/precomputed", args.chunks),
            "plain_em_jpeg": measure(session, f"{image}/em/precomputed", args.chunks),
            "plain_fluorescence_raw": measure(session, f"{image}/fluorescence/precomputed", args.chunks),
        }
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'payload':26} {'chunks':>6} {'cold p50':>9} {'cold p99':>9} {'cached p50':>11} {'cached p99':>11}")
    for name, row in results.items():
        print(f"{name:26} {row['chunks']:>6} {row['cold_p50_ms']:>8.1f}  {row['cold_p99_ms']:>8.1f}  "
              f"{row['cached_p50_ms']:>10.2f}  {row['cached_p99_ms']:>10.2f}")
    warped = results["tps_warped"]
    for baseline in ("plain_em_jpeg", "plain_fluorescence_raw"):
        plain = results[baseline]
        print(f"tps / {baseline}: cold p50 {warped['cold_p50_ms'] / plain['cold_p50_ms']:.1f}x, "
              f"cached p50 {warped['cached_p50_ms'] / plain['cached_p50_ms']:.1f}x")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    document = {"results": results, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    (out / "tps_chunks.json").write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
