"""``lamella add-entry``: EMPIAR entries and BioImage Archive studies registered as datasets, all or nothing.

The entries are shaped like the archives' API answers (tests/fixtures/entries, from EMPIAR's deposition
schema and the BioImage Archive's shared data models); EMPIAR image set files come from ../shared/data;
the BioImage Archive's OME-Zarr images (Zarr v2 with OME 0.4, Zarr v3 with OME 0.5, the bioformats2raw
layout) are written here and served over HTTP by a thread.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from annotations.archive_entries import EMPIAR_CATEGORIES, EMPIAR_FORMATS, EMPIAR_VOXEL_TYPES, enumerated
from annotations.catalog import Catalog
from annotations.db import make_engine, make_sessions, sqlite_url
from annotations.transforms import Transforms
from tests.conftest import LAMELLA, ROOT, SHARED_DATA, shared_file
from tiling.errors import InvalidMultiscale
from tiling.omezarr import length_unit, nm_per_unit
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource
from viewer.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "entries"
EMPIAR = FIXTURES / "empiar-10982.json"
BIA_STUDY = FIXTURES / "s-biad1234-study.json"
CELEGANS = SHARED_DATA / "fibsem_celegans_empiar10982_neubias_crop" / "c_elegans_em_zyx_uint8.tif"
CLEM = SHARED_DATA / "clem_array_tomography_deepclem"  # SEM and chromatin fluorescence sections on one pixel grid


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def catalog(data_dir: Path) -> Catalog:
    return Catalog(make_sessions(make_engine(sqlite_url(data_dir))))


def dataset_names(data_dir: Path) -> list[str]:
    if not (data_dir / "lamella.sqlite").exists():
        return []
    return [d.name for d in catalog(data_dir).list_datasets()]


def one_line_error(result: Result, *words: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lamella: error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# Units


@pytest.mark.parametrize(("unit", "nm"), [
    ("nanometer", 1.0), ("nm", 1.0), ("nanometre", 1.0), ("micrometer", 1e3), ("µm", 1e3), ("μm", 1e3),
    ("um", 1e3), ("microns", 1e3), ("angstrom", 0.1), ("Å", 0.1), ("picometer", 1e-3), ("millimeter", 1e6),
    ("centimeter", 1e7), ("meter", 1e9), ("Meters", 1e9), ("kilometer", 1e12), ("inch", 2.54e7), (None, 1.0),
    ("Mm", 1e15), ("mm", 1e6), ("Micrometres", 1e3), ("feet", 3.048e8), ("ångström", 0.1),
])  # fmt: skip
def test_length_units_are_understood(unit: str | None, nm: float) -> None:
    assert nm_per_unit(unit) == pytest.approx(nm)


@pytest.mark.parametrize("unit", ["furlong", "pixel", "second", "nanosecond", "A", "micrometer²", "MM", "NM"])
def test_other_units_are_refused_not_taken_as_nanometres(unit: str) -> None:
    assert length_unit(unit) is None
    with pytest.raises(InvalidMultiscale, match="not a length unit"):
        nm_per_unit(unit, "x")


# EMPIAR


@pytest.mark.parametrize(("value", "names", "expected"), [
    ("('T3', '')", EMPIAR_FORMATS, "TIFF"),
    ("T1", EMPIAR_FORMATS, "MRC"),
    ("MRC", EMPIAR_FORMATS, "MRC"),
    ("tiff", EMPIAR_FORMATS, "TIFF"),
    ("('OT', 'HDF5')", EMPIAR_FORMATS, "HDF5"),
    ("('T9', '')", EMPIAR_CATEGORIES, "tilt series"),
    ("tilt series", EMPIAR_CATEGORIES, "tilt series"),
    ("('T7', '')", EMPIAR_VOXEL_TYPES, "32 BIT FLOAT"),
    (None, EMPIAR_FORMATS, None),
])  # fmt: skip
def test_empiar_enumerations_are_read_as_codes_or_names(value: str | None, names: dict[str, str],
                                                        expected: str | None) -> None:
    assert enumerated(value, names) == expected


@pytest.fixture
def empiar_files(tmp_path: Path) -> Path:
    """The entry's files as EMPIAR lays them out: the C. elegans crop (a link, never a copy) under data/."""
    files = tmp_path / "files"
    (files / "data" / "c_elegans").mkdir(parents=True)
    (files / "data" / "c_elegans" / "c_elegans_em_zyx_uint8.tif").symlink_to(shared_file(CELEGANS))
    return files


