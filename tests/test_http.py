"""The real server over real sockets: API, precomputed, passthrough, headers and errors."""

import gzip
import io

import numpy as np
import pytest
import tensorstore as ts
import zarr
from PIL import Image

from tests.conftest import Sample, Server


def error_shape(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["ok"] is False and body["status"] == status and body["code"] and body["message"]
    return body


def test_catalog_json(server: Server) -> None:
    datasets = {d["name"]: d for d in server.get("/api/datasets").json()["datasets"]}
    demo = datasets["demo"]
    assert demo["licence"] == "CC0-1.0" and demo["rembi"]["biosample"]["organism"]
    image = demo["images"][0]
    assert image["shape"] == {"z": 256, "y": 512, "x": 512} and image["dtype"] == "uint8"
    assert image["voxel_size_nm"] == {"z": 8.0, "y": 8.0, "x": 8.0} and len(image["levels"]) >= 3
    one = server.get(f"/api/datasets/{demo['id']}").json()
    assert one["name"] == "demo"
    assert server.get("/api/datasets/demo/images/em").json()["urls"]["precomputed"].startswith("precomputed://http")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/datasets/nope", 404, "dataset_not_found"),
        ("/api/datasets/99999999999999999999", 404, "dataset_not_found"),
        ("/api/datasets/demo/images/nope", 404, "image_not_found"),
        ("/api/datasets/demo/images/nope/precomputed/info", 404, "image_not_found"),
        ("/api/datasets/demo/images/em/precomputed/9/0-64_0-64_0-64", 404, "scale_not_found"),
        ("/api/datasets/demo/images/em/precomputed/0/0-64_0-64", 400, "invalid_chunk_key"),
        ("/api/datasets/demo/images/em/precomputed/0/1-65_0-64_0-64", 400, "invalid_chunk_key"),
        ("/api/datasets/demo/images/em/precomputed/0/0-64_0-64_512-576", 400, "invalid_chunk_key"),
        ("/api/datasets/demo/images/em/zarr/0/c/9/9/9", 404, "key_not_found"),
        ("/api/datasets/demo/images/em/zarr/0/%2e%2e/%2e%2e/%2e%2e/etc/passwd", 400, "invalid_key"),
        ("/api/datasets/demo/images/em/zarr/0/c%00", 400, "invalid_key"),
        # Hostile input (tests/test_parsing.py has the parsers' own tests): once 500s, or 503 for a long key part.
        ("/api/datasets/demo/images/em/precomputed/%C2%B2/0-64_0-64_0-64", 404, "scale_not_found"),
        ("/api/datasets/demo/images/em/precomputed/00/0-64_0-64_0-64", 404, "scale_not_found"),
        ("/api/datasets/demo/images/em/precomputed/0/%D9%A3-64_0-64_0-64", 400, "invalid_chunk_key"),
        ("/api/datasets/demo/images/em/precomputed/0/00-64_0-64_0-64", 400, "invalid_chunk_key"),
        ("/api/datasets/demo/images/em/precomputed/0/0-64_0-64_0-" + "9" * 30, 400, "invalid_chunk_key"),
        ("/api/datasets/demo/images/em/zarr/0/" + "a" * 300, 400, "invalid_key"),
        ("/api/datasets/demo/images/em/zarr/0//zarr.json", 400, "invalid_key"),
        ("/api/sessions/nope", 404, "session_not_found"),
        ("/no/such/route", 404, "not_found"),
        ("/datasets/nope", 404, "dataset_not_found"),
    ],
)
def test_errors_are_json(server: Server, path: str, status: int, code: str) -> None:
    assert error_shape(server.get(path), status)["code"] == code


def test_method_not_allowed_has_allow(server: Server) -> None:
    import requests

    response = requests.delete(server.url + "/api/datasets", timeout=10)
    error_shape(response, 405)
    assert "GET" in response.headers["Allow"]


def test_precomputed_raw_exact_with_tensorstore(server: Server, sample: Sample) -> None:
    """tensorstore's own neuroglancer_precomputed driver, over HTTP, sees the source array."""
    base_url = server.url + "/api/datasets/tests/images/u16/precomputed/"
    store = ts.open({"driver": "neuroglancer_precomputed", "kvstore": {"driver": "http", "base_url": base_url},
                     "scale_index": 0}).result()
    assert store.dtype == ts.uint16
    data = store[..., 0].read().result()  # x, y, z
    np.testing.assert_array_equal(np.transpose(data, (2, 1, 0)), sample.u16)


