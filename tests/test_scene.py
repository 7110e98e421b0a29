"""A correlative dataset as an OME-Zarr 0.6 scene: the released schemas, ngff-zarr reading it back, the landmark
pairs meeting within their residuals, the conformance cases through ``lamella scene-map``, and bad input."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from scipy import ndimage

from annotations.catalog import Catalog
from annotations.db import make_engine, make_sessions, migrate, sqlite_url
from annotations.transforms import Transforms
from tests.conftest import SHARED_DATA, Server, shared_file, start_server, stop_server
from tests.test_cli import assert_one_line_error, lamella
from tiling.demo import FLUORESCENCE_VOXEL_NM, fluorescence_affine
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.scene_transforms import Scene
from tiling.scenes import AffinePlacement, SceneFile, SceneImage, SplinePlacement, plan_scene, write_scene
from tiling.sources import ArraySource
from tiling.transforms import apply_affine
from viewer.correlation import Correlation
from viewer.registration import add_existing, import_file, import_labels
from viewer.scene_export import plan_dataset_scene

CRYO = SHARED_DATA / "clem_cryo_fib_sem_lm_3dct_landmarks"
SEM_PIXEL_NM = 226_000 / 1024  # as tests/test_clem_real.py: the data bar over the image width
LM_PIXEL_NM = 100.0
EM_VOXEL_NM = (30.0, 8.0, 8.0)  # z, y, x


@dataclass
class Scenes:
    data_dir: Path
    root: Path  # where the scenes are written
    correlation: Correlation


def bump(points: np.ndarray) -> np.ndarray:
    """A smooth non-linear placement (nm, x y z): a shift and a Gaussian bulge of up to 60 nm in x."""
    centre = np.array([300.0, 250.0, 150.0])
    bulge = 60 * np.exp(-np.sum((points - centre) ** 2, axis=1) / (2 * 200.0**2))
    return points + np.array([120.0, -80.0, 30.0]) + np.c_[bulge, np.zeros((len(points), 2))]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Scenes:
    """Datasets in a data directory of their own: "clem" (EM, a labels image, an affine-placed fluorescence
    stack and a spline-placed one), "cryo" (the 3DCT cryo-CLEM pair, fitted affine and by a spline), "bare"
    (one image, no transform)."""
    root = tmp_path_factory.mktemp("scene-data")
    engine = make_engine(sqlite_url(root))
    migrate(engine)
    sessions = make_sessions(engine)
    catalog = Catalog(sessions)
    correlation = Correlation(catalog, Transforms(sessions))
    stores = root / "stores"
    rng = np.random.default_rng(15)
    em = rng.integers(0, 255, size=(12, 64, 80), dtype=np.uint8)
    write_pyramid(ArraySource(em), stores / "em.ome.zarr", voxel_size=EM_VOXEL_NM,
                  options=PyramidOptions(chunk=32, name="em"))
    stain = rng.integers(0, 4000, size=(8, 24, 30), dtype=np.uint16)
    for name in ("fluorescence", "spline"):
        write_pyramid(ArraySource(stain), stores / f"{name}.ome.zarr", voxel_size=FLUORESCENCE_VOXEL_NM,
                      options=PyramidOptions(chunk=32, name=name))
    add_existing(catalog, str(stores / "em.ome.zarr"), "clem", name="em")
    add_existing(catalog, str(stores / "fluorescence.ome.zarr"), "clem", name="fluorescence",
                 modality="fluorescence")
    add_existing(catalog, str(stores / "spline.ome.zarr"), "clem", name="spline", modality="fluorescence")
    import_labels(catalog, root / "images", "cells", "clem", image="em", name="cells", show_progress=False,
                  source=ArraySource((em > 128).astype(np.uint32)), segments=False)
    correlation.set_matrix("clem", "fluorescence", fluorescence_affine(), unit="nm", method="demo")
    grid = np.stack(np.meshgrid([0, 300, 600], [0, 250, 500], [0, 150, 300], indexing="ij"), -1).reshape(-1, 3)
    moving = grid.astype(float) + rng.normal(0, 20, grid.shape)
    correlation.fit_landmarks("clem", "spline", moving, bump(moving), fit="tps", units="nm", dimensions=3)
    add_existing(catalog, str(stores / "em.ome.zarr"), "bare", name="em")
    if CRYO.exists():
        for name, path, pixel in (("sem", "EB_060_marked.tiff", SEM_PIXEL_NM), ("lm", "MAX_SD_area5-0.tif", 100.0)):
            import_file(catalog, root / "images", str(CRYO / path), "cryo", name=name, show_progress=False,
                        modality="EM" if name == "sem" else "fluorescence", voxel_size_nm=(1.0, pixel, pixel))
        add_existing(catalog, catalog.get_image("cryo", "lm").uri, "cryo", name="lm-spline", modality="fluorescence")
        for image, fit in (("lm", "affine"), ("lm-spline", "tps")):
            correlation.import_file("cryo", image, "LM_coordinates.txt", (CRYO / "LM_coordinates.txt").read_text(),
                                    reference_text=(CRYO / "SEM_coordinates.txt").read_text(), fit=fit)
    engine.dispose()
    scenes_root = tmp_path_factory.mktemp("scenes")
    result = lamella("export-scene", "clem", str(scenes_root / "clem"), "--link", "--data-dir", str(root),
                     check=True)
    assert result.stdout == f"wrote the scene of 'clem' (4 images) to {scenes_root / 'clem'}\n"
    if CRYO.exists():  # the library the command calls, in this process (a second command costs seconds)
        write_scene(plan_dataset_scene(correlation, "cryo")[1], scenes_root / "cryo")
    return Scenes(root, scenes_root, correlation)


def scene_map(scene: Path, source: str, target: str, points: list[list[float]]) -> np.ndarray:
    result = lamella("scene-map", str(scene), source, target, json.dumps(points), check=True)
    return np.asarray(json.loads(result.stdout)["coordinates"])


# --- the released 0.6 schemas, as ngff-zarr ships them -----------------------------------------------------------


def schema_validator(name: str) -> Any:
    """A validator of the 0.6 schema ``name``, its references resolved among the schemas ngff-zarr ships."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    folder = files("ngff_zarr") / "spec" / "0.6" / "schemas"
    registry: Registry = Registry()
    for entry in folder.iterdir():
        if entry.name.endswith(".schema"):
            document = json.loads(entry.read_text())
            registry = registry.with_resource(document["$id"], Resource.from_contents(document))
    schema = json.loads((folder / f"{name}.schema").read_text())
    return Draft202012Validator(schema, registry=registry)