def test_empiar_entry_imports_the_sets_it_can_and_lists_the_others(tmp_path: Path, empiar_files: Path) -> None:
    data = tmp_path / "lamella"
    result = run("add-entry", "EMPIAR-10982", "--entry-json", str(EMPIAR), "--files", str(empiar_files),
                 "--data-dir", str(data), "--quiet")
    assert result.exit_code == 0, result.output
    assert "registered EMPIAR-10982 as dataset 'empiar-10982'" in result.output
    record = catalog(data).get_dataset("empiar-10982")
    assert [image.name for image in record.images] == ["c-elegans-fib-sem-crop"]
    image = record.images[0]
    assert image.managed and image.shape == [21, 256, 256] and image.dtype == "uint8"
    assert image.voxel_size_nm == [5.0, 5.0, 5.0]  # 50 Å from the entry; the TIFF carries no calibration
    assert record.accession == "EMPIAR-10982" and record.licence == "CC0-1.0"
    assert record.title.startswith("C. elegans FIB-SEM volume")
    study = record.rembi["study"]
    assert study["authors"] == ["Conrad R", "Narayan K"]
    assert study["doi"] == "10.1016/j.cels.2022.12.006" and "Cell Systems 14:58-71" in study["publication"]
    assert {"name": "EMD-3197", "url": "https://www.ebi.ac.uk/emdb/EMD-3197"} in study["links"]
    assert {"name": "S-BIAD999", "url": "https://www.ebi.ac.uk/biostudies/studies/S-BIAD999"} in study["links"]
    assert "FIB-SEM" in record.rembi["image_acquisition"]["imaging_method"] and study["scale"] == "cellular"
    sets = {row["name"]: row for row in record.rembi["image_data"]["image_sets"]}
    assert sets["C. elegans FIB-SEM crop"]["imported"] is True
    assert sets["C. elegans FIB-SEM crop"]["images"] == ["c-elegans-fib-sem-crop"]
    assert sets["C. elegans FIB-SEM crop"]["voxel_type"] == "UNSIGNED BYTE"
    assert sets["C. elegans FIB-SEM crop"]["voxel_size_nm"] == [5.0, 5.0, 5.0]
    assert "multiframe" in sets["Beam-tilt movies"]["reason"]
    assert "DM4" in sets["Raw DM4 survey images"]["reason"]
    assert "HDF5" in sets["Mitochondria instance labels"]["reason"]
    assert all(not row["imported"] for name, row in sets.items() if name != "C. elegans FIB-SEM crop")
    assert "not imported\tRaw DM4 survey images\tformat DM4" in result.output


def test_empiar_entry_without_files_registers_its_metadata_and_lists_every_set(tmp_path: Path) -> None:
    data = tmp_path / "lamella"
    result = run("add-entry", "EMPIAR-10982", "--entry-json", str(EMPIAR), "--data-dir", str(data),
                 "--dataset", "celegans")
    assert result.exit_code == 0, result.output
    record = catalog(data).get_dataset("celegans")
    assert record.images == []
    reasons = [row["reason"] for row in record.rembi["image_data"]["image_sets"]]
    assert "its files were not given (add-entry --files DIR)" in reasons and len(reasons) == 4


