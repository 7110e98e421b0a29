"""Multi-resolution surface meshes of a label image, as Neuroglancer's ``neuroglancer_multilod_draco``.

Format: upstream ``src/datasource/precomputed/meshes.md`` (sharded storage, ``sharded.md``). What is built:

- **Stored model space** is level-0 voxels with voxel ``i`` spanning ``[i, i + 1)`` (the precomputed corner
  frame); the info's ``transform`` scales it to nanometres, so meshes land on the segmentation layer.
- **Levels of detail.** Level of detail ``l`` is meshed from the pyramid level whose largest downsampling
  factor is ``2 ** l`` (mode-downsampled labels: ``tiling.pyramid``), in octree nodes of ``CHUNK * 2 ** l``
  level-0 voxels. Levels stop when one node covers the volume or the pyramid runs out.
- **Blocks without seams.** Each node is meshed on its own (zmesh's marching cubes, then pyfqmr's quadric
  simplification) from its voxels plus one voxel on the high side of each axis, the volume padded with
  background, so every surface is made exactly once, each object is closed, and two nodes that share a face
  share its vertices exactly (the simplifier leaves the vertices of open borders alone). Nodes of a coarser
  level are meshed as 2x2x2 sub-blocks, which is the partition Neuroglancer requires above level 0.
- **Simplification error.** The simplifier's threshold on an edge collapse's quadric error (the sum of squared
  distances of the new vertex to the planes of the faces merged into it) rises over its passes up to
  ``MAX_ERROR ** 2``, so no surface moves further than ``MAX_ERROR`` voxels from the planes it replaces. A
  surface the collapses left non-manifold (an edge of more than two triangles) is simplified again.
- **Vertices** are quantized to ``QUANTIZATION_BITS`` within their node and Draco-encoded so that the decoded
  integers are those values (Draco's own quantization set to the identity, as the format needs).
- **Octree.** A segment's nodes at each level are written in Z-curve order, with an empty node wherever a finer
  node would otherwise have no parent; a segment's levels stop at its coarsest non-empty one.

The build runs in two passes, in bounded memory. Pass one meshes work units (a few nodes of one level each,
coarsest level first, so the largest units do not come last) in worker processes (meshing holds the GIL), which
get each unit's labels from the build and so never load tensorstore, or on a Dask cluster, whose workers read
their own; each unit writes one part file, so an interrupted build resumes where it stopped. Pass two sorts the
fragment table (about 40 bytes per fragment), sizes the shards and writes them one at a time from the part files.
The finished folder replaces the previous build in one rename; its ``build`` names it, so URLs of one build
never change meaning.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import mmap
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tiling.errors import ImportProblem, MeshesNotFound
from tiling.uint64_sharded import ShardSizer, ShardSpec, ShardWriter

if TYPE_CHECKING:  # workers mesh arrays the build sends them and need not load tensorstore
    from tiling.omezarr import Volume
    from tiling.stores import LocalStore

CHUNK = 64  # level-0 voxels along each axis of a level-0 octree node
UNIT_NODES = 2  # a work unit is up to UNIT_NODES ** 3 nodes of one level (128³ voxels and a margin)
QUANTIZATION_BITS = 10
MAX_ERROR = 0.5  # the simplifier may move a surface by up to this many voxels of the level it meshes
REDUCTION = 10  # and aims at this factor fewer triangles (it stops at MAX_ERROR first)
PASSES = 15  # simplifier passes; its collapse threshold rises as pass ** GROWTH up to MAX_ERROR ** 2 in the last
GROWTH = 3
DRACO_LEVEL = 7  # Draco compression level (0-10): smaller files, encode time is small beside meshing
SHARD_BYTES = 64 << 20  # what one shard file may hold, where the segment ids allow
MESH_DIR = "meshes"
INFO = "info"
_FRAGMENT = np.dtype([("id", "<u8"), ("x", "<u4"), ("y", "<u4"), ("z", "<u4"), ("size", "<u4")])
_TABLE = np.dtype([("id", "<u8"), ("lod", "u1"), ("morton", "<u8"), ("x", "<u4"), ("y", "<u4"), ("z", "<u4"),
                   ("size", "<u4"), ("part", "<u4"), ("offset", "<u8")])


class MeshBuildError(ImportProblem):
    """A label image that cannot be meshed (not integer labels, or levels that do not halve)."""


@dataclass(frozen=True)
class Lod:
    """One level of detail: the pyramid level it is meshed from and its nodes in that level's voxels."""

    lod: int
    level: int
    factor: tuple[int, int, int]  # level-0 voxels per voxel of ``level``, (x, y, z)
    node: tuple[int, int, int]  # a node's edge in voxels of ``level``, (x, y, z)
    grid: tuple[int, int, int]  # nodes along (x, y, z)