def metadata_files(scene: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(scene.rglob("zarr.json")):
        yield path, json.loads(path.read_text())


def test_every_zarr_json_is_valid_0_6(scenes: Scenes) -> None:
    validators = {name: schema_validator(name) for name in ("scene", "strict_image")}
    for dataset in ("clem", "cryo"):
        scene = scenes.root / dataset
        if not scene.exists():
            continue
        kinds: dict[Path, str] = {}
        for path, document in metadata_files(scene):
            assert document["zarr_format"] == 3, path
            ome = document.get("attributes", {}).get("ome")
            if document["node_type"] == "array" or ome is None:
                kinds[path] = "array" if document["node_type"] == "array" else "group"
                continue
            assert ome["version"] == "0.6", path  # the schema also takes "0.6rc0"; readers of 0.6 do not
            kind = "scene" if "scene" in ome else "strict_image"
            errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validators[kind].iter_errors(
                document["attributes"])]
            assert not errors, (path, errors[:3])
            kinds[path] = kind
        assert kinds.pop(scene / "zarr.json") == "scene" and "scene" not in kinds.values()
        assert kinds[scene / "coordinateTransformations" / "zarr.json"] == "group"
        assert sum(kind == "strict_image" for kind in kinds.values()) == len(
            scenes.correlation.catalog.get_dataset(dataset).images) + 2  # and each spline's two fields


