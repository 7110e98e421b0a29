"""Real EM imported through the production path: level 0 exact, level 1 an independent downsample."""

import numpy as np
import pytest
import zarr

from tests.conftest import Sample, Server


def mean_downsample(volume: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Block means over whole blocks, computed here without tensorstore."""
    trimmed = volume[tuple(slice(0, (s // f) * f) for s, f in zip(volume.shape, factors, strict=True))]
    shape = [dim for s, f in zip(trimmed.shape, factors, strict=True) for dim in (s // f, f)]
    return trimmed.reshape(shape).mean(axis=tuple(range(1, len(shape), 2)))


def test_fibsem_levels(server: Server, sample: Sample) -> None:
    if sample.fibsem is None:
        pytest.skip("../shared/data is absent")
    url = server.get("/api/datasets/fibsem/images/raw").json()["urls"]["zarr"][len("zarr3://"):]
    group = zarr.open_group(url, mode="r")
    np.testing.assert_array_equal(group["0"][:], sample.fibsem)
    level1 = group["1"][:]
    expected = mean_downsample(sample.fibsem.astype(np.float64), (2, 2, 2))
    assert level1.shape == (125, 125, 125)
    assert np.abs(level1.astype(np.float64) - expected).max() <= 0.5 + 1e-9  # mean, rounded
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    assert datasets[1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [20.0, 20.0, 20.0]},
        {"type": "translation", "translation": [5.0, 5.0, 5.0]},
    ]
    window = group.attrs["ome"]["omero"]["channels"][0]["window"]
    assert 26 <= window["start"] < window["end"] <= 217  # the cube's value range