@dataclass(frozen=True)
class MeshPlan:
    uri: str
    shape: tuple[int, int, int]  # level 0, (x, y, z)
    resolution: tuple[float, float, float]  # nm, (x, y, z)
    offset: tuple[int, int, int]  # the precomputed voxel_offset of level 0
    lods: tuple[Lod, ...]

    def units(self) -> list[tuple[int, tuple[int, int, int]]]:
        """Every work unit: (level of detail, which is also its index in ``lods``, its first node's grid position)."""
        return [(lod.lod, start) for lod in self.lods for start in _unit_starts(lod.grid)]

    def info(self, spec: ShardSpec, build: str) -> dict[str, Any]:
        rx, ry, rz = self.resolution
        ox, oy, oz = (o * r for o, r in zip(self.offset, self.resolution, strict=True))
        return {
            "@type": "neuroglancer_multilod_draco",
            "vertex_quantization_bits": QUANTIZATION_BITS,
            "transform": [rx, 0, 0, ox, 0, ry, 0, oy, 0, 0, rz, oz],
            "lod_scale_multiplier": 1.0,
            "sharding": spec.info(),
            "build": build,
        }


@dataclass(frozen=True)
class MeshSummary:
    build: str
    segments: int
    fragments: int
    lods: int
    bytes: int
    seconds: float


def _unit_starts(grid: tuple[int, int, int]) -> Iterator[tuple[int, int, int]]:
    for z in range(0, grid[2], UNIT_NODES):
        for y in range(0, grid[1], UNIT_NODES):
            for x in range(0, grid[0], UNIT_NODES):
                yield (x, y, z)


def _open(uri: str) -> Volume:
    from tiling.omezarr import make_context, open_volume

    return asyncio.run(open_volume(uri, make_context(64 << 20)))


def _open_in_worker(uri: str) -> Volume:
    """A worker's opened labels, kept for its next units while the image's metadata file is unchanged."""
    stamp = 0
    for name in ("zarr.json", ".zattrs"):
        try:
            stamp = os.stat(Path(uri) / name).st_mtime_ns
            break
        except OSError:
            continue
    return _opened(uri, stamp)


@functools.lru_cache(maxsize=2)
def _opened(uri: str, stamp: int) -> Volume:
    return _open(uri)


