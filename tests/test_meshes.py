"""Multi-resolution meshes of label images, read back by cloud-volume over HTTP and checked as surfaces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Sample, Server
from tiling.meshes import MeshBuildError, build_meshes, open_meshes, plan_meshes, read_surface
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource

BODIES = "/api/datasets/fibsem/images/bodies/precomputed"


def welded(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices that fragments share (same position to within 1e-3 nm) merged into one; faces that collapse dropped."""
    keys = np.round(vertices * 1000).astype(np.int64)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return unique / 1000, faces[keep]


def edge_counts(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each edge (its two vertex indices, lower first) and how many triangles share it."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(edges, axis=0, return_counts=True)


def is_closed(faces: np.ndarray) -> bool:
    """Every edge is shared by exactly two triangles."""
    return bool((edge_counts(faces)[1] == 2).all())


def enclosed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(abs(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6)


def test_cloud_volume_reads_closed_surfaces_of_the_voxel_volume(server: Server, sample: Sample) -> None:
    """Over HTTP, as the connectomics tools read them: every segment's surface is closed, and each one of at
    least 1,000 voxels (a sample of every second one) encloses its voxel volume within 5%. Smaller segments
    are mostly corners, which marching cubes cuts: one of a few voxels encloses well under half of them."""
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    from cloudvolume import CloudVolume

    info = server.get(f"{BODIES}/info").json()
    assert info["mesh"].startswith("mesh/")
    volume = CloudVolume(f"precomputed://{server.url}{BODIES}", progress=False, use_https=False, cache=False)
    ids, counts = np.unique(sample.bodies[sample.bodies > 0], return_counts=True)
    large = [(int(i), int(c)) for i, c in zip(ids, counts, strict=True) if c >= 1000][::2]
    errors = {}
    for segment, voxels in large:
        mesh = volume.mesh.get(segment, lod=0)
        mesh = mesh[segment] if isinstance(mesh, dict) else mesh
        vertices, faces = welded(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces))
        assert is_closed(faces), segment
        errors[segment] = enclosed_volume(vertices, faces) / (voxels * 1000.0) - 1
    assert len(errors) > 100 and max(abs(e) for e in errors.values()) < 0.05, errors
    assert server.data_dir is not None
    meshes = open_meshes(server.data_dir / "images" / "fibsem" / "raw.ome.zarr" / "labels" / "bodies" / "meshes")
    assert meshes is not None
    for segment in ids.tolist():  # all 525, read as the surface download reads them
        surface = read_surface(meshes, segment, 0)
        assert is_closed(welded(surface.vertices.astype(np.float64), surface.faces.astype(np.int64))[1]), segment


def largest_segment(bodies: np.ndarray) -> int:
    ids, counts = np.unique(bodies[bodies > 0], return_counts=True)
    return int(ids[counts.argmax()])


def test_a_surface_downloads_as_ply_and_obj_equal_to_what_cloud_volume_reads(server: Server, sample: Sample) -> None:
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    from cloudvolume import CloudVolume

    segment = largest_segment(sample.bodies)
    base = "/api/datasets/fibsem/images/bodies/meshes"
    ply = server.get(f"{base}/{segment}")
    assert ply.status_code == 200 and ply.headers["Content-Type"] == "application/x-ply"
    head, _, body = ply.content.partition(b"end_header\n")
    vertices_count = int(head.split(b"element vertex ")[1].split(b"\n")[0])
    vertices = np.frombuffer(body[:12 * vertices_count], dtype="<f4").reshape(-1, 3)
    volume = CloudVolume(f"precomputed://{server.url}{BODIES}", progress=False, use_https=False, cache=False)
    theirs = volume.mesh.get(segment, lod=0)
    theirs = theirs[segment] if isinstance(theirs, dict) else theirs
    ours = {tuple(v) for v in np.round(vertices, 1).tolist()}
    assert ours == {tuple(v) for v in np.round(np.asarray(theirs.vertices, dtype=np.float32), 1).tolist()}
    obj = server.get(f"{base}/{segment}?format=obj&lod=1").text.splitlines()
    assert obj[0].startswith("#") and obj[1].startswith("v ") and obj[-1].startswith("f ")
    coarse = sum(line.startswith("v ") for line in obj)
    assert 0 < coarse < vertices_count  # a coarser level of detail has fewer vertices
    # No such segment, or no meshes at all: a JSON 404; a bad level or format: a JSON 400.
    for path, status in ((f"{base}/4000000000", 404), (f"{base}/18446744073709551616", 404),
                         ("/api/datasets/fibsem/images/raw/meshes/1", 404), (f"{base}/{segment}?lod=99", 400),
                         (f"{base}/{segment}?format=stl", 400)):
        answer = server.get(path)
        assert answer.status_code == status and answer.json()["ok"] is False, path


def test_mesh_files_are_served_per_build_with_ranges(server: Server, sample: Sample) -> None:
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    build = server.get(f"{BODIES}/info").json()["mesh"].split("/")[1]
    info = server.get(f"{BODIES}/mesh/{build}/info")
    assert info.json()["@type"] == "neuroglancer_multilod_draco" and "build" not in info.json()
    assert info.headers["Cache-Control"] == "public, max-age=86400"
    shard = server.get(f"{BODIES}/mesh/{build}/0.shard", headers={"Range": "bytes=0-15"})
    assert shard.status_code == 206 and len(shard.content) == 16
    stale = server.get(f"{BODIES}/mesh/{'0' * 12}/info")
    assert stale.status_code == 404 and stale.json()["code"] == "mesh_not_found"
    assert "mesh" not in server.get("/api/datasets/fibsem/images/raw/precomputed/info").json()


def test_an_interrupted_build_resumes_and_a_rebuild_replaces(tmp_path: Path, sample: Sample) -> None:
    """Units finished before an interruption are kept (here one made to look finished and empty, so that keeping
    it shows); a build without resume starts over; each build has its own name."""
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    labels = tmp_path / "bodies.ome.zarr"
    write_pyramid(ArraySource(sample.bodies[:100, :100, :100]), labels, voxel_size=(10.0, 10.0, 10.0),
                  options=PyramidOptions(labels=True, name="bodies"))
    destination = tmp_path / "meshes"
    plan = plan_meshes(str(labels))
    parts = tmp_path / "meshes.building" / "parts"
    parts.mkdir(parents=True)
    lod, start = plan.units()[0]
    (parts / f"{plan.lods[lod].lod}-{start[0]}-{start[1]}-{start[2]}.part").write_bytes(np.uint64(0).tobytes())
    resumed = build_meshes(str(labels), destination, threads=1, resume=True)
    fresh = build_meshes(str(labels), destination, threads=1)
    assert resumed.fragments < fresh.fragments and resumed.build != fresh.build
    assert open_meshes(destination).build == fresh.build  # type: ignore[union-attr]
    assert not (tmp_path / "meshes.building").exists() and not (tmp_path / "meshes.old").exists()


def test_what_cannot_be_meshed_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "grey.ome.zarr"
    write_pyramid(ArraySource(np.zeros((8, 8, 8), dtype=np.float32)), image, voxel_size=(1.0, 1.0, 1.0))
    with pytest.raises(MeshBuildError, match="integer labels"):
        plan_meshes(str(image))


def test_a_rebuild_is_served_at_once_under_its_new_name(scratch_server: Server, sample: Sample) -> None:
    """``lamella mesh`` beside a running server: the label image's info names the new build and the old name is
    a 404 straight away, never the new files under the old name."""
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    old = scratch_server.get(f"{BODIES}/info").json()["mesh"].split("/")[1]
    assert scratch_server.get(f"{BODIES}/mesh/{old}/info").status_code == 200  # the server holds this build
    built = subprocess.run([sys.executable, "-m", "viewer.cli", "mesh", "fibsem", "bodies", "--quiet",
                            "--data-dir", str(scratch_server.data_dir)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    new = scratch_server.get(f"{BODIES}/info").json()["mesh"].split("/")[1]
    assert new != old and new in built.stdout
    gone = scratch_server.get(f"{BODIES}/mesh/{old}/0.shard", headers={"Range": "bytes=0-15"})
    assert gone.status_code == 404 and gone.json()["code"] == "mesh_not_found"
    assert scratch_server.get(f"{BODIES}/mesh/{new}/info").status_code == 200


def _border(vertices: np.ndarray, faces: np.ndarray) -> set[tuple[float, ...]]:
    """The open edges (of one triangle) as pairs of vertex positions."""
    edges, counts = edge_counts(faces)
    return {tuple(sorted(map(tuple, pair))) for pair in np.round(vertices[edges[counts == 1]], 4).tolist()}


def test_node_surfaces_keep_their_borders_stay_manifold_and_within_the_error(sample: Sample) -> None:
    """On blocks of the real FIB-SEM labels, every segment's simplified surface has exactly the open border
    marching cubes gave it (what the neighbouring node's surface meets), no edge of more than two triangles,
    fewer triangles, and no vertex further than one voxel from the unsimplified surface."""
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    import zmesh
    from scipy.spatial import cKDTree

    from tiling.meshes import MAX_ERROR, _simplify

    labels = np.zeros([n + 2 for n in sample.bodies.shape], dtype=sample.bodies.dtype)
    labels[1:-1, 1:-1, 1:-1] = sample.bodies
    labels = labels.transpose()
    rng = np.random.default_rng(5)
    mesher = zmesh.Mesher((1, 1, 1))
    before = after = 0
    for x, y, z in [(0, 0, 0), (128, 64, 192)]:
        mesher.mesh(np.asfortranarray(labels[x:x + 65, y:y + 65, z:z + 65]))
        for segment in mesher.ids():
            raw = mesher.get(segment, normals=False)
            vertices, faces = _simplify(mesher, segment)
            before, after = before + len(raw.faces), after + len(faces)
            assert edge_counts(faces)[1].max() <= 2, segment
            assert _border(vertices, faces) == _border(raw.vertices, raw.faces), segment
            corners = raw.vertices[raw.faces]  # points on the raw surface, about 0.3 voxels apart
            weights = rng.dirichlet((1, 1, 1), size=(len(corners), 10))
            dense = np.einsum("tsk,tkd->tsd", weights, corners).reshape(-1, 3)
            distance, _ = cKDTree(np.concatenate([dense, raw.vertices])).query(vertices)
            assert distance.max() <= 2 * MAX_ERROR, segment
        mesher.clear()
    assert after < before / 2


@pytest.mark.parametrize("extra", [0, 1 << 22], ids=["few-vertices", "millions-of-vertices"])
def test_flaps_are_dropped_and_pinched_edges_refused(extra: int) -> None:
    """What an edge collapse can leave: a triangle lying on its own reverse goes; an edge of four triangles
    (two surfaces pinched together) makes the surface unusable. The same with indices too large to number
    every triangle in 63 bits."""
    from tiling.meshes import _manifold

    tetrahedron = np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]]) + extra
    assert np.array_equal(_manifold(tetrahedron, extra + 4), tetrahedron)
    flap = np.concatenate([tetrahedron, np.array([[1, 2, 4], [2, 1, 4]]) + extra])
    assert np.array_equal(_manifold(flap, extra + 5), tetrahedron)
    second = np.array([[0, 1, 5], [1, 0, 6], [0, 5, 6], [1, 6, 5]]) + extra  # shares the edge 0-1
    assert _manifold(np.concatenate([tetrahedron, second]), extra + 7) is None


def test_an_object_of_one_voxel_keeps_its_surface() -> None:
    import zmesh

    from tiling.meshes import _simplify

    labels = np.zeros((5, 5, 5), dtype=np.uint32, order="F")
    labels[2, 2, 2] = 7
    mesher = zmesh.Mesher((1, 1, 1))
    mesher.mesh(labels)
    _, faces = _simplify(mesher, 7)
    assert len(faces) >= 4 and is_closed(faces)