def test_scene_layout_reference_first_and_one_edge_per_image(scenes: Scenes) -> None:
    scene = scenes.root / "clem"
    ome = json.loads((scene / "zarr.json").read_text())["attributes"]["ome"]
    systems, edges = ome["scene"]["coordinateSystems"], ome["scene"]["coordinateTransformations"]
    assert systems[0]["name"] == "reference"
    assert [axis["name"] for axis in systems[0]["axes"]] == ["z", "y", "x"]
    assert {axis["unit"] for axis in systems[0]["axes"]} == {"nanometer"}
    by_image = {edge["input"]["path"]: edge for edge in edges}
    assert sorted(by_image) == ["cells", "em", "fluorescence", "spline"]
    assert all(edge["output"] == {"name": "reference"} for edge in edges)
    assert by_image["em"]["type"] == "identity" and by_image["cells"]["type"] == "identity"
    # The affine as the specification writes it: rows and columns z y x, translation last, no homogeneous row.
    expected = fluorescence_affine()[np.ix_([2, 1, 0, 3], [2, 1, 0, 3])][:3]
    np.testing.assert_allclose(by_image["fluorescence"]["affine"], expected, atol=1e-9)
    spline = by_image["spline"]
    assert spline["type"] == "bijection"
    assert {spline[d]["type"] for d in ("forward", "inverse")} == {"displacements"}
    field = json.loads((scene / spline["forward"]["path"] / "zarr.json").read_text())["attributes"]["ome"]
    assert field["multiscales"][0]["coordinateSystems"][0]["axes"][0] == {
        "name": "c", "type": "displacement", "discrete": True}
    # Chunks as stored: the same bytes (hard links here, --link), the array metadata unchanged.
    em = Path(scenes.correlation.catalog.get_image("clem", "em").uri)
    stored = sorted(p.relative_to(em) for p in (em / "0").rglob("*") if p.is_file())
    assert stored
    for relative in stored:
        assert (scene / "em" / relative).read_bytes() == (em / relative).read_bytes()
        assert (scene / "em" / relative).stat().st_ino == (em / relative).stat().st_ino
    # The segmentation is an image of its own: no "image-label" pointing outside it.
    cells = json.loads((scene / "cells" / "zarr.json").read_text())["attributes"]
    assert "image-label" not in cells.get("ome", {})


# --- read back with ngff-zarr: the landmark pairs meet within their residuals ------------------------------------


def ngff_edge_mapping(scene_path: Path, scene: Any, image: str) -> Any:
    """Moving image "physical" (its axis order and unit) -> "reference", from what ngff-zarr parsed."""
    from ngff_zarr import from_ome_zarr
    from ngff_zarr.v06.zarr_metadata import Affine, Bijection, Displacements, Identity, TransformSequence

    edge = next(t for t in scene.coordinateTransformations if t.input.path == image)
    assert edge.output.name == "reference" and edge.output.path is None

    def field(transform: Displacements) -> Any:
        multiscales = from_ome_zarr(str(scene_path / transform.path))
        image = multiscales.images[0]
        vectors = np.asarray(image.data, dtype=np.float64)
        axes = [axis for axis in image.dims if axis != "c"]
        scale = np.array([image.scale[a] for a in axes])
        translation = np.array([image.translation[a] for a in axes])

        def apply(points: np.ndarray) -> np.ndarray:
            index = ((points - translation) / scale).T
            order = {"linear": 1, "cubic": 3}[transform.interpolation or "linear"]
            return points + np.stack([ndimage.map_coordinates(v, index, order=order) for v in vectors], axis=1)

        return apply

    def of(transform: Any) -> Any:
        if isinstance(transform, Identity):
            return lambda points: points
        if isinstance(transform, Affine):
            matrix = np.asarray(transform.affine)
            return lambda points: points @ matrix[:, :-1].T + matrix[:, -1]
        if isinstance(transform, Bijection):
            return of(transform.forward)
        if isinstance(transform, Displacements):
            return field(transform)
        if isinstance(transform, TransformSequence):
            steps = [of(step) for step in transform.transformations]
            return lambda points: [points := step(points) for step in steps][-1]
        raise AssertionError(f"unexpected transform {transform}")

    return of(edge)


