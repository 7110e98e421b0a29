#!/usr/bin/env python
"""One peer conversion for benchmarks/import_pyramid.py, run in a fresh process per measurement.

TIFF stack to sharded OME-Zarr pyramid with ome-zarr-py (``ome_zarr.writer.write_image``) or
ngff-zarr (``to_multiscales`` + ``to_ngff_zarr``), each with the settings that suit a large
vEM stack best: a lazy dask array over the TIFF (nothing is read up front), inner
chunks and shards as Lamella writes them, zstd level 3, a mean (2x2x2 block average)
reduction like Lamella's, and dask's threaded scheduler on every core.

Prints one JSON line (phase timings) on stdout; all else goes to stderr.

Usage: import_peer.py {ome-zarr,ngff-zarr} STACK.tif OUT.ome.zarr --levels N [options]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import tifffile
import zarr
from zarr.codecs import ZstdCodec

VOXEL_NM = 8.0


def level_geometry(shape: tuple[int, ...], levels: int, chunk: int, shard_chunks: int) -> list[dict[str, Any]]:
    """Per level: shape, inner chunk and shard shape, halving every axis (as Lamella does for isotropic voxels)."""
    result = []
    current = shape
    for _ in range(levels):
        inner = tuple(max(1, min(chunk, s)) for s in current)
        shard = tuple(min(c * shard_chunks, -(-s // c) * c) for c, s in zip(inner, current, strict=True))
        result.append({"shape": current, "chunks": inner, "shards": shard})
        current = tuple(max(1, s // 2) for s in current)
    return result


def open_input(path: Path, mode: str, block: tuple[int, ...]) -> da.Array:
    """The stack as a lazy dask array: a read-only memory map, or tifffile's Zarr view of the pages."""
    if mode == "memmap":
        return da.from_array(tifffile.memmap(path, mode="r"), chunks=block, name="tiff-stack")
    store = tifffile.imread(path, aszarr=True)
    return da.from_zarr(zarr.open_array(store, mode="r")).rechunk(block)


def run_ome_zarr(args: argparse.Namespace) -> dict[str, Any]:
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_image

    started = time.perf_counter()
    geometry = level_geometry(args.shape, args.levels, args.chunk, args.shard_chunks)
    image = open_input(args.stack, args.input, geometry[0]["shards"])
    fmt = FormatV05() if args.ome_version == "0.5" else FormatV04()
    if args.ome_version == "0.5":
        storage: list[dict[str, Any]] = [
            {"chunks": g["chunks"], "shards": g["shards"], "compressors": [ZstdCodec(level=args.zstd_level)]}
            for g in geometry
        ]
    else:
        from numcodecs import Zstd

        storage = [{"chunks": g["chunks"], "compressor": Zstd(level=args.zstd_level)} for g in geometry]
    factors = [{"z": 2**i, "y": 2**i, "x": 2**i} for i in range(1, args.levels)]
    built = time.perf_counter()
    write_image(
        image,
        str(args.output),
        scale_factors=factors,
        method=Methods(args.method),
        fmt=fmt,
        axes="zyx",
        storage_options=storage,
        scale={"z": VOXEL_NM, "y": VOXEL_NM, "x": VOXEL_NM},
        axes_units={"z": "nanometer", "y": "nanometer", "x": "nanometer"},
        name="image",
    )
    done = time.perf_counter()
    return {"setup_s": built - started, "write_s": done - built}


def run_ngff_zarr(args: argparse.Namespace) -> dict[str, Any]:
    import ngff_zarr as nz

    started = time.perf_counter()
    geometry = level_geometry(args.shape, args.levels, args.chunk, args.shard_chunks)
    data = open_input(args.stack, args.input, geometry[0]["shards"])
    image = nz.to_ngff_image(
        data,
        dims=["z", "y", "x"],
        scale={"z": VOXEL_NM, "y": VOXEL_NM, "x": VOXEL_NM},
        translation={"z": 0.0, "y": 0.0, "x": 0.0},
        name="image",
        axes_units={"z": "nanometer", "y": "nanometer", "x": "nanometer"},
    )
    factors = [{"z": 2**i, "y": 2**i, "x": 2**i} for i in range(1, args.levels)]
    multiscales = nz.to_multiscales(image, scale_factors=factors, method=nz.Methods(args.method), chunks=args.chunk)
    built = time.perf_counter()
    kwargs: dict[str, Any] = {}
    if args.ome_version == "0.5":
        kwargs["compressors"] = [ZstdCodec(level=args.zstd_level)]
        kwargs["chunks_per_shard"] = args.shard_chunks
    else:
        from numcodecs import Zstd

        kwargs["compressor"] = Zstd(level=args.zstd_level)
    nz.to_ngff_zarr(str(args.output), multiscales, version=args.ome_version, **kwargs)
    done = time.perf_counter()
    return {"setup_s": built - started, "write_s": done - built}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peer", choices=["ome-zarr", "ngff-zarr"])
    parser.add_argument("stack", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--levels", type=int, required=True, help="levels in all, full resolution included")
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--shard-chunks", type=int, default=4, help="inner chunks per shard edge")
    parser.add_argument("--zstd-level", type=int, default=3)
    parser.add_argument("--ome-version", choices=["0.5", "0.4"], default="0.5")
    parser.add_argument("--method", default=None, help="downsampling method (the peer's enum value)")
    parser.add_argument("--input", choices=["aszarr", "memmap"], default="aszarr")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    with tifffile.TiffFile(args.stack) as tiff:
        args.shape = tuple(int(s) for s in tiff.series[0].shape)
    if args.method is None:
        args.method = "local_mean" if args.peer == "ome-zarr" else "dask_bin_shrink"
    dask.config.set(scheduler="threads", num_workers=args.threads)
    np.seterr(all="ignore")
    runner = run_ome_zarr if args.peer == "ome-zarr" else run_ngff_zarr
    timings = runner(args)
    timings.update(method=args.method, input=args.input, threads=args.threads, ome_version=args.ome_version)
    sys.stdout.write(json.dumps(timings) + "\n")


if __name__ == "__main__":
    main()
