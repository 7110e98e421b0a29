"""Multi-resolution meshes of label images, read back by cloud-volume over HTTP and checked as surfaces."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import Sample, Server

BODIES = "/api/datasets/fibsem/images/bodies/precomputed"


def welded(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices that fragments share (same position to within 1e-3 nm) merged into one; faces that collapse dropped."""
    keys = np.round(vertices * 1000).astype(np.int64)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    faces = inverse.reshape(-1)[faces]
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    return unique / 1000, faces[keep]


def is_closed(faces: np.ndarray) -> bool:
    """Every edge is shared by exactly two triangles."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return bool((counts == 2).all())


def enclosed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(abs(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6)


def test_cloud_volume_reads_closed_surfaces_of_the_voxel_volume(server: Server, sample: Sample) -> None:
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    from cloudvolume import CloudVolume

    info = server.get(f"{BODIES}/info").json()
    assert info["mesh"].startswith("mesh/")
    volume = CloudVolume(f"precomputed://{server.url}{BODIES}", progress=False, use_https=False, cache=False)
    ids, counts = np.unique(sample.bodies, return_counts=True)
    found = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    found.pop(0, None)
    errors = {}
    for segment, voxels in sorted(found.items(), key=lambda item: -item[1])[:40]:
        mesh = volume.mesh.get(segment, lod=0)
        mesh = mesh[segment] if isinstance(mesh, dict) else mesh
        vertices, faces = welded(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces))
        assert is_closed(faces), segment
        errors[segment] = enclosed_volume(vertices, faces) / (voxels * 1000.0) - 1
    print(sorted(errors.values()))
    assert max(abs(e) for e in errors.values()) < 0.05