@pytest.mark.parametrize(("dataset", "image"), [("clem", "spline"), ("cryo", "lm"), ("cryo", "lm-spline")])
def test_ngff_zarr_reads_the_scene_and_landmark_pairs_meet(scenes: Scenes, dataset: str, image: str) -> None:
    from ngff_zarr import NgffScene

    path = scenes.root / dataset
    if not path.exists():
        shared_file(CRYO / "LM_coordinates.txt")
    scene = NgffScene.from_ome_zarr(str(path), validate=True)
    assert sorted(scene.images) == sorted(i.name for i in scenes.correlation.catalog.get_dataset(dataset).images)
    record = scenes.correlation.current(dataset, image)[1]
    assert record is not None and record.landmarks is not None
    moving, reference = np.asarray(record.landmarks["moving"]), np.asarray(record.landmarks["reference"])
    axes = [axis.name for axis in scene.images[image].metadata.coordinateSystems[0].axes]
    order = [2 - "zyx".index(name) for name in axes]  # x y z columns in the image's axis order
    mapped = ngff_edge_mapping(path, scene, image)(moving[:, order])
    missed = np.linalg.norm(mapped - reference[:, order], axis=1)
    if record.kind == "tps":
        # A spline passes through its landmarks; the sampled field misses them by its interpolation only,
        # within each pair's stored (leave-one-out) residual.
        stored = np.asarray(record.residuals_nm, dtype=float)
        assert np.all(missed <= stored), (missed, stored)
        assert missed.max() < 0.02 * np.ptp(reference[:, order], axis=0).max()
    else:
        np.testing.assert_allclose(missed, record.residuals_nm, rtol=1e-6, atol=1e-6)


def test_fluorescence_maps_through_its_known_affine(scenes: Scenes) -> None:
    from ngff_zarr import NgffScene

    path = scenes.root / "clem"
    scene = NgffScene.from_ome_zarr(str(path), validate=True)
    points_xyz = np.array([[0.0, 0.0, 0.0], [480.0, 240.0, 120.0], [700.0, 500.0, 280.0]])
    expected = apply_affine(fluorescence_affine(), points_xyz)[:, ::-1]
    np.testing.assert_allclose(ngff_edge_mapping(path, scene, "fluorescence")(points_xyz[:, ::-1]), expected,
                               atol=1e-6)


# --- the dingus ------------------------------------------------------------------------------------------------


def test_scene_map_through_lamella_scenes(scenes: Scenes) -> None:
    path = scenes.root / "clem"
    points_zyx = [[0.0, 0.0, 0.0], [120.0, -240.0, 480.0]]
    expected = apply_affine(fluorescence_affine(), np.asarray(points_zyx)[:, ::-1])[:, ::-1]
    np.testing.assert_allclose(scene_map(path, "fluorescence", "reference", points_zyx), expected, atol=1e-6)
    as_text = lamella("scene-map", str(path), "fluorescence", "reference", "0,0,0", "120,-240,480", check=True)
    np.testing.assert_allclose(json.loads(as_text.stdout)["coordinates"], expected, atol=1e-6)
    scene = Scene.open(path)  # what the command runs, in this process
    np.testing.assert_allclose(scene.map_points("reference", "fluorescence", expected), points_zyx, atol=1e-6)
    # Voxel indices of level 0 (z y x) through the level's scale, then the affine.
    physical = np.array([[1.0, 2.0, 3.0]]) * FLUORESCENCE_VOXEL_NM
    np.testing.assert_allclose(scene.map_points("fluorescence/0", "reference", [[1, 2, 3]]),
                               apply_affine(fluorescence_affine(), physical[:, ::-1])[:, ::-1], atol=1e-6)
    # The spline forward through one field and back through the other; image to image through the reference.
    record = scenes.correlation.current("clem", "spline")[1]
    assert record is not None and record.landmarks is not None
    moving = np.asarray(record.landmarks["moving"])[:, ::-1]
    there = scene.map_points("spline", "reference", moving)
    np.testing.assert_allclose(there, np.asarray(record.landmarks["reference"])[:, ::-1], atol=1.0)
    np.testing.assert_allclose(scene.map_points("reference", "spline", there), moving, atol=1.0)
    across = scene.map_points("spline", "fluorescence", moving)
    np.testing.assert_allclose(scene.map_points("reference", "fluorescence", there), across, atol=1e-9)
    # Unknown systems, points of the wrong size: one line, non-zero.
    assert_one_line_error(lamella("scene-map", str(path), "nowhere", "reference", "1,2,3"), "nowhere")
    with pytest.raises(ValueError, match="3 axes"):
        scene.map_points("em", "reference", [[1, 2]])


def conformance_cases() -> Path:
    """The case folders inside the installed ``ome-zarr-transformations-conformance`` wheel (data files)."""
    try:
        distribution = importlib.metadata.distribution("ome-zarr-transformations-conformance")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("ome-zarr-transformations-conformance is not installed (make .venv/.test-installed installs it)")
    marker = next(f for f in distribution.files or [] if f.name == "conformance.toml")
    return Path(str(distribution.locate_file(marker))).parents[1]


