"""Segmentations: OME-Zarr labels of their image, mode pyramids, served as Neuroglancer segmentation."""

import numpy as np
import pytest
import tensorstore as ts
import zarr

from tests.conftest import Sample, Server


def independent_mode(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 2x2x2 block: the most frequent label and whether it is the only most frequent one."""
    z, y, x = (s // 2 for s in block.shape)
    cells = block[: z * 2, : y * 2, : x * 2].reshape(z, 2, y, 2, x, 2).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    modes, unique = [], []
    for cell in cells:
        values, counts = np.unique(cell, return_counts=True)
        best = counts.max()
        modes.append(values[counts == best][0])
        unique.append((counts == best).sum() == 1)
    return np.array(modes).reshape(z, y, x), np.array(unique).reshape(z, y, x)


def test_labels_stored_as_ome_zarr_labels(server: Server, sample: Sample) -> None:
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    image = server.get("/api/datasets/fibsem/images/bodies").json()
    assert image["kind"] == "segmentation" and image["labels_of"] == "raw" and image["dtype"] == "uint32"
    parent = server.get("/api/datasets/fibsem/images/raw").json()["urls"]["zarr"][len("zarr3://"):]
    group = zarr.open_group(parent, mode="r")
    assert group["labels"].attrs["ome"]["labels"] == ["bodies"]
    labels = group["labels/bodies"]
    assert "image-label" in labels.attrs["ome"]
    np.testing.assert_array_equal(labels["0"][:], sample.bodies)
    level1 = labels["1"][:]
    expected, decisive = independent_mode(sample.bodies[:64, :64, :64])
    assert (level1[:32, :32, :32][decisive] == expected[decisive]).all()
    assert set(np.unique(level1)) <= set(np.unique(sample.bodies))  # never a mean of ids


def test_segmentation_served_exactly(server: Server, sample: Sample) -> None:
    if sample.bodies is None:
        pytest.skip("../shared/data is absent")
    info = server.get("/api/datasets/fibsem/images/bodies/precomputed/info").json()
    assert info["type"] == "segmentation" and info["scales"][0]["encoding"] == "compressed_segmentation"
    base_url = server.url + "/api/datasets/fibsem/images/bodies/precomputed/"
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "http", "base_url": base_url},
                     "scale_index": 0}).result()
    served = np.transpose(store[..., 0].read().result(), (2, 1, 0))
    np.testing.assert_array_equal(served, sample.bodies)
    session = server.get("/api/datasets/fibsem").json()
    assert [i["kind"] for i in session["images"]] == ["image", "segmentation"]