def test_a_correlation_between_sets_not_imported_is_kept_with_the_reason(tmp_path: Path) -> None:
    document = _entry(experiment_type=7, image_correlation={
        "method": "affine from beads", "fiducials_used": "gold beads",
        "transformation_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
        "related_images": ["Raw DM4 survey images", "C. elegans FIB-SEM crop"]})
    entry = tmp_path / "entry.json"
    entry.write_text(json.dumps(document))
    data = tmp_path / "lamella"
    result = run("add-entry", "EMPIAR-10982", "--entry-json", str(entry), "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    record = catalog(data).get_dataset("empiar-10982")
    assert "CLEM" in record.rembi["image_acquisition"]["imaging_method"]
    correlation = record.rembi["image_correlation"]
    assert correlation["method"] == "affine from beads" and correlation["fiducials"] == "gold beads"
    (note,) = correlation["transforms"]
    assert note["stored"] is False and "not registered as one image" in note["reason"]
    assert note["transformation_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def _clem_entry(files: Path, second: str = "FM_raw") -> Path:
    """A correlative EMPIAR entry (experiment type 7): a SEM section and its chromatin fluorescence, PNG files
    (linked from ../shared/data) whose REMBI correlation record says the two share one pixel grid."""
    for folder in ("EM_raw", second):
        (files / "data" / folder).mkdir(parents=True, exist_ok=True)
    (files / "data" / "EM_raw" / "s6_ds.png").symlink_to(shared_file(CLEM / "EM_raw" / "s6_ds.png"))
    if second == "FM_raw":
        (files / "data" / "FM_raw" / "s6_ds.png").symlink_to(shared_file(CLEM / "FM_raw" / "s6_ds.png"))
    else:
        (files / "data" / second / "s6_ds.png").write_bytes(b"not a PNG at all")

    def image_set(name: str, directory: str) -> dict[str, Any]:
        return {"name": name, "directory": f"/data/{directory}", "category": "('OT', 'SECTIONS')",
                "header_format": "('OT', 'PNG')", "data_format": "('OT', 'PNG')", "num_images_or_tilt_series": 1,
                "frames_per_image": 1, "voxel_type": "('T1', '')", "pixel_width": 100.0, "pixel_height": 100.0}

    entry = {"EMPIAR-10999": {
        "title": "Array tomography CLEM of C. elegans sections", "experiment_type": 7,
        "imagesets": [image_set("SEM section 6", "EM_raw"), image_set("Chromatin fluorescence section 6", second)],
        "citation": [{"title": "DeepCLEM", "journal": "F1000Research", "year": 2020, "volume": "9",
                      "first_page": "1275", "doi": "10.12688/f1000research.27158.1", "authors": []}],
        "image_correlation": [{"method": "same pixel grid (identity)", "fiducials_used": "none",
                               "transformation_matrix": "1 0 0  0 1 0  0 0 1",
                               "related_images": ["Chromatin fluorescence section 6", "SEM section 6"]}],
    }}
    path = files / "entry.json"
    path.write_text(json.dumps(entry))
    return path


def test_a_correlative_empiar_entry_stores_its_transform(tmp_path: Path) -> None:
    entry = _clem_entry(tmp_path / "files")
    data = tmp_path / "lamella"
    result = run("add-entry", "EMPIAR-10999", "--entry-json", str(entry), "--files", str(tmp_path / "files"),
                 "--data-dir", str(data), "--quiet")
    assert result.exit_code == 0, result.output
    record = catalog(data).get_dataset("empiar-10999")
    images = {image.name: image for image in record.images}
    sem, fm = images["sem-section-6"], images["chromatin-fluorescence-section-6"]
    assert (sem.modality, fm.modality) == ("EM", "fluorescence")
    assert sem.shape == [1, 954, 1280] and sem.voxel_size_nm[-2:] == [10.0, 10.0]
    assert record.reference_image == "sem-section-6"
    stored = Transforms(catalog(data).sessions).current_for([fm.id], sem.id)[fm.id]
    assert stored.dimensions == 2 and np.allclose(stored.matrix, np.eye(4)) and stored.author == "EMPIAR-10999"
    assert record.rembi["image_correlation"]["transforms"][0]["stored"] is True
    assert record.rembi["study"]["doi"] == "10.12688/f1000research.27158.1"


def test_a_set_that_fails_to_convert_removes_the_sets_converted_before_it(tmp_path: Path) -> None:
    entry = _clem_entry(tmp_path / "files", second="broken")
    data = tmp_path / "lamella"
    result = run("add-entry", "EMPIAR-10999", "--entry-json", str(entry), "--files", str(tmp_path / "files"),
                 "--data-dir", str(data), "--quiet")
    one_line_error(result, "s6_ds.png")
    assert dataset_names(data) == []
    assert not (data / "images" / "empiar-10999").exists()


def test_a_matrix_that_cannot_be_used_is_refused_before_anything_is_converted(tmp_path: Path,
                                                                             empiar_files: Path) -> None:
    document = _entry(image_correlation=[{"transformation_matrix": [[1, 0, 0], [2, 0, 0], [0, 0, 1]],
                                          "related_images": ["C. elegans FIB-SEM crop", "Beam-tilt movies"]}])
    entry = tmp_path / "entry.json"
    entry.write_text(json.dumps(document))
    data = tmp_path / "lamella"
    result = run("add-entry", "EMPIAR-10982", "--entry-json", str(entry), "--files", str(empiar_files),
                 "--data-dir", str(data), "--quiet")
    one_line_error(result, "image correlation 1", "singular")
    assert dataset_names(data) == [] and not (data / "images").exists()


def _entry(**changes: Any) -> dict[str, Any]:
    document = json.loads(EMPIAR.read_text())
    entry = document["EMPIAR-10982"]
    for key, value in changes.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    return document


@pytest.mark.parametrize(("text", "words"), [
    ('{"EMPIAR-10982": {"title": ', ["not valid JSON"]),
    (json.dumps(_entry(imagesets=None)), ["imagesets", "Field required"]),
    (json.dumps(_entry(title=None)), ["title", "Field required"]),
    (json.dumps(_entry(imagesets=[{"name": "no directory"}])), ["imagesets.0.directory"]),
    (json.dumps(_entry(experiment_type=42)), ["experiment type 42"]),
    (json.dumps({"EMPIAR-10001": _entry()["EMPIAR-10982"]}), ["not EMPIAR-10982"]),
    ("[1, 2]", ["not a JSON object"]),
])  # fmt: skip
def test_malformed_empiar_entries_are_refused_in_one_line(tmp_path: Path, text: str, words: list[str]) -> None:
    entry = tmp_path / "entry.json"
    entry.write_text(text)
    data = tmp_path / "lamella"
    one_line_error(run("add-entry", "EMPIAR-10982", "--entry-json", str(entry), "--data-dir", str(data)), *words)
    assert dataset_names(data) == []


def test_missing_image_set_files_leave_nothing_registered(tmp_path: Path, empiar_files: Path) -> None:
    """The second set's folder is missing (found before anything is converted): no dataset, no image."""
    document = _entry()
    movies = document["EMPIAR-10982"]["imagesets"][1]
    movies["category"] = "('T1', '')"  # now importable: its folder must be there
    entry = tmp_path / "entry.json"
    entry.write_text(json.dumps(document))
    data = tmp_path / "lamella"
    result = run("add-entry", "EMPIAR-10982", "--entry-json", str(entry), "--files", str(empiar_files),
                 "--data-dir", str(data), "--quiet")
    one_line_error(result, "Beam-tilt movies", "no folder '/data/movies'")
    assert dataset_names(data) == []
    assert not any((data / "images").rglob("*.ome.zarr")) if (data / "images").exists() else True


def test_a_taken_dataset_name_is_refused_before_anything_is_converted(tmp_path: Path) -> None:
    data = tmp_path / "lamella"
    assert run("add-entry", "EMPIAR-10982", "--entry-json", str(EMPIAR), "--data-dir", str(data)).exit_code == 0
    one_line_error(run("add-entry", "EMPIAR-10982", "--entry-json", str(EMPIAR), "--data-dir", str(data)),
                   "already a dataset 'empiar-10982'")


def test_the_one_line_error_as_a_user_sees_it(tmp_path: Path) -> None:
    entry = tmp_path / "entry.json"
    entry.write_text(json.dumps(_entry(imagesets=[])))
    result = subprocess.run([*LAMELLA, "add-entry", "EMPIAR-10982", "--entry-json", str(entry), "--data-dir",
                             str(tmp_path / "lamella")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "lamella: error: EMPIAR-10982: imagesets: List should have at least 1 item after validation, not 0"]


def test_the_entry_is_fetched_from_the_archive_without_entry_json(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The HTTP client as the command uses it (here against a local server: the tests never reach EMPIAR)."""
    (tmp_path / "api" / "EMPIAR-10982").mkdir(parents=True)
    (tmp_path / "api" / "EMPIAR-10982" / "index.html").write_text(EMPIAR.read_text())
    with serving(tmp_path) as base:
        monkeypatch.setattr("viewer.entries.EMPIAR_API", base + "/api/{accession}/")
        from viewer.entries import fetch_empiar

        assert fetch_empiar("EMPIAR-10982")["EMPIAR-10982"]["experiment_type"] == 5
        from annotations.errors import InvalidEntry

        with pytest.raises(InvalidEntry, match="EMPIAR answered 404"):
            fetch_empiar("EMPIAR-99999")


# BioImage Archive


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    """A folder served over HTTP by a thread, on a free loopback port."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _volume(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=shape, dtype=np.uint8)


def _write(destination: Path, version: str, voxel: tuple[float, ...], unit: str = "nanometer", seed: int = 0) -> None:
    write_pyramid(ArraySource(_volume((8, 64, 64), seed)), destination, voxel_size=voxel,
                  options=PyramidOptions(ome_version=version, name=destination.stem, unit=unit))  # type: ignore[arg-type]


def _bioformats2raw(root: Path, voxel: tuple[float, ...], version: str = "0.4") -> None:
    """The layout bioformats2raw writes: no multiscales at the root, the image as series 0 (OME-Zarr 0.4 on
    Zarr v2, or 0.5 on Zarr v3 with the layout under ``ome``)."""
    root.mkdir()
    (root / "OME").mkdir()
    if version == "0.4":
        (root / ".zgroup").write_text('{"zarr_format": 2}')
        (root / ".zattrs").write_text('{"bioformats2raw.layout": 3}')
        (root / "OME" / ".zgroup").write_text('{"zarr_format": 2}')
        (root / "OME" / ".zattrs").write_text('{"series": ["0"]}')
    else:
        group = {"zarr_format": 3, "node_type": "group"}
        (root / "zarr.json").write_text(json.dumps(
            {**group, "attributes": {"ome": {"version": "0.5", "bioformats2raw.layout": 3}}}))
        (root / "OME" / "zarr.json").write_text(json.dumps(
            {**group, "attributes": {"ome": {"version": "0.5", "series": ["0"]}}}))
    _write(root / "0", version, voxel, seed=3)


@pytest.fixture(scope="module")
def archive() -> Iterator[str]:
    """OME-Zarr images of each layout, as the BioImage Archive publishes them, served over HTTP."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _write(root / "fib-sem.ome.zarr", "0.5", (30.0, 8.0, 8.0), seed=1)  # Zarr v3, OME 0.5
        _write(root / "airyscan.ome.zarr", "0.4", (0.2, 0.04, 0.04), unit="micrometer", seed=2)  # v2, 0.4, µm
        _bioformats2raw(root / "overview.ome.zarr", (50.0, 20.0, 20.0))
        _write(root / "furlong.ome.zarr", "0.4", (1.0, 1.0, 1.0), seed=4)
        attributes = json.loads((root / "furlong.ome.zarr" / ".zattrs").read_text())
        for axis in attributes["multiscales"][0]["axes"]:
            axis["unit"] = "furlong"
        (root / "furlong.ome.zarr" / ".zattrs").write_text(json.dumps(attributes))
        with serving(root) as base:
            yield base


def _image(uuid: str, label: str, uri: str | None, voxel_m: tuple[float, float, float] | None,
           image_format: str = ".ome.zarr") -> dict[str, Any]:
    representation: dict[str, Any] = {
        "uuid": f"rep-{uuid}", "version": 0, "representation_of_uuid": uuid, "use_type": "INTERACTIVE_DISPLAY",
        "image_format": image_format, "file_uri": [uri] if uri else [], "total_size_in_bytes": 0,
        "attribute": [],
    }
    if voxel_m is not None:
        representation.update(zip(("voxel_physical_size_z", "voxel_physical_size_y", "voxel_physical_size_x"),
                                  voxel_m, strict=True))
    return {"uuid": uuid, "version": 0, "label": label, "attribute": [], "representation": [representation]}


def bia_images(base: str, **replace: dict[str, Any]) -> list[dict[str, Any]]:
    images = {
        "fib-sem": _image("0f1e", "fib-sem", f"{base}/fib-sem.ome.zarr", (3e-8, 8e-9, 8e-9)),
        "airyscan": _image("1a2b", "airyscan", f"{base}/airyscan.ome.zarr", (2e-7, 4e-8, 4e-8)),
        "overview": _image("2c3d", "overview", f"{base}/overview.ome.zarr", (5e-8, 2e-8, 2e-8)),
        "tiff": _image("3e4f", "original czi", f"{base}/original.czi", None, image_format=".czi"),
    }
    return [*{**images, **replace}.values()]


def add_bia(tmp_path: Path, images: list[dict[str, Any]], study: dict[str, Any] | None = None) -> Result:
    images_json, study_json = tmp_path / "images.json", tmp_path / "study.json"
    images_json.write_text(json.dumps(images))
    study_json.write_text(json.dumps(study) if study is not None else BIA_STUDY.read_text())
    return run("add-entry", "S-BIAD1234", "--study-json", str(study_json), "--images-json", str(images_json),
               "--data-dir", str(tmp_path / "lamella"))


def test_bia_images_of_every_layout_are_registered_with_metadata_and_transforms(tmp_path: Path, archive: str) -> None:
    result = add_bia(tmp_path, bia_images(archive))
    assert result.exit_code == 0, result.output
    record = catalog(tmp_path / "lamella").get_dataset("s-biad1234")
    images = {image.name: image for image in record.images}
    assert sorted(images) == ["airyscan", "fib-sem", "overview"]
    fib, airy, overview = images["fib-sem"], images["airyscan"], images["overview"]
    assert (fib.zarr_format, fib.ome_version, fib.voxel_size_nm) == (3, "0.5", [30.0, 8.0, 8.0])
    assert (airy.zarr_format, airy.ome_version) == (2, "0.4")
    assert airy.voxel_size_nm == pytest.approx([200.0, 40.0, 40.0])  # micrometer understood
    assert overview.uri == f"{archive}/overview.ome.zarr/0" and overview.voxel_size_nm == [50.0, 20.0, 20.0]
    assert not any(image.managed for image in record.images)  # registered where they are, not copied
    listed = {row["label"]: row for row in record.rembi["image_data"]["images"]}
    assert listed["overview"]["layout"] == "bioformats2raw" and listed["fib-sem"]["layout"] == "multiscales"
    assert listed["original czi"]["imported"] is False and ".czi" in listed["original czi"]["reason"]
    assert record.licence == "CC-BY-4.0" and record.accession == "S-BIAD1234"
    assert record.rembi["study"]["authors"] == ["Ada Example", "Ben Sample"]
    assert record.rembi["study"]["doi"] == "10.1234/example.2024.1"
    assert {"name": "registration code", "url": "https://github.com/example/clem-pipeline"} in \
        record.rembi["study"]["links"]
    assert record.rembi["biosample"]["organism"] == "Homo sapiens"
    assert "freeze substituted" in record.rembi["specimen"]["sample_preparation"]
    acquisition = record.rembi["image_acquisition"]
    assert acquisition["imaging_method"] == "focused ion beam scanning electron microscopy; confocal microscopy"
    assert acquisition["microscope"] == "Zeiss Crossbeam 550; Zeiss LSM 900 Airyscan"
    correlation = record.rembi["image_correlation"]
    assert correlation["fiducials"] == "100 nm TetraSpeck beads"
    assert correlation["transforms"][0]["stored"] is True
    # The transform, read back: airyscan into the reference fib-sem, its translation converted to nm.
    assert record.reference_image == "fib-sem"
    stored = Transforms(catalog(tmp_path / "lamella").sessions).current_for([airy.id], fib.id)[airy.id]
    assert stored.kind == "affine" and stored.method == "archive-entry" and stored.author == "S-BIAD1234"
    assert np.allclose(stored.matrix, [[1, 0, 0, 500], [0, 1, 0, -250], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert "TetraSpeck" in stored.note
    assert "1 transform(s)" in result.output


def test_an_unknown_axis_unit_refuses_the_whole_study(tmp_path: Path, archive: str) -> None:
    images = bia_images(archive, tiff=_image("9f9f", "furlong", f"{archive}/furlong.ome.zarr", None))
    one_line_error(add_bia(tmp_path, images), "furlong", "not a length unit")
    assert dataset_names(tmp_path / "lamella") == []


def test_a_record_voxel_size_that_disagrees_with_the_ome_zarr_is_refused(tmp_path: Path, archive: str) -> None:
    images = bia_images(archive, fib_sem=_image("0f1e", "fib-sem", f"{archive}/fib-sem.ome.zarr", (3e-8, 8e-6, 8e-6)))
    images.pop(0)  # the fib-sem given twice otherwise
    one_line_error(add_bia(tmp_path, images), "the record gives voxels")
    assert dataset_names(tmp_path / "lamella") == []


def test_an_unreachable_image_leaves_nothing_registered(tmp_path: Path, archive: str) -> None:
    images = bia_images(archive, tiff=_image("9f9f", "gone", f"{archive}/gone.ome.zarr", None))
    one_line_error(add_bia(tmp_path, images))
    assert dataset_names(tmp_path / "lamella") == []


@pytest.mark.parametrize(("images", "words"), [
    ({"images": "none"}, ["a list of objects"]),
    ([{"label": "no uuid"}], ["uuid", "Field required"]),
    ([{"uuid": "x", "representation": [{"image_format": ".ome.zarr", "file_uri": "http://a"}]}], ["file_uri"]),
    ([{"uuid": "x"}, {"representation_of_uuid": "y", "image_format": ".ome.zarr"}], ["image 'y'"]),
])  # fmt: skip
def test_malformed_bia_image_records_are_refused(tmp_path: Path, images: Any, words: list[str]) -> None:
    one_line_error(add_bia(tmp_path, images), *words)
    assert dataset_names(tmp_path / "lamella") == []


@pytest.mark.parametrize(("change", "words"), [
    ({"accession_id": "S-BIAD9999"}, ["not S-BIAD1234"]),
    ({"title": None}, ["title"]),
    ({"correlation_method": [{"transformation_matrix": "1 2 3", "related_images": ["airyscan", "fib-sem"]}]},
     ["16, 12 or 9 numbers"]),
    ({"correlation_method": [{"transformation_matrix": "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1",
                              "related_images": ["airyscan", "fib-sem"]}]}, ["singular"]),
])  # fmt: skip
def test_malformed_bia_records_are_refused(tmp_path: Path, archive: str, change: dict[str, Any],
                                           words: list[str]) -> None:
    study = json.loads(BIA_STUDY.read_text())
    for key, value in change.items():
        if value is None:
            study.pop(key)
        else:
            study[key] = value
    one_line_error(add_bia(tmp_path, bia_images(archive), study), *words)
    assert dataset_names(tmp_path / "lamella") == []


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_lamella_add_opens_the_bioformats2raw_layout(tmp_path: Path, version: str) -> None:
    _bioformats2raw(tmp_path / "plate.ome.zarr", (40.0, 10.0, 10.0), version)
    data = tmp_path / "lamella"
    result = run("add", str(tmp_path / "plate.ome.zarr"), "--dataset", "b2r", "--data-dir", str(data))
    assert result.exit_code == 0, result.output
    image = catalog(data).get_image("b2r", "plate")
    assert image.uri == str((tmp_path / "plate.ome.zarr" / "0").resolve()) and image.voxel_size_nm == [40.0, 10.0, 10.0]