def write_case(folder: Path, scene: dict[str, Any] | None, description: str, source: str, target: str,
               points: list[list[float]], expected: list[list[float]] | None, tolerance: float = 1e-6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if scene is not None:
        (folder / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
            "ome": {"version": "0.6", "scene": scene}}}))
    toml = [f'description = "{description}"', f"should_error = {'true' if expected is None else 'false'}",
            f"absolute_tolerance = {tolerance}", "relative_tolerance = 0.001", "[source]", f'name = "{source}"',
            f"coordinates = {json.dumps(points)}", "[target]", f'name = "{target}"']
    if expected is not None:
        toml.append(f"coordinates = {json.dumps(expected)}")
    (folder / "conformance.toml").write_text("\n".join(toml) + "\n")


def space(name: str, axes: str = "zyx") -> dict[str, Any]:
    return {"name": name, "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in axes]}


def test_conformance_cases_and_lamella_cases_pass(scenes: Scenes, tmp_path: Path) -> None:
    """The published cases (2D, the older string form of input and output) and ours: 3D affines, a Lamella scene
    with its fields, image to image; run by the published runner, ``oztc``, with ``lamella scene-map``."""
    published = conformance_cases()
    ours = tmp_path / "cases"
    matrix = fluorescence_affine()[np.ix_([2, 1, 0, 3], [2, 1, 0, 3])][:3]
    points = [[10.0, 20.0, 30.0], [-5.0, 400.0, 7.5]]
    mapped = (np.asarray(points) @ matrix[:, :3].T + matrix[:, 3]).tolist()
    affine = {"coordinateSystems": [space("input"), space("output")], "coordinateTransformations": [
        {"type": "affine", "affine": matrix.tolist(), "input": {"name": "input"}, "output": {"name": "output"}}]}
    write_case(ours / "affine3d.ome.zarr", affine, "3D affine", "input", "output", points, mapped)
    write_case(ours / "affine3d_inverse.ome.zarr", affine, "3D affine, inverted", "output", "input", mapped, points)
    chained = {"coordinateSystems": [space("a"), space("b"), space("c")], "coordinateTransformations": [
        {"type": "scale", "scale": [2, 3, 4], "input": {"name": "a"}, "output": {"name": "b"}},
        {"type": "affine", "affine": matrix.tolist(), "input": {"name": "c"}, "output": {"name": "b"}}]}
    through = np.linalg.solve(np.vstack([matrix, [0, 0, 0, 1]]), np.c_[np.asarray(points) * [2, 3, 4], np.ones(2)].T)
    write_case(ours / "scale_then_inverse_affine.ome.zarr", chained, "a -> b -> c against an affine", "a", "c",
               points, through[:3].T.tolist())
    field_only = {"coordinateSystems": [space("input"), space("output")], "coordinateTransformations": [
        {"type": "displacements", "path": "coordinateTransformations/none", "input": {"name": "input"},
         "output": {"name": "output"}}]}
    write_case(ours / "displacements_have_no_inverse.ome.zarr", field_only, "a field is not walked backwards",
               "output", "input", [[1.0, 2.0, 3.0]], None)
    # A Lamella scene as a case: the spline's landmarks through the sampled field.
    record = scenes.correlation.current("clem", "spline")[1]
    lamella_case = ours / "lamella_spline.ome.zarr"
    shutil.copytree(scenes.root / "clem", lamella_case, copy_function=os.link)
    write_case(lamella_case, None, "Lamella's spline, sampled", "spline", "reference",
               np.asarray(record.landmarks["moving"])[:4, ::-1].tolist(),  # type: ignore[index]
               np.asarray(record.landmarks["reference"])[:4, ::-1].tolist(), tolerance=2.0)  # type: ignore[index]
    shutil.copytree(scenes.root / "clem", ours / "lamella_fluorescence.ome.zarr", copy_function=os.link)
    expected = apply_affine(fluorescence_affine(), np.asarray(points)[:, ::-1])[:, ::-1]
    write_case(ours / "lamella_fluorescence.ome.zarr", None, "Lamella's affine", "fluorescence", "reference",
               points, expected.tolist())
    runner = Path(sys.executable).with_name("oztc")
    dingus = [sys.executable, "-m", "viewer.cli", "scene-map"]
    result = subprocess.run([str(runner), "-B", str(published), str(ours), "--", *dingus],
                            capture_output=True, text=True, timeout=300)
    rows = dict(line.split("\t") for line in result.stdout.splitlines() if "\t" in line)
    assert len(rows) == 24 + 6, result.stdout + result.stderr
    assert {name for name, status in rows.items() if status != "pass"} == set(), result.stdout
    assert result.returncode == 0


# --- bad input ----------------------------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_bad_input_is_one_line_and_writes_nothing(scenes: Scenes, tmp_path: Path) -> None:
    data = ["--data-dir", str(scenes.data_dir)]
    assert_one_line_error(lamella("export-scene", "bare", str(tmp_path / "bare"), *data), "no transforms")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    assert_one_line_error(lamella("export-scene", "clem", str(occupied), *data), "not an empty folder")
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied"]
    # In this process, what the command calls: an unknown dataset, an image gone, a failure half-way.
    from annotations.errors import DatasetNotFound

    with pytest.raises(DatasetNotFound):
        plan_dataset_scene(scenes.correlation, "nothing-here")
    store = Path(scenes.correlation.catalog.get_image("clem", "spline").uri)
    hidden = store.with_name("hidden.ome.zarr")
    store.rename(hidden)
    try:
        with pytest.raises(ValueError, match="spline"):
            plan_dataset_scene(scenes.correlation, "clem")
    finally:
        hidden.rename(store)
    files = plan_dataset_scene(scenes.correlation, "clem")[1]
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = [*files[:5], SceneFile("em/0/c/9/9/9", source=tmp_path / "vanished"), *files[5:]]
    with pytest.raises(FileNotFoundError):
        write_scene(broken, empty)
    assert list(empty.iterdir()) == [] and leftovers(tmp_path) == []
    write_scene(files, empty)  # an empty folder is taken; copies by default, not links
    assert (empty / "zarr.json").is_file() and (empty / "em" / "0" / "zarr.json").stat().st_nlink == 1
    assert leftovers(tmp_path) == []


# --- the API ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene_server(scenes: Scenes) -> Iterator[Server]:
    running = start_server(scenes.data_dir)
    yield running
    stop_server(running)


def test_api_streams_the_same_scene(scenes: Scenes, scene_server: Server) -> None:
    answer = scene_server.get("/api/datasets/clem/scene")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/zip"
    assert 'filename="clem.ome.zarr.zip"' in answer.headers["Content-Disposition"]
    written = scenes.root / "clem"
    on_disk = {p.relative_to(written).as_posix(): p.read_bytes() for p in written.rglob("*") if p.is_file()}
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        names = archive.namelist()
        assert names[0] == "zarr.json"  # first, as zipped OME-Zarr (RFC-9) wants
        assert {name: archive.read(name) for name in names} == on_disk
    tar = scene_server.get("/api/datasets/clem/scene", params={"format": "tar"})
    with tarfile.open(fileobj=io.BytesIO(tar.content)) as archive:
        assert sorted(archive.getnames()) == sorted(on_disk)
    bare = scene_server.get("/api/datasets/bare/scene")
    assert bare.status_code == 400 and "no transforms" in bare.json()["message"]
    assert scene_server.get("/api/datasets/nothing-here/scene").status_code == 404
    head = requests.head(f"{scene_server.url}/api/datasets/clem/scene", timeout=30)
    assert head.content == b"" and head.status_code == 200
    varying = {"Date"}
    assert {k: v for k, v in head.headers.items() if k not in varying} == \
        {k: v for k, v in answer.headers.items() if k not in varying}


def test_an_image_in_micrometres_has_its_unit_folded_into_its_edge(tmp_path: Path) -> None:
    """0.6 converts no units between systems: an image stored in µm reaches the nm reference through its edge."""
    rng = np.random.default_rng(3)
    write_pyramid(ArraySource(rng.integers(0, 255, (4, 16, 16), dtype=np.uint8)), tmp_path / "em.ome.zarr",
                  voxel_size=EM_VOXEL_NM, options=PyramidOptions(name="em"))
    for name in ("lm", "lm-spline"):
        write_pyramid(ArraySource(rng.integers(0, 255, (4, 8, 8), dtype=np.uint8)), tmp_path / f"{name}.ome.zarr",
                      voxel_size=(0.2, 0.1, 0.1), options=PyramidOptions(name=name, unit="micrometer"))
    moving = np.array([[0, 0, 0], [800, 0, 0], [0, 800, 0], [0, 0, 800], [800, 800, 800], [400, 300, 200.0]])
    images = [SceneImage("em", tmp_path / "em.ome.zarr", None),
              SceneImage("lm", tmp_path / "lm.ome.zarr", AffinePlacement(fluorescence_affine())),
              SceneImage("lm-spline", tmp_path / "lm-spline.ome.zarr", SplinePlacement(moving, bump(moving), 3))]
    write_scene(plan_scene(images), tmp_path / "scene")
    validator = schema_validator("image")
    for path, document in metadata_files(tmp_path / "scene"):
        if document["node_type"] == "group" and "multiscales" in document.get("attributes", {}).get("ome", {}):
            assert not list(validator.iter_errors(document["attributes"])), path
    from ngff_zarr import NgffScene

    NgffScene.from_ome_zarr(str(tmp_path / "scene"), validate=True)  # a sequence of a scale and a bijection too
    scene = Scene.open(tmp_path / "scene")
    points_um = np.array([[0.2, 0.3, 0.5], [0.0, 0.7, 0.1]])  # z y x
    expected = apply_affine(fluorescence_affine(), points_um[:, ::-1] * 1000)[:, ::-1]
    np.testing.assert_allclose(scene.map_points("lm", "reference", points_um), expected, atol=1e-6)
    np.testing.assert_allclose(scene.map_points("reference", "lm", expected), points_um, atol=1e-9)
    spline_um = moving[:, ::-1] / 1000
    # The spline sampled on about 50³ points: within a nanometre of it over this 1 µm cube.
    np.testing.assert_allclose(scene.map_points("lm-spline", "reference", spline_um), bump(moving)[:, ::-1],
                               atol=1.0)
    np.testing.assert_allclose(scene.map_points("reference", "lm-spline", bump(moving)[:, ::-1]), spline_um,
                               atol=1e-3)


def test_a_zarr_v2_image_joins_with_its_chunks_as_stored(tmp_path: Path) -> None:
    """An OME-Zarr 0.4 image (Zarr v2): its metadata said in v3 over the same chunk files, read back as stored."""
    import zarr
    from ngff_zarr import NgffScene

    rng = np.random.default_rng(4)
    em = rng.integers(0, 60000, (6, 40, 50), dtype=np.uint16)
    write_pyramid(ArraySource(em), tmp_path / "em.ome.zarr", voxel_size=EM_VOXEL_NM,
                  options=PyramidOptions(name="em", chunk=32, ome_version="0.4"))
    write_pyramid(ArraySource(em[:, :16, :16]), tmp_path / "ref.ome.zarr", voxel_size=EM_VOXEL_NM,
                  options=PyramidOptions(name="ref"))
    images = [SceneImage("ref", tmp_path / "ref.ome.zarr", None),
              SceneImage("em", tmp_path / "em.ome.zarr", AffinePlacement(np.eye(4)))]
    write_scene(plan_scene(images), tmp_path / "scene")
    NgffScene.from_ome_zarr(str(tmp_path / "scene"), validate=True)
    level = tmp_path / "scene" / "em" / "0"
    np.testing.assert_array_equal(zarr.open_array(str(level), mode="r")[...], em)
    stored = sorted(p.relative_to(tmp_path / "em.ome.zarr" / "0") for p in (tmp_path / "em.ome.zarr" / "0").rglob("*")
                    if p.is_file() and not p.name.startswith(".z"))
    assert stored and all((level / p).read_bytes() == (tmp_path / "em.ome.zarr" / "0" / p).read_bytes()
                          for p in stored)
    assert not list(level.glob(".z*")) and json.loads((level / "zarr.json").read_text())["zarr_format"] == 3
    group = json.loads((tmp_path / "scene" / "em" / "zarr.json").read_text())["attributes"]
    assert not list(schema_validator("image").iter_errors(group)) and list(group) == ["ome"]
    assert Scene.open(tmp_path / "scene").map_points("em/0", "reference", [[1, 2, 3]]).tolist() == [[30, 16, 24]]