def plan_meshes(uri: str) -> MeshPlan:
    """The levels of detail of the label image at ``uri`` and their octree grids.

    Raises:
        MeshBuildError: the image is not integer labels, or its levels are not downsampled by powers of two.
    """
    volume = _open(uri)
    if volume.dtype.kind not in "ui" or volume.num_channels != 1:
        raise MeshBuildError(f"{uri}: meshes need one channel of integer labels, not {volume.num_channels} "
                             f"channel(s) of {volume.dtype}")
    base = volume.geometry[0]
    shape = tuple(reversed(base.shape))
    resolution = tuple(reversed(base.voxel_size_nm))
    offset = tuple(round(t / s) for t, s in zip(reversed(base.translation_nm), resolution, strict=True))
    by_factor: dict[int, tuple[int, tuple[int, int, int]]] = {}
    for geometry in volume.geometry:
        ratios = [s / b for s, b in zip(reversed(geometry.voxel_size_nm), resolution, strict=True)]
        factor = tuple(round(r) for r in ratios)
        if any(abs(r - f) > 1e-3 * f or f & (f - 1) for r, f in zip(ratios, factor, strict=True)):
            raise MeshBuildError(f"{uri}: level {geometry.index} is not a power-of-two downsampling of level 0 "
                                 f"(factors {[round(r, 3) for r in ratios]})")
        by_factor.setdefault(max(factor), (geometry.index, factor))  # type: ignore[arg-type]
    lods = []
    for lod in range(64):
        found = by_factor.get(1 << lod)
        if found is None:
            break
        level, factor = found
        node = tuple(CHUNK * (1 << lod) // f for f in factor)
        size = [-(-n // f) for n, f in zip(shape, factor, strict=True)]
        grid = tuple(-(-(n + 1) // b) for n, b in zip(size, node, strict=True))
        lods.append(Lod(lod, level, factor, node, grid))  # type: ignore[arg-type]
        if grid == (1, 1, 1):
            break
    return MeshPlan(uri, shape, resolution, offset, tuple(lods))  # type: ignore[arg-type]


def _read_padded(volume: Volume, level: int, low: list[int], high: list[int]) -> np.ndarray:
    """Voxels ``[low, high)`` of ``level`` (x, y, z) in padded coordinates (index + 1), background outside;
    as an (x, y, z) Fortran-ordered array, the layout zmesh reads without a copy."""
    shape = tuple(reversed(volume.geometry[level].shape))
    out = np.zeros([h - lo for lo, h in zip(low, high, strict=True)], dtype=volume.dtype, order="F")
    inner_low = [max(lo - 1, 0) for lo in low]
    inner_high = [min(h - 1, n) for h, n in zip(high, shape, strict=True)]
    if any(h <= lo for lo, h in zip(inner_low, inner_high, strict=True)):
        return out
    zyx = tuple(slice(lo, h) for lo, h in zip(reversed(inner_low), reversed(inner_high), strict=True))
    data = asyncio.run(volume.read(level, zyx))[0]  # type: ignore[arg-type]
    where = tuple(slice(lo + 1 - a, h + 1 - a) for lo, h, a in zip(inner_low, inner_high, low, strict=True))
    out[where] = data.T
    return out


def _encode(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    import DracoPy

    top = (1 << QUANTIZATION_BITS) - 1
    return DracoPy.encode(vertices, faces, quantization_bits=QUANTIZATION_BITS, quantization_range=top,
                          quantization_origin=(0.0, 0.0, 0.0), compression_level=DRACO_LEVEL)


def _collapse(vertices: np.ndarray, faces: np.ndarray, error: float) -> tuple[np.ndarray, np.ndarray]:
    """pyfqmr's edge collapses within ``error`` voxels, the vertices of open borders left where they are."""
    import pyfqmr

    offset = 3  # pyfqmr's K: the threshold of pass i is alpha * (i + K) ** aggressiveness
    simplifier = pyfqmr.Simplify()
    simplifier.setMesh(vertices, faces)
    simplifier.simplify_mesh(target_count=len(faces) // REDUCTION, max_iterations=PASSES, aggressiveness=GROWTH,
                             alpha=error ** 2 / (PASSES - 1 + offset) ** GROWTH, K=offset,
                             preserve_border=True, verbose=False)
    simplified, triangles, _ = simplifier.getMesh()
    return simplified, triangles


def _keys(triples: np.ndarray, count: int) -> np.ndarray:
    """One key per row of vertex indices, equal for rows that hold the same vertices in any order: an integer,
    or the row's bytes where ``count`` vertices are too many to number every row in 63 bits."""
    ordered = np.sort(triples, axis=1).astype(np.int64)
    if count ** ordered.shape[1] >= 1 << 63:
        ordered = np.ascontiguousarray(ordered)
        return ordered.view(np.dtype((np.void, ordered.itemsize * ordered.shape[1]))).ravel()
    key = ordered[:, 0]
    for column in range(1, ordered.shape[1]):
        key = key * count + ordered[:, column]
    return key


def _manifold(faces: np.ndarray, count: int) -> np.ndarray | None:
    """``faces`` without the flaps an edge collapse can leave (a triangle and its reverse on top of each other,
    both dropped), or None if an edge still borders more than two triangles."""
    keys = _keys(faces, count)
    order = np.argsort(keys, kind="stable")
    same = keys[order[1:]] == keys[order[:-1]]
    if same.any():
        twin = np.zeros(len(faces), dtype=bool)
        twin[order[1:][same]] = twin[order[:-1][same]] = True
        faces = faces[~twin]
    edges = np.sort(_keys(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), count))
    return None if len(edges) > 2 and bool((edges[2:] == edges[:-2]).any()) else faces


def _simplify(mesher: Any, segment: int) -> tuple[np.ndarray, np.ndarray]:
    """The surface of ``segment`` in the mesher's block, simplified within ``MAX_ERROR`` voxels.

    pyfqmr (faster than zmesh's simplifier) does not check that a collapse keeps the surface a manifold; where
    it did not, half the error is tried, then zmesh's own (slower) simplifier. A surface no simplification
    keeps (an object of a few voxels) stays as marching cubes made it."""
    mesh = mesher.get(segment, normals=False)
    if not len(mesh.faces):
        return mesh.vertices, mesh.faces
    for error in (MAX_ERROR, MAX_ERROR / 2):
        vertices, faces = _collapse(mesh.vertices, mesh.faces, error)
        kept = _manifold(faces, len(vertices))
        if kept is not None and len(kept):
            return vertices, kept
    simplified = mesher.get(segment, normals=False, reduction_factor=REDUCTION, max_error=MAX_ERROR)
    return (simplified.vertices, simplified.faces) if len(simplified.faces) else (mesh.vertices, mesh.faces)


def _mesh_node(mesher: Any, labels: np.ndarray, node: tuple[int, int, int], split: bool) -> dict[int, bytes]:
    """Draco fragments of every segment in one node (``labels`` holds its voxels and the high margin)."""
    top = (1 << QUANTIZATION_BITS) - 1
    scale = np.array([top / n for n in node], dtype=np.float64)
    parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    halves = [(0, n // 2, n) if split else (0, n) for n in node]
    for x0, x1 in itertools.pairwise(halves[0]):
        for y0, y1 in itertools.pairwise(halves[1]):
            for z0, z1 in itertools.pairwise(halves[2]):
                block = labels[x0:x1 + 1, y0:y1 + 1, z0:z1 + 1]
                if not block.any():
                    continue
                mesher.mesh(np.asfortranarray(block))
                for segment in mesher.ids():
                    vertices, faces = _simplify(mesher, segment)
                    if len(faces):
                        vertices = (vertices + np.array([x0, y0, z0])) * scale
                        parts.setdefault(int(segment), []).append((np.rint(vertices), faces))
                mesher.clear()
    fragments = {}
    for segment, pieces in parts.items():
        vertices = np.concatenate([v for v, _ in pieces]).clip(0, top)
        offsets = np.cumsum([0] + [len(v) for v, _ in pieces[:-1]])
        faces = np.concatenate([f.astype(np.uint32) + o for (_, f), o in zip(pieces, offsets, strict=True)])
        fragments[segment] = _encode(vertices, faces)
    return fragments


def _unit_path(parts: Path, lod: Lod, start: tuple[int, int, int]) -> Path:
    return parts / f"{lod.lod}-{start[0]}-{start[1]}-{start[2]}.part"


def _unit_nodes(lod: Lod, start: tuple[int, int, int]) -> list[int]:
    """How many nodes a work unit starting at ``start`` has along each axis (fewer at the grid's edge)."""
    return [min(UNIT_NODES, g - s) for g, s in zip(lod.grid, start, strict=True)]


def read_unit(plan: MeshPlan, lod_index: int, start: tuple[int, int, int], volume: Volume | None = None) -> np.ndarray:
    """The labels one work unit meshes: its nodes and a margin of one voxel, padded as ``_read_padded`` does."""
    lod = plan.lods[lod_index]
    count = _unit_nodes(lod, start)
    low = [s * n for s, n in zip(start, lod.node, strict=True)]
    high = [lo + c * n + 1 for lo, c, n in zip(low, count, lod.node, strict=True)]
    return _read_padded(volume or _open_in_worker(plan.uri), lod.level, low, high)


def mesh_unit(plan: MeshPlan, lod_index: int, start: tuple[int, int, int], parts: Path,
              labels: np.ndarray | None = None) -> int:
    """Mesh one work unit into its part file (skipped when it exists); the number of fragments written.

    ``labels`` are the unit's voxels as ``read_unit`` gives them; without them the unit reads its own."""
    import zmesh

    lod = plan.lods[lod_index]
    path = _unit_path(parts, lod, start)
    if path.exists():
        return -1
    count = _unit_nodes(lod, start)
    if labels is None:
        labels = read_unit(plan, lod_index, start)
    mesher = zmesh.Mesher((1, 1, 1))
    headers, blobs = [], []
    for dz in range(count[2]):
        for dy in range(count[1]):
            for dx in range(count[0]):
                at = [d * n for d, n in zip((dx, dy, dz), lod.node, strict=True)]
                block = labels[at[0]:at[0] + lod.node[0] + 1, at[1]:at[1] + lod.node[1] + 1,
                               at[2]:at[2] + lod.node[2] + 1]
                if not block.any():
                    continue
                position = (start[0] + dx, start[1] + dy, start[2] + dz)
                for segment, data in sorted(_mesh_node(mesher, block, lod.node, lod.lod > 0).items()):
                    headers.append((segment, *position, len(data)))
                    blobs.append(data)
    table = np.array(headers, dtype=_FRAGMENT)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as out:
        out.write(np.uint64(len(table)).tobytes())
        out.write(table.tobytes())
        for blob in blobs:
            out.write(blob)
    os.replace(temporary, path)
    return len(table)


def _spread(values: np.ndarray) -> np.ndarray:
    """The low 21 bits of each value moved to every third bit (bit i to bit 3i)."""
    v = values.astype(np.uint64) & np.uint64(0x1FFFFF)
    for shift, mask in ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                        (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def _morton(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Z-curve codes with x in the lowest bit of each triple, as Neuroglancer orders octree nodes."""
    return _spread(x) | (_spread(y) << np.uint64(1)) | (_spread(z) << np.uint64(2))


def _fragment_table(parts: Path, part_files: list[Path]) -> np.ndarray:
    tables = []
    for index, path in enumerate(part_files):
        lod = int(path.name.split("-", 1)[0])
        with open(path, "rb") as source:
            count = int(np.frombuffer(source.read(8), dtype="<u8")[0])
            headers = np.frombuffer(source.read(count * _FRAGMENT.itemsize), dtype=_FRAGMENT)
        table = np.zeros(count, dtype=_TABLE)
        for name in ("id", "x", "y", "z", "size"):
            table[name] = headers[name]
        table["lod"] = lod
        table["part"] = index
        sizes = headers["size"].astype(np.uint64)
        table["offset"] = 8 + count * _FRAGMENT.itemsize + np.cumsum(sizes) - sizes
        tables.append(table)
    table = np.concatenate(tables) if tables else np.zeros(0, dtype=_TABLE)
    table["morton"] = _morton(table["x"], table["y"], table["z"])
    return table[np.lexsort((table["morton"], table["lod"], table["id"]))]


def _segment_nodes(rows: np.ndarray) -> tuple[int, list[np.ndarray]]:
    """A segment's levels and, per level, its nodes (x, y, z, size, row index or -1 for an empty parent) in
    Z-curve order, every finer node with its parent present."""
    lods = int(rows["lod"].max()) + 1
    per_lod: list[np.ndarray] = []
    below: np.ndarray | None = None
    for lod in range(lods):
        mine = np.nonzero(rows["lod"] == lod)[0]
        nodes = np.stack([rows["x"][mine], rows["y"][mine], rows["z"][mine]], axis=1).astype(np.int64)
        index = mine.astype(np.int64)
        if below is not None and len(below):
            parents = np.unique(below[:, :3] >> 1, axis=0)
            if len(nodes):
                known = {tuple(p) for p in nodes.tolist()}
                parents = np.array([p for p in parents.tolist() if tuple(p) not in known], dtype=np.int64)
                parents = parents.reshape(-1, 3)
            nodes = np.concatenate([nodes, parents])
            index = np.concatenate([index, np.full(len(parents), -1, dtype=np.int64)])
        order = np.argsort(_morton(nodes[:, 0], nodes[:, 1], nodes[:, 2]), kind="stable")
        level = np.concatenate([nodes[order], index[order, None]], axis=1)
        per_lod.append(level)
        below = level
    return lods, per_lod


def _manifest(lods: int, per_lod: list[np.ndarray], sizes: np.ndarray, plan: MeshPlan) -> bytes:
    vertex_offsets = np.zeros((lods, 3), dtype="<f4")
    for lod in range(lods):
        vertex_offsets[lod] = [-0.5 * f for f in plan.lods[lod].factor]
    pieces = [
        np.full(3, CHUNK, dtype="<f4").tobytes(),
        np.zeros(3, dtype="<f4").tobytes(),
        np.uint32(lods).astype("<u4").tobytes(),
        np.array([1 << lod for lod in range(lods)], dtype="<f4").tobytes(),
        vertex_offsets.tobytes(),
        np.array([len(level) for level in per_lod], dtype="<u4").tobytes(),
    ]
    for level in per_lod:
        pieces.append(np.ascontiguousarray(level[:, :3].T).astype("<u4").tobytes())
        size = np.where(level[:, 3] >= 0, sizes[np.maximum(level[:, 3], 0)], 0)
        pieces.append(size.astype("<u4").tobytes())
    return b"".join(pieces)


def _segments(table: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    if not len(table):
        return
    starts = np.flatnonzero(np.diff(table["id"], prepend=table["id"][0] - 1) != 0)
    ends = np.append(starts[1:], len(table))
    for begin, end in zip(starts.tolist(), ends.tolist(), strict=True):
        yield int(table["id"][begin]), table[begin:end]


def _write_shards(plan: MeshPlan, table: np.ndarray, parts: list[Path], out: Path, build: str) -> tuple[int, int]:
    manifests: dict[int, bytes] = {}
    sizer = ShardSizer(SHARD_BYTES)
    for segment, rows in _segments(table):
        lods, per_lod = _segment_nodes(rows)
        manifest = _manifest(lods, per_lod, rows["size"], plan)
        manifests[segment] = manifest
        sizer.add(segment, len(manifest) + int(rows["size"].sum()))
    spec = sizer.spec()
    writer = ShardWriter(spec)
    maps = [mmap.mmap(os.open(path, os.O_RDONLY), 0, access=mmap.ACCESS_READ) if path.stat().st_size else None
            for path in parts]
    written = 0

    def save(shards: Iterator[tuple[str, bytes]]) -> None:
        nonlocal written
        for name, data in shards:
            (out / name).write_bytes(data)
            written += len(data)

    try:
        for segment, rows in _segments(table):
            _, per_lod = _segment_nodes(rows)
            fragments = []
            for level in per_lod:
                for row in level[:, 3].tolist():
                    if row >= 0:
                        part, offset, size = (int(rows[name][row]) for name in ("part", "offset", "size"))
                        fragments.append(maps[part][offset:offset + size])  # type: ignore[index]
            save(writer.add(segment, manifests.pop(segment), before=b"".join(fragments)))
        save(writer.finish())
    finally:
        for handle in maps:
            if handle is not None:
                handle.close()
    (out / INFO).write_text(json.dumps(plan.info(spec, build)))
    return len(np.unique(table["id"])) if len(table) else 0, written


def _mesh_locally(plan: MeshPlan, units: list[tuple[int, tuple[int, int, int]]], parts: Path, workers: int,
                  done: Callable[[], None]) -> None:
    """Mesh ``units`` in ``workers`` processes; this process reads each unit's labels and sends them, at most two
    units per worker at a time."""
    volume = _open(plan.uri)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending: set[Future[int]] = set()
        for lod, start in units:
            if _unit_path(parts, plan.lods[lod], start).exists():
                done()
                continue
            if len(pending) >= 2 * workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
                    done()
            pending.add(pool.submit(mesh_unit, plan, lod, start, parts, read_unit(plan, lod, start, volume)))
        for future in as_completed(pending):
            future.result()
            done()


def build_meshes(
    labels: str,
    destination: Path,
    *,
    client: Any | None = None,
    threads: int | None = None,
    resume: bool = False,
    show_progress: bool = False,
    on_unit: Callable[[], None] | None = None,
) -> MeshSummary:
    """Build the multi-resolution meshes of the label image at ``labels`` into the folder ``destination``.

    Work units run on ``client`` (a Dask distributed client) when given, else in ``threads`` worker processes
    (the machine's cores by default). With ``resume``, units finished by an interrupted build are kept.
    The previous build in ``destination``, if any, stays readable until the new one replaces it.

    Raises:
        MeshBuildError: the image cannot be meshed.
    """
    started = time.perf_counter()
    plan = plan_meshes(labels)
    building = destination.with_name(destination.name + ".building")
    parts = building / "parts"
    if not resume:
        shutil.rmtree(building, ignore_errors=True)
    parts.mkdir(parents=True, exist_ok=True)
    units = sorted(plan.units(), key=lambda unit: -unit[0])  # coarse units first: the largest go first
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(units), unit="block", desc="meshes")

    def done() -> None:
        if bar is not None:
            bar.update(1)
        if on_unit is not None:
            on_unit()

    try:
        if client is not None:
            futures = [client.submit(mesh_unit, plan, lod, start, parts, pure=False)
                       for lod, start in units]
            from distributed import as_completed as dask_completed

            for future in dask_completed(futures):
                future.result()
                done()
        else:
            _mesh_locally(plan, units, parts, max(1, threads or os.cpu_count() or 1), done)
    finally:
        if bar is not None:
            bar.close()
    part_files = sorted(parts.glob("*.part"))
    table = _fragment_table(parts, part_files)
    out = building / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    build = secrets.token_hex(6)
    segments, written = _write_shards(plan, table, part_files, out, build)
    old = destination.with_name(destination.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if destination.exists():
        destination.rename(old)
    out.rename(destination)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(building, ignore_errors=True)
    return MeshSummary(build, segments, len(table), len(plan.lods), written, time.perf_counter() - started)


@dataclass(frozen=True)
class MeshFolder:
    """A finished mesh build: its name, its info and its files."""

    build: str
    info: dict[str, Any]
    store: LocalStore
    stamp: tuple[int, int]  # the info file's inode and modification time when it was read

    def current(self) -> bool:
        """Whether the folder still holds this build (a rebuild replaces the folder, info file and all)."""
        return _stamp(self.store.root / INFO) == self.stamp

    def check(self, build: str) -> None:
        if build != self.build:
            raise MeshesNotFound(f"mesh build {build[:20]!r} has been replaced by {self.build!r}: read the info again")


def open_meshes(folder: Path) -> MeshFolder | None:
    """The meshes built in ``folder`` (a label image's ``derived_dir / MESH_DIR``), or None when there are none."""
    try:
        stamp = _stamp(folder / INFO)
        info = json.loads((folder / INFO).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    public = {key: value for key, value in info.items() if key != "build"}
    from tiling.stores import LocalStore

    return MeshFolder(str(info.get("build", "")), public, LocalStore(folder), stamp)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        status = os.stat(path)
    except OSError:
        return (-1, -1)
    return status.st_ino, status.st_mtime_ns



@dataclass(frozen=True)
class SurfaceMesh:
    """One segment's surface at one level of detail, in nanometres (x, y, z), fragments joined."""

    vertices: np.ndarray  # float32 [n, 3]
    faces: np.ndarray  # uint32 [m, 3]

    def ply(self) -> bytes:
        head = (f"ply\nformat binary_little_endian 1.0\ncomment Lamella surface mesh, nanometres\n"
                f"element vertex {len(self.vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
                f"element face {len(self.faces)}\nproperty list uchar uint vertex_indices\nend_header\n").encode()
        faces = np.zeros(len(self.faces), dtype=[("n", "u1"), ("v", "<u4", 3)])
        faces["n"], faces["v"] = 3, self.faces
        return head + self.vertices.astype("<f4").tobytes() + faces.tobytes()

    def obj(self) -> bytes:
        lines = ["# Lamella surface mesh, nanometres"]
        lines += [f"v {x:.3f} {y:.3f} {z:.3f}" for x, y, z in self.vertices.tolist()]
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in self.faces.tolist()]
        return ("\n".join(lines) + "\n").encode()


def _read_chunk(store: LocalStore, spec: ShardSpec, key: int) -> tuple[bytes, int] | None:
    """The chunk stored under ``key`` and where it starts in its shard file, or None when it is not there."""
    path = store.local_path(spec.file_name(spec.shard_of(key)))
    try:
        with open(path, "rb") as shard:
            shard.seek(16 * spec.minishard_of(key))
            start, end = np.frombuffer(shard.read(16), dtype="<u8").tolist()
            base = 16 << spec.minishard_bits
            shard.seek(base + start)
            index = np.frombuffer(shard.read(end - start), dtype="<u8").reshape(3, -1)
            keys = np.cumsum(index[0])
            found = np.flatnonzero(keys == np.uint64(key))
            if not len(found):
                return None
            ends = np.cumsum(index[1] + index[2])
            offset = int(ends[found[0]] - index[2][found[0]])
            shard.seek(base + offset)
            return shard.read(int(index[2][found[0]])), base + offset
    except FileNotFoundError:
        return None


def read_surface(meshes: MeshFolder, segment: int, lod: int = 0) -> SurfaceMesh:
    """A segment's surface at level of detail ``lod`` (its coarsest when it has fewer), read from a build.

    Raises:
        MeshesNotFound: the segment has no mesh in this build.
    """
    import DracoPy

    if not 0 < segment < 1 << 64:
        raise MeshesNotFound(f"segment {segment} has no mesh: ids are 1 to 2**64 - 1")
    spec = ShardSpec(*(int(meshes.info["sharding"][name]) for name in ("preshift_bits", "minishard_bits",
                                                                       "shard_bits")))
    found = _read_chunk(meshes.store, spec, segment)
    if found is None:
        raise MeshesNotFound(f"segment {segment} has no mesh")
    manifest, at = found
    chunk = np.frombuffer(manifest[:12], dtype="<f4")
    origin = np.frombuffer(manifest[12:24], dtype="<f4")
    lods = int(np.frombuffer(manifest[24:28], dtype="<u4")[0])
    offsets = np.frombuffer(manifest[28 + 4 * lods:28 + 16 * lods], dtype="<f4").reshape(lods, 3)
    counts = np.frombuffer(manifest[28 + 16 * lods:28 + 20 * lods], dtype="<u4").astype(int)
    lod = min(lod, lods - 1)
    cursor, skipped, total = 28 + 20 * lods, 0, 0
    positions = sizes = np.zeros(0)
    for level, count in enumerate(counts.tolist()):
        level_positions = np.frombuffer(manifest[cursor:cursor + 12 * count], dtype="<u4").reshape(3, count)
        level_sizes = np.frombuffer(manifest[cursor + 12 * count:cursor + 16 * count], dtype="<u4").astype(int)
        cursor += 16 * count
        if level < lod:
            skipped += int(level_sizes.sum())
        elif level == lod:
            positions, sizes = level_positions.T, level_sizes
        total += int(level_sizes.sum())
    top = (1 << int(meshes.info["vertex_quantization_bits"])) - 1
    with open(meshes.store.local_path(spec.file_name(spec.shard_of(segment))), "rb") as shard:
        shard.seek(at - total + skipped)
        data = shard.read(int(sizes.sum()))
    transform = np.array(meshes.info["transform"], dtype=np.float64).reshape(3, 4)
    vertices, faces, start, base = [], [], 0, 0
    for position, size in zip(positions, sizes.tolist(), strict=True):
        if size:
            decoded = DracoPy.decode(data[start:start + size])
            stored = origin + offsets[lod] + chunk * (1 << lod) * (position + np.asarray(decoded.points) / top)
            vertices.append(stored @ transform[:, :3].T + transform[:, 3])
            faces.append(np.asarray(decoded.faces, dtype=np.uint32) + base)
            base += len(decoded.points)
        start += size
    if not vertices:
        raise MeshesNotFound(f"segment {segment} has no surface at level of detail {lod}")
    return SurfaceMesh(np.concatenate(vertices).astype(np.float32), np.concatenate(faces))
