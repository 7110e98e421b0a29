"""The catalog as a front door (thumbnails, search and filters) and standards out (REMBI metadata, MIFA records)."""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import Server
from tiling.thumbnails import THUMBNAIL_DIR, thumbnail_path


def thumbnails(server: Server) -> list[Path]:
    assert server.data_dir is not None
    return sorted((server.data_dir / THUMBNAIL_DIR).glob("*.jpg"))


def demo_thumbnail(server: Server) -> Path:
    """Where the demo's reference image (its EM) keeps its thumbnail; other datasets made from the same
    pixels may have files with the same bytes."""
    assert server.data_dir is not None
    with sqlite3.connect(server.data_dir / "lamella.sqlite") as database:
        [(image_id, uri)] = database.execute(
            "SELECT images.id, images.uri FROM images JOIN datasets ON datasets.id = images.dataset_id "
            "WHERE datasets.name = 'demo' AND images.name = 'em'").fetchall()
    return thumbnail_path(server.data_dir / THUMBNAIL_DIR, image_id, uri)


def test_a_thumbnail_is_a_jpeg_made_once_then_served_from_its_file(server: Server) -> None:
    url = server.get("/api/datasets/demo").json()["thumbnail_url"]
    first = requests.get(url, timeout=60)
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/jpeg"
    assert first.headers["Cache-Control"] == "public, max-age=86400"
    picture = Image.open(io.BytesIO(first.content))
    assert picture.format == "JPEG" and max(picture.size) <= 256 and min(picture.size) >= 64
    kept = demo_thumbnail(server)
    assert kept.read_bytes() == first.content
    # The second answer is the file: a file changed behind the server's back is what it sends.
    marker = first.content + b"\0"
    kept.write_bytes(marker)
    try:
        assert requests.get(url, timeout=30).content == marker
    finally:
        kept.write_bytes(first.content)
    again = requests.get(url, timeout=30, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert [path for path in thumbnails(server) if path.name.startswith(kept.name.split("-")[0] + "-")] == [kept]


def test_a_private_datasets_thumbnail_does_not_exist_for_those_who_may_not_read_it(server: Server) -> None:
    anonymous = server.get("/api/datasets/embargoed/thumbnail")
    assert anonymous.status_code == 404 and anonymous.json()["code"] == "dataset_not_found"
    admin = server.get("/api/datasets/embargoed/thumbnail", headers=server.admin)
    assert admin.status_code == 200 and admin.headers["Content-Type"] == "image/jpeg"
    assert admin.headers["Cache-Control"].startswith("private") and "Authorization" in admin.headers["Vary"]
    assert "Access-Control-Allow-Origin" not in admin.headers


@pytest.fixture
def accession(server: Server) -> Iterator[str]:
    """The "tests" dataset with an archive accession for a while."""
    url = f"{server.url}/api/datasets/tests"
    assert requests.patch(url, json={"accession": "EMPIAR-10982"}, headers=server.admin, timeout=30).ok
    try:
        yield "EMPIAR-10982"
    finally:
        requests.patch(url, json={"accession": None}, headers=server.admin, timeout=30)


def names(answer: requests.Response) -> list[str]:
    assert answer.status_code == 200, answer.text
    return [dataset["name"] for dataset in answer.json()["datasets"]]


def test_the_catalog_says_what_each_dataset_is_and_filters_by_it(server: Server, accession: str) -> None:
    everything = server.get("/api/datasets").json()
    assert everything["total"] == len(everything["datasets"]) >= 4
    demo = next(d for d in everything["datasets"] if d["name"] == "demo")
    assert demo["organism"] == "none (synthetic)" and demo["imaging_method"].startswith("FIB-SEM")
    assert demo["licence"] == "CC0-1.0" and demo["thumbnail_url"].endswith(f"/api/datasets/{demo['id']}/thumbnail")
    assert demo["size"]["extent_um"] == [4.096, 4.096, 2.048]  # 512 x 512 x 256 voxels of 8 nm
    assert demo["size"]["voxels"] >= 512 * 512 * 256 and demo["size"]["bytes"] >= demo["size"]["voxels"]
    assert everything["facets"] == {"methods": ["FIB-SEM and fluorescence (simulated)"],
                                    "organisms": ["none (synthetic)"]}
    assert names(server.get("/api/datasets?method=fib-sem")) == ["demo"]
    assert names(server.get("/api/datasets", params={"organism": "None (Synthetic)"})) == ["demo"]
    assert names(server.get("/api/datasets", params={"text": "mitochondria cristae"})) == ["demo"]
    assert names(server.get("/api/datasets", params={"text": "fluorescence"})) == ["demo", "correlative"]
    assert names(server.get("/api/datasets", params={"accession": "empiar-109"})) == ["tests"]
    assert names(server.get("/api/datasets", params={"accession": accession, "method": "FIB-SEM"})) == []
    narrowed = server.get("/api/datasets", params={"text": "nothing-like-this"}).json()
    assert narrowed["datasets"] == [] and narrowed["total"] == everything["total"]
    assert narrowed["facets"] == everything["facets"]  # the choices stay those of the whole catalog
    # The private dataset is neither listed nor counted for those who may not read it.
    assert "embargoed" not in names(server.get("/api/datasets", params={"text": "v2"}))
    assert "embargoed" in names(server.get("/api/datasets", params={"text": "v2"}, headers=server.admin))


@pytest.mark.parametrize("query", [{"colour": "red"}, {"text": "x" * 201}])
def test_a_bad_catalog_filter_is_a_clear_400(server: Server, query: dict[str, str]) -> None:
    answer = server.get("/api/datasets", params=query)
    assert answer.status_code == 400 and answer.headers["Content-Type"].startswith("application/json")
    assert next(iter(query)) in answer.json()["message"]


def test_a_datasets_metadata_exports_as_rembi(server: Server) -> None:
    answer = server.get("/api/datasets/demo/metadata", params={"format": "rembi"})
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    rembi = answer.json()
    assert rembi["format"] == "REMBI"
    assert {"study", "study_component", "biosample", "specimen", "image_acquisition", "image_data",
            "image_correlation", "analysed_data"} <= set(rembi)
    assert rembi["study"]["licence"] == "CC0-1.0" and rembi["study"]["keywords"][0] == "vEM"
    assert rembi["study"]["url"].endswith("/datasets/" + str(server.get("/api/datasets/demo").json()["id"]))
    assert rembi["biosample"]["organism"] == "none (synthetic)"
    assert rembi["image_acquisition"]["voxel_size_nm"] == [8, 8, 8]
    assert rembi["study_component"]["reference_image"] == "em"
    em = next(image for image in rembi["image_data"]["images"] if image["name"] == "em")
    assert em["dimensions_zyx"] == [256, 512, 512] and em["file_format"].startswith("OME-Zarr")
    assert requests.get(em["zarr_url"] + "zarr.json", timeout=30).json()["zarr_format"] == 3  # the URL works
    assert server.get("/api/datasets/demo/metadata").json() == rembi  # rembi is the default
    # The stored transforms are the image-correlation module's, read back as an archive entry's records are.
    from annotations.archive_entries import Correlation
    from viewer.correlation import affine_in_nm

    [record] = rembi["image_correlation"]["transforms"]
    assert record["related_images"] == ["fluorescence", "em"] and record["kind"] == "affine"
    stored = server.get("/api/datasets/demo/images/fluorescence/transform").json()
    matrix = stored.get("matrix") or stored["transform"]["matrix"]
    read_back = Correlation.model_validate(record)
    assert np.allclose(affine_in_nm(read_back.transformation_matrix, read_back.unit), matrix)
    bad = server.get("/api/datasets/demo/metadata", params={"format": "xml"})
    assert bad.status_code == 400 and "format" in bad.json()["message"]
    assert server.get("/api/datasets/embargoed/metadata").status_code == 404


@pytest.fixture
def scored_layer(server: Server) -> Iterator[str]:
    """A layer of the "tests" dataset with a confidence property and three annotations by the admin."""
    layers = f"{server.url}/api/datasets/tests/annotation-layers"
    made = requests.post(layers, headers=server.admin, timeout=30, json={
        "name": "mifa-check", "description": "every synapse with a visible cleft", "types": ["point"],
        "labels": [{"id": "synapse", "description": "a cleft with vesicles on one side"}],
        "properties": [{"id": "confidence", "type": "float32"}]})
    assert made.status_code == 201, made.text
    base = f"{layers}/{made.json()['id']}"
    lower, upper = made.json()["lower_bound"], made.json()["upper_bound"]
    middle = [(lo + hi) / 2 for lo, hi in zip(lower, upper, strict=True)]
    points = [{"type": "point", "point": middle, "label": "synapse", "properties": {"confidence": c}}
              for c in (0.5, 1.0)] + [{"type": "point", "point": lower}]
    assert requests.post(f"{base}/annotations", json={"annotations": points}, headers=server.admin, timeout=30).ok
    try:
        yield base
    finally:
        requests.delete(base, headers=server.admin, timeout=30)


def test_a_layer_exports_its_mifa_record_alone_and_beside_its_data(server: Server, scored_layer: str) -> None:
    answer = requests.get(f"{scored_layer}/export", params={"format": "mifa"}, timeout=30)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="tests-mifa-check.mifa.json"'
    mifa = answer.json()
    assert mifa["format"] == "MIFA" and mifa["layer"] == "mifa-check"
    assert mifa["annotation_type"] == ["point annotations", "class labels"]
    assert mifa["annotation_method"]["annotators"] == ["admin"]
    assert mifa["annotation_criteria"]["description"] == "every synapse with a visible cleft"
    assert mifa["annotation_criteria"]["labels"] == [{"id": "synapse",
                                                      "description": "a cleft with vesicles on one side"}]
    coverage = mifa["annotation_coverage"]
    assert coverage["annotations"] == 3 and coverage["by_label"] == {"(none)": 1, "synapse": 2}
    assert mifa["annotation_confidence_level"] == {"property": "confidence", "annotations_with_a_value": 2,
                                                   "minimum": 0.5, "maximum": 1.0, "mean": 0.75}
    source = mifa["source_image"]
    assert source["dataset"] == "tests" and source["image"] == "u16"
    assert requests.get(source["zarr_url"] + "zarr.json", timeout=30).status_code == 200
    assert source["neuroglancer_source"].startswith("precomputed://http")
    archive = requests.get(f"{scored_layer}/export", params={"format": "precomputed-zip"}, timeout=30)
    with zipfile.ZipFile(io.BytesIO(archive.content)) as folder:
        assert json.loads(folder.read("tests-mifa-check/mifa.json")) == mifa
        assert "tests-mifa-check/point/info" in folder.namelist()
    # As of a time before the layer had annotations, the record says so.
    early = requests.get(f"{scored_layer}/export", timeout=30,
                         params={"format": "mifa", "as_of": "2000-01-01T00:00:00Z"}).json()
    assert early["annotation_coverage"]["annotations"] == 0 and early["view"] != "current"