def test_precomputed_info_and_jpeg(server: Server) -> None:
    info = server.get("/api/datasets/demo/images/em/precomputed/info").json()
    assert info["@type"] == "neuroglancer_multiscale_volume" and info["data_type"] == "uint8"
    resolutions = [s["resolution"] for s in info["scales"]]
    assert resolutions == sorted(resolutions) and info["scales"][0]["encoding"] == "jpeg"
    assert info["scales"][0]["chunk_sizes"] == [[64, 64, 64]]
    response = server.get("/api/datasets/demo/images/em/precomputed/0/64-128_128-192_0-64")
    assert response.headers["Content-Type"] == "image/jpeg"
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "max-age" in response.headers["Cache-Control"]
    pixels = np.asarray(Image.open(io.BytesIO(response.content)))
    assert pixels.shape == (64 * 64, 64)
    reference = zarr.open_group(server.get("/api/datasets/demo/images/em").json()["urls"]["zarr"][len("zarr3://"):],
                                mode="r")["0"][0:64, 128:192, 64:128]
    assert np.abs(pixels.reshape(64, 64, 64).astype(int) - reference).mean() < 8  # lossy, but the same image
    etag = response.headers["ETag"]
    assert server.get("/api/datasets/demo/images/em/precomputed/0/64-128_128-192_0-64",
                      headers={"If-None-Match": etag}).status_code == 304


def test_raw_chunks_are_gzipped_when_accepted(server: Server, sample: Sample) -> None:
    import requests

    url = server.url + "/api/datasets/tests/images/u16/precomputed/0/0-32_0-32_0-32"
    response = requests.get(url, headers={"Accept-Encoding": "gzip"}, timeout=10, stream=True)
    assert response.headers["Content-Encoding"] == "gzip"
    raw = gzip.decompress(response.raw.read())
    block = np.frombuffer(raw, "<u2").reshape(32, 32, 32)
    np.testing.assert_array_equal(block, sample.u16[0:32, 0:32, 0:32])
    plain = requests.get(url, headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "Content-Encoding" not in plain.headers and plain.content == raw


def test_head_and_cors_preflight(server: Server) -> None:
    import requests

    url = server.url + "/api/datasets/demo/images/em/precomputed/0/0-64_0-64_0-64"
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > 0 and not head.content
    preflight = requests.options(url, headers={"Origin": "http://elsewhere.example",
                                               "Access-Control-Request-Headers": "range"}, timeout=10)
    assert preflight.status_code == 204 and "Range" in preflight.headers["Access-Control-Allow-Headers"]


def test_passthrough_exact_with_zarr_python(server: Server, sample: Sample) -> None:
    base = server.url + "/api/datasets/tests/images/{}/zarr/"
    sharded = zarr.open_group(base.format("u16"), mode="r")
    np.testing.assert_array_equal(sharded["0"][:], sample.u16)
    v2 = zarr.open_group(base.format("v2"), mode="r")
    np.testing.assert_array_equal(v2["0"][:], sample.v2)
    assert v2.attrs["multiscales"][0]["version"] == "0.4"


def test_passthrough_exact_with_tensorstore(server: Server, sample: Sample) -> None:
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "http",
                     "base_url": server.url + "/api/datasets/tests/images/u16/zarr/0/"}}).result()
    np.testing.assert_array_equal(array.read().result(), sample.u16)


def test_passthrough_ranges(server: Server, data_dir) -> None:
    import requests

    url = server.url + "/api/datasets/tests/images/u16/zarr/0/c/0/0/0"
    whole = requests.get(url, timeout=10)
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    size = len(whole.content)
    part = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert part.status_code == 206 and part.content == whole.content[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{size}"
    suffix = requests.get(url, headers={"Range": "bytes=-20"}, timeout=10)
    assert suffix.content == whole.content[-20:]
    for refused in (f"bytes={size + 5}-", "bytes=" + "1" * 30 + "-", "bytes=010-19", "bytes=\u0663-5".encode(),
                    "bytes=19-10"):  # fmt: skip
        response = requests.get(url, headers={"Range": refused}, timeout=10)
        error_shape(response, 416)
        assert response.headers["Content-Range"] == f"bytes */{size}"
    assert requests.get(url, headers={"Range": "bytes=0-5,10-20"}, timeout=10).content == whole.content


def test_real_fibsem_cube_is_served(server: Server, sample: Sample) -> None:
    if sample.fibsem is None:
        pytest.skip("../shared/data is absent")
    image = server.get("/api/datasets/fibsem/images/raw").json()
    assert image["shape"] == {"z": 250, "y": 250, "x": 250} and image["voxel_size_nm"]["x"] == 10.0
    served = zarr.open_group(image["urls"]["zarr"][len("zarr3://"):], mode="r")["0"][:]
    np.testing.assert_array_equal(served, sample.fibsem)
    chunk = server.get("/api/datasets/fibsem/images/raw/precomputed/0/192-250_192-250_192-250")
    assert chunk.status_code == 200
    pixels = np.asarray(Image.open(io.BytesIO(chunk.content))).reshape(58, 58, 58)
    assert np.abs(pixels.astype(int) - sample.fibsem[192:, 192:, 192:]).mean() < 8
