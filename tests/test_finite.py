"""Hostile numbers never break Lamella nor reach what it stores; what older versions stored is repaired.

Checks are judged after every conversion (units, pixels to nm, 2D to 3D, composition); every refusal
is InvalidTransform. ``lamella check --repair`` quarantines unusable transforms and cleans viewer states.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from sqlalchemy import Engine, func, select, text

from annotations.catalog import Catalog
from annotations.db import make_engine, make_sessions, migrate
from annotations.models import ImageTransform, QuarantinedDocument
from annotations.repair import lenient_loads, non_finite_paths, sanitized
from annotations.transforms import TransformRecord, Transforms
from annotations.viewer_sessions import ViewerSessions
from tests.conftest import ROOT, Server
from tiling.errors import InvalidTransform
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource
from tiling.transform_formats import parse_transform_file
from tiling.transforms import (
    check_affine,
    check_pairs,
    check_points,
    fit_affine,
    transform_problem,
)
from viewer.correlation import Correlation, affine_in_nm, transform_json
from viewer.registration import add_existing
from viewer.state import dataset_state, landmark_points, move_landmarks, with_landmark_layers

HUGE_INTEGER = int("9" * 400)
ORIGIN = "http://viewer.example"


def translated(x: float) -> list[list[float]]:
    matrix = np.eye(4)
    matrix[0, 3] = x
    return matrix.tolist()


MOVING = [[0.0, 0.0, 0.0], [1000.0, 0.0, 0.0], [0.0, 1000.0, 0.0], [0.0, 0.0, 1000.0]]


# The checks, one by one


@contextlib.contextmanager
def no_warnings() -> Iterator[None]:
    """Fail on any warning (an overflow in NumPy warns before it gives inf)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_translation_is_judged_after_the_unit_conversion() -> None:
    with no_warnings(), pytest.raises(InvalidTransform, match=r"translation \(1e\+300 m\) is beyond ±1e\+12 nm"):
        affine_in_nm(translated(1e300), "m")
    with pytest.raises(InvalidTransform, match=r"translation .* beyond"):
        affine_in_nm(translated(2e3), "m")  # 2 km: a small number, but 2e12 nm once converted
    assert affine_in_nm(translated(0.5), "mm")[0, 3] == 5e5
    assert affine_in_nm(translated(-900.0), "m")[0, 3] == pytest.approx(-9e11)


@pytest.mark.parametrize(
    ("matrix", "words"),
    [
        (np.diag([1e-320, 1e-320, 1e-320, 1.0]), "scales by"),  # inverse infinite, yet perfectly conditioned
        (np.diag([1e-7, 1e-7, 1e-7, 1.0]), "scales by"),
        (np.diag([1e7, 1.0, 1.0, 1.0]), "scales by"),
        (np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (np.diag([1.0, 1.0, 1e-10, 1.0]), "singular"),  # condition number 1e10
        (np.array([[1, 2, 3, 0], [2, 4, 6, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "singular"),
        (np.zeros((4, 4)), "last row"),
        (np.array(translated(1.5e12)), "translation"),
        (np.array(translated(math.inf)), "non-finite"),
        ([[HUGE_INTEGER, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "finite numbers"),
    ],
)
def test_singular_ill_conditioned_and_out_of_bounds_matrices_are_refused(matrix: Any, words: str) -> None:
    with pytest.raises(InvalidTransform, match=words):
        check_affine(matrix)
    if np.asarray(matrix, dtype=object).shape == (4, 4):
        assert transform_problem("affine", 3, np.asarray(matrix, dtype=object).tolist(), None, None, None)


def test_well_conditioned_matrices_pass() -> None:
    matrix = np.array([[0.8, -0.6, 0.05, 12.5], [0.6, 0.8, 0.0, -7.25], [0.0, 0.1, 1.5, 3.0], [0, 0, 0, 1.0]])
    np.testing.assert_array_equal(check_affine(matrix), matrix)
    check_affine(np.diag([1e-5, 1e-5, 1e-5, 1.0]))  # 1 nm to 10 µm: unusual, but a scale
    assert transform_problem("affine", 3, matrix.tolist(), None, [1.0, None], 1.0) is None


@pytest.mark.parametrize(
    ("first", "words"),
    [
        ([1e155, 0, 0], "beyond"),  # squared in the duplicate check, it would overflow
        ([HUGE_INTEGER, 0, 0], "too large"),  # no float holds it: OverflowError before
        ([float("nan"), 0, 0], "non-finite"),
        ([-math.inf, 0, 0], "non-finite"),
        ([1.5e12, 0, 0], "beyond"),
    ],
)
def test_absurd_landmark_coordinates_are_refused_before_any_arithmetic(first: list[Any], words: str) -> None:
    points = [first, *MOVING[1:]]
    with no_warnings():
        for call in (
            lambda: check_points(points, "moving landmarks"),
            lambda: check_pairs(points, MOVING, "affine", 3),
            lambda: check_pairs(MOVING, points, "affine", 3),
            lambda: fit_affine(points, MOVING, "similarity", 3),
        ):
            with pytest.raises(InvalidTransform, match=words):
                call()


@pytest.mark.parametrize(
    ("stored", "words"),
    [
        ({"matrix": translated(math.nan)}, "non-finite"),
        ({"landmarks": {"moving": [[0, 0, math.inf]], "reference": [[0, 0, 0]]}}, "non-finite"),
        ({"landmarks": {"moving": [[0, 0, 1e155]], "reference": [[0, 0, 0]]}}, "beyond"),
        ({"landmarks": {"moving": [[0, 0, 0]], "reference": [[0, 0, 0], [1, 1, 1]]}}, "1 moving landmarks but 2"),
        ({"residuals": [1.0, None, math.nan]}, "residuals"),
        ({"rms": math.inf}, "RMS"),
        ({"kind": "tps", "matrix": None}, "without landmarks"),
        ({"matrix": None}, "without a matrix"),
        ({"dimensions": 4}, "dimensions"),
    ],
)
def test_stored_transforms_are_judged_by_the_same_criteria(stored: dict[str, Any], words: str) -> None:
    fields = {"kind": "affine", "dimensions": 3, "matrix": translated(5.0), "landmarks": None, "residuals": None,
              "rms": None, **stored}
    problem = transform_problem(fields["kind"], fields["dimensions"], fields["matrix"], fields["landmarks"],
                                fields["residuals"], fields["rms"])
    assert problem is not None and words in problem


# Transform files: every format, every hostile number

HOSTILE = ["nan", "NaN", "inf", "-Infinity", "1e400", "-1e400", "9" * 400, "9" * 5000, "1e300"]
ROWS = "1 0 0 {x}\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"
MOBIE_VIEW = (
    '{"views": {"v": {"sourceTransforms": [{"affine": {"parameters": [1, 0, 0, {x}, 0, 1, 0, 0, 0, 0, 1, 0], '
    '"sources": ["em"]}}]}}}'
)
EC_CLEM_MATRIX = (
    "<root><MatrixTransformation m00='1' m01='0' m02='0' m03='{x}' m10='0' m11='1' m12='0' m13='0' m20='0' "
    "m21='0' m22='1' m23='0' m30='0' m31='0' m32='0' m33='1'/></root>"
)
EC_CLEM_POINTS = (
    "<root><transformation type='AFFINE'>"
    "<dataset type='source' dimension='2' n='3'>"
    "<point id='0'><coordinate dimension='0'>{x}</coordinate><coordinate dimension='1'>0</coordinate></point>"
    "<point id='1'><coordinate dimension='0'>10</coordinate><coordinate dimension='1'>0</coordinate></point>"
    "<point id='2'><coordinate dimension='0'>0</coordinate><coordinate dimension='1'>10</coordinate></point>"
    "</dataset><dataset type='target' dimension='2' n='3'>"
    "<point id='0'><coordinate dimension='0'>0</coordinate><coordinate dimension='1'>0</coordinate></point>"
    "<point id='1'><coordinate dimension='0'>10</coordinate><coordinate dimension='1'>0</coordinate></point>"
    "<point id='2'><coordinate dimension='0'>0</coordinate><coordinate dimension='1'>10</coordinate></point>"
    "</dataset></transformation></root>"
)
EC_CLEM_V1_PAIRS = (
    "<root><TargetSize width='10' height='10'/>"
    "<pointspairsinphysicalcoordinates xsource='{x}' ysource='0' zsource='0' xtarget='0' ytarget='0' ztarget='0'/>"
    "</root>"
)
BIGWARP = '"Pt-0","true","{x}","2","3","4","5","6"\n"Pt-1","true","1","0","0","1","0","0"\n'
POINT_LIST = "1 {x} 2 3\n2 4 5 6\n3 7 8 10\n"
GOOD_POINT_LIST = "1 1 2 3\n2 4 5 6\n3 7 8 10\n"
FILES = {
    "matrix-json": ("m.json", "[[1, 0, 0, {x}], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]"),
    "matrix-json-object": ("m.json", '{"matrix": [[1, 0, 0, {x}], [0, 1, 0, 0], [0, 0, 1, 0]], "unit": "um"}'),
    "matrix-csv": ("m.csv", ROWS),
    "matrix-text": ("m.txt", ROWS),
    "mobie-12": ("a.txt", "1 0 0 {x} 0 1 0 0 0 0 1 0"),
    "mobie-json-12": ("a.json", "[1, 0, 0, {x}, 0, 1, 0, 0, 0, 0, 1, 0]"),
    "mobie-view": ("views.json", MOBIE_VIEW),
    "ec-clem-matrix": ("t.xml", EC_CLEM_MATRIX),
    "ec-clem-points": ("s.xml", EC_CLEM_POINTS),
    "ec-clem-v1-pairs": ("p.xml", EC_CLEM_V1_PAIRS),
    "bigwarp": ("landmarks.csv", BIGWARP),
}


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("form", [*FILES, "point-lists-moving", "point-lists-reference"])
def test_hostile_numbers_in_every_file_format_are_invalid_transforms(form: str, value: str) -> None:
    if form == "bigwarp" and value in ("inf", "-Infinity"):
        value = "-1e400"  # a spelled-out infinity is BigWarp's own mark of an unpaired point: skipped, by design
    with no_warnings(), pytest.raises(InvalidTransform) as caught:
        if form == "point-lists-moving":
            parse_transform_file("moving.txt", POINT_LIST.replace("{x}", value), reference_text=GOOD_POINT_LIST)
        elif form == "point-lists-reference":
            parse_transform_file("moving.txt", GOOD_POINT_LIST, reference_text=POINT_LIST.replace("{x}", value))
        else:
            name, template = FILES[form]
            parse_transform_file(name, template.replace("{x}", value))
    assert "\n" not in str(caught.value)


def test_long_ids_and_dimensions_are_read_not_crashed_on() -> None:
    ids = "9" * 5000
    pairs = parse_transform_file("a.txt", f"{ids} 1 2 3\n2 4 5 6\n3 7 8 10\n",
                                 reference_text=f"{ids} 1 2 3\n2 4 5 6\n3 7 8 11\n").landmarks
    assert pairs is not None and pairs.names[0] == ids
    hostile = EC_CLEM_POINTS.replace("<coordinate dimension='1'>0</coordinate>",
                                     f"<coordinate dimension='{ids}'>0</coordinate>", 1).replace("{x}", "1")
    with pytest.raises(InvalidTransform, match="is not 0, 1 or 2"):
        parse_transform_file("s.xml", hostile)


def test_compositions_that_overflow_are_refused() -> None:
    big = "1e12"  # within bounds, but 40 of them multiply to 1e480
    step = f"<MatrixTransformation order='{{k}}' m00='{big}' m01='0' m02='0' m10='0' m11='{big}' m12='0' " \
           "m20='0' m21='0' m22='1'/>"
    text = "<root><TargetSize width='10' height='10'/>" + "".join(step.replace("{k}", str(k)) for k in range(40))
    with no_warnings(), pytest.raises(InvalidTransform, match="overflows"):
        parse_transform_file("t_transfo.xml", text + "</root>")
    view = {"sourceTransforms": [{"affine": {"parameters": [1e12, 0, 0, 0, 0, 1e12, 0, 0, 0, 0, 1e12, 0]}}] * 40}
    with no_warnings(), pytest.raises(InvalidTransform, match="overflows"):
        parse_transform_file("view.json", json.dumps(view))


# Moving landmarks never writes a non-finite point


def landmark_state(points: list[list[Any]]) -> dict[str, Any]:
    state = with_landmark_layers({"layers": []}, "em", "lm")
    state["layers"][1]["annotations"] = [{"type": "point", "id": f"p{i}", "point": p} for i, p in enumerate(points)]
    return state


@pytest.mark.parametrize(
    "mapping",
    [
        lambda points: points * np.nan,
        lambda points: points + np.inf,
        lambda points: points * 1e300 * 1e300,
        lambda points: points + 2e12,
        lambda points: points[:1],
        lambda points: np.linalg.inv(np.zeros((3, 3))) @ points.T,
    ],
    ids=["nan", "inf", "overflow", "absurd", "shape", "raises"],
)
def test_moving_landmarks_never_writes_non_finite_points(mapping: Any) -> None:
    state = landmark_state([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 0.5]])
    moved = move_landmarks(state, "lm", mapping)
    json.dumps(moved, allow_nan=False)
    assert moved == state  # kept where they were
    good = move_landmarks(state, "lm", lambda points: points + 1)
    assert [a["point"] for a in good["layers"][1]["annotations"]] == [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 0.5]]


def test_landmark_points_refuse_what_no_float_holds() -> None:
    for bad in (HUGE_INTEGER, float("nan"), 1e300):
        with pytest.raises(InvalidTransform, match="coordinate"):
            landmark_points(landmark_state([[bad, 1, 2], [1, 2, 3]]), "lm")
    assert landmark_points(landmark_state([[1, 2, 3]]), "lm") == [[1.0, 2.0, 3.0]]


# A real catalog: two small images


def small_store(path: Path, seed: int, voxel: tuple[float, float, float]) -> str:
    volume = np.random.default_rng(seed).integers(0, 255, size=(4, 40, 48), dtype=np.uint8)
    write_pyramid(ArraySource(volume), path, voxel_size=voxel, options=PyramidOptions(chunk=32, name=path.stem))
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("finite-stores")
    return (small_store(root / "em.ome.zarr", 1, (50.0, 10.0, 10.0)),
            small_store(root / "lm.ome.zarr", 2, (200.0, 100.0, 100.0)))


@pytest.fixture
def catalog_engine(database_url: str, stores: tuple[str, str]) -> Iterator[tuple[str, Engine, Catalog]]:
    engine = make_engine(database_url)
    migrate(engine)
    catalog = Catalog(make_sessions(engine))
    add_existing(catalog, stores[0], "clem", name="em")
    add_existing(catalog, stores[1], "clem", name="lm", modality="fluorescence")
    yield database_url, engine, catalog
    engine.dispose()


def test_the_service_refuses_and_stores_nothing(catalog_engine: tuple[str, Engine, Catalog]) -> None:
    _, engine, catalog = catalog_engine
    transforms = Transforms(catalog.sessions)
    correlation = Correlation(catalog, transforms)
    refusals = [
        lambda: correlation.set_matrix("clem", "lm", translated(1e300), unit="m"),
        lambda: correlation.set_matrix("clem", "lm", np.diag([1e-320, 1e-320, 1e-320, 1.0]).tolist()),
        lambda: correlation.set_matrix("clem", "lm", np.diag([1.0, 0.0, 1.0, 1.0]).tolist()),
        lambda: correlation.fit_landmarks("clem", "lm", [[1e155, 0, 0], *MOVING[1:]], MOVING),
        lambda: correlation.fit_landmarks("clem", "lm", [[HUGE_INTEGER, 0, 0], *MOVING[1:]], MOVING),
        lambda: correlation.fit_landmarks("clem", "lm", MOVING, [[0, 0, 0], [1, 0, 0], [0, 1, 0], [9e11, 0, 1]],
                                          units="pixels"),  # within bounds in pixels, beyond once in nm
        lambda: correlation.fit_landmarks("clem", "lm", [[1e6, 0, 0], *MOVING[1:]], MOVING, units="m"),
        lambda: correlation.import_file("clem", "lm", "m.json", json.dumps({"matrix": translated(1e11), "unit": "m"})),
        lambda: correlation.import_file("clem", "lm", "p.xml", EC_CLEM_V1_PAIRS.replace("{x}", "1e400")),
    ]
    for refuse in refusals:
        with no_warnings(), pytest.raises(InvalidTransform):
            refuse()
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(ImageTransform)).scalar() == 0
    # What is within bounds is stored.
    record = correlation.set_matrix("clem", "lm", translated(0.25), unit="mm")
    assert record.matrix is not None and record.matrix[0][3] == 2.5e5


def test_a_legacy_transform_never_turns_session_points_into_nan(catalog_engine: tuple[str, Engine, Catalog]) -> None:
    """A saved transform moves open sessions' landmarks through the previous one; a previous one that
    older versions stored broken (a NaN inverse) leaves the points where they were."""
    _, _, catalog = catalog_engine
    sessions = catalog.sessions
    viewer_sessions = ViewerSessions(sessions)
    correlation = Correlation(catalog, Transforms(sessions))
    dataset = catalog.get_dataset("clem")
    state = with_landmark_layers(dataset_state(ORIGIN, dataset), "em", "lm")
    state["layers"][-1]["annotations"] = [{"type": "point", "id": "a", "point": [3.0, 4.0, 0.5]}]
    token = viewer_sessions.create(dataset.id, state, {}).token
    legacy = TransformRecord(id=99, image_id=dataset.image("lm").id, reference_image_id=dataset.image("em").id,
                             created_at="2024-01-01T00:00:00Z", kind="affine", dimensions=3, method="matrix",
                             matrix=np.diag([1e-320, 1e-320, 1e-320, 1.0]).tolist())
    correlation.set_matrix("clem", "lm", translated(1000.0))
    assert correlation.refresh_sessions(viewer_sessions, "clem", moved=("lm", legacy)) == [token]
    after = viewer_sessions.get(token).state
    json.dumps(after, allow_nan=False)
    assert after["layers"][-1]["annotations"][0]["point"] == [3.0, 4.0, 0.5]
    assert after["layers"][1]["source"]["transform"]["matrix"][0][3] != 0  # the layer itself did move


def test_history_of_a_quarantined_transform_is_strict_json() -> None:
    legacy = TransformRecord(id=1, image_id=1, reference_image_id=2, created_at="2024-01-01T00:00:00Z",
                             kind="affine", dimensions=3, method="matrix", matrix=translated(math.nan),
                             residuals_nm=[math.inf], rms_nm=math.nan, quarantine_reason="non-finite",
                             quarantined_at="2024-02-01T00:00:00Z")
    data = transform_json(legacy)
    json.dumps(data, allow_nan=False)
    assert data["matrix"][0][3] is None and data["rms_nm"] is None and data["quarantine_reason"] == "non-finite"


# Repair of what older versions stored


def test_sanitized_removes_annotations_and_members_not_layers() -> None:
    state = lenient_loads(
        '{"position": [1, NaN, 3], "crossSectionScale": Infinity, "projectionScale": 1e400, "layout": "xy",'
        ' "layers": [{"name": "a", "annotations": [{"type": "point", "point": [1, 2, NaN]},'
        ' {"type": "point", "point": [1, 2, 3]}], "opacity": NaN, "source": {"transform": {"matrix":'
        ' [[1, 0, 0, NaN], [0, 1, 0, 0], [0, 0, 1, 0]]}, "url": "precomputed://x"}}], "big": ' + "9" * 5000 + "}"
    )
    assert len(list(non_finite_paths(state))) == 7
    clean, removed = sanitized(state)
    json.dumps(clean, allow_nan=False)
    assert not list(non_finite_paths(clean))
    assert clean == {"layout": "xy", "layers": [{"name": "a", "annotations": [{"type": "point", "point": [1, 2, 3]}],
                                                 "source": {"transform": {}, "url": "precomputed://x"}}]}
    assert set(removed) == {"position", "crossSectionScale", "projectionScale", "layers[0].annotations[0]",
                            "layers[0].opacity", "layers[0].source.transform.matrix", "big"}
    assert sanitized(math.nan, "config") == ({}, ["(the whole document)"])


def lamella(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "viewer.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_check_reports_and_repair_quarantines(catalog_engine: tuple[str, Engine, Catalog], tmp_path: Path) -> None:
    url, engine, catalog = catalog_engine
    postgres = engine.dialect.name == "postgresql"
    # What older versions wrote: Python's json writes bare NaN and Infinity; PostgreSQL's JSON type refuses
    # those but keeps a literal such as 1e400 as written, which reads back as infinity.
    nan, inf = ("1e400", "-1e400") if postgres else ("NaN", "-Infinity")
    as_json = "CAST(:{} AS JSON)" if postgres else ":{}"
    dataset = catalog.get_dataset("clem")
    em, lm = dataset.image("em").id, dataset.image("lm").id
    good = [[1, 0, 0, 100.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    rows = [  # (matrix, residuals, rms)
        (json.dumps(good), "null", None),  # usable: becomes current again once the newer ones are quarantined
        (f"[[1, 0, 0, {nan}], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]", "null", None),
        (json.dumps(good), f"[1.5, {inf}]", None),
        (json.dumps([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "null", None),  # singular
        (json.dumps(np.diag([1e-320, 1e-320, 1e-320, 1.0]).tolist()), "null", None),  # infinite inverse
    ]
    if postgres:
        rows.append((json.dumps(good), "null", float("nan")))  # a float column holds NaN
    insert = text(
        "INSERT INTO image_transforms (image_id, reference_image_id, kind, dimensions, matrix, landmarks, method,"
        " fit, residuals_nm, rms_nm, author, note, created_at) VALUES (:image, :reference, 'affine', 3, "
        + as_json.format("matrix") + ", " + as_json.format("landmarks") + ", 'matrix', NULL, "
        + as_json.format("residuals") + ", :rms, '', '', CURRENT_TIMESTAMP)"
    )
    with engine.begin() as connection:
        for matrix, residuals, rms in rows:
            connection.execute(insert, {"image": lm, "reference": em, "matrix": matrix, "landmarks": "null",
                                        "residuals": residuals, "rms": rms})
    ids = [row[0] for row in engine.connect().execute(select(ImageTransform.id).order_by(ImageTransform.id))]
    state = with_landmark_layers(dataset_state(ORIGIN, dataset), "em", "lm")
    state_text = json.dumps(state)[:-1] + f', "position": [1, {nan}, 2], "crossSectionScale": 1.5}}'
    points = (f'[{{"type": "point", "id": "bad", "point": [{nan}, 1, 2]}}, '
              '{"type": "point", "id": "ok", "point": [5, 6, 7]}]')
    state_text = state_text.replace('"annotations": []', f'"annotations": {points}', 1)  # the em landmarks
    config_text = f'{{"zoom": {inf}, "showUI": true}}'
    clean_config = '{"showUI": true}'
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO viewer_sessions (token, dataset_id, state, generation, config, config_generation,"
                 " created_at, updated_at) VALUES (:token, :dataset, " + as_json.format("state") + ", 'server/0', "
                 + as_json.format("config") + ", 'server/1', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
            [{"token": "broken-session-token", "dataset": dataset.id, "state": state_text, "config": config_text},
             {"token": "healthy-session-token", "dataset": dataset.id, "state": json.dumps(state),
              "config": clean_config}],
        )
    data_dir = str(tmp_path / "data")

    found = lamella("check", "--database-url", url, "--data-dir", data_dir)
    assert found.returncode != 0, found.stdout + found.stderr
    lines = found.stdout.splitlines()
    assert "ok\tclem/em" in lines and "ok\tclem/lm" in lines
    bad = [line.split("\t") for line in lines if line.startswith("bad-transform")]
    assert [(fields[1], fields[2]) for fields in bad] == [("clem/lm", f"#{i}") for i in ids[1:]]
    reasons = dict((fields[2], fields[3]) for fields in bad)
    assert "non-finite" in reasons[f"#{ids[1]}"] and "residuals" in reasons[f"#{ids[2]}"]
    assert "singular" in reasons[f"#{ids[3]}"] and "scales by" in reasons[f"#{ids[4]}"]
    sessions_found = [line.split("\t") for line in lines if line.startswith("bad-session")]
    assert [(fields[1], fields[2], fields[3].split(":")[0]) for fields in sessions_found] == [
        ("clem", "broken…", "state"), ("clem", "broken…", "config")]
    assert "position[1]" in sessions_found[0][3] and "annotations[0].point[0]" in sessions_found[0][3]
    assert "cannot be used" in found.stderr and "--repair" in found.stderr

    repaired = lamella("check", "--repair", "--database-url", url, "--data-dir", data_dir)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert [line.split("\t")[2] for line in repaired.stdout.splitlines()
            if line.startswith("quarantined")] == [f"#{i}" for i in ids[1:]]
    assert sum(line.startswith("repaired-session") for line in repaired.stdout.splitlines()) == 2

    transforms = Transforms(catalog.sessions)
    history = transforms.history(lm)
    assert [record.id for record in history] == ids[::-1]  # every row kept
    assert all(record.quarantined_at is not None and record.quarantine_reason for record in history[:-1])
    assert history[-1].quarantined_at is None
    assert transforms.current_for([lm], em)[lm].id == ids[0]
    for record in history:
        json.dumps(transform_json(record), allow_nan=False)

    with engine.connect() as connection:
        raw_state, raw_config, generation, config_generation = connection.execute(text(
            "SELECT CAST(state AS TEXT), CAST(config AS TEXT), generation, config_generation FROM viewer_sessions"
            " WHERE token = 'broken-session-token'")).one()
        kept = connection.execute(select(QuarantinedDocument.kind, QuarantinedDocument.ref,
                                         QuarantinedDocument.document, QuarantinedDocument.reason)
                                  .order_by(QuarantinedDocument.id)).all()
        healthy = connection.execute(text("SELECT generation FROM viewer_sessions WHERE token = 'healthy-session-token'"
                                          )).scalar()

    def strict(raw: str) -> Any:
        def refuse(constant: str) -> None:
            raise ValueError(constant)

        return json.loads(raw, parse_constant=refuse)

    repaired_state, repaired_config = strict(raw_state), strict(raw_config)
    assert not list(non_finite_paths(repaired_state)) and not list(non_finite_paths(repaired_config))
    assert generation.startswith("server/") and generation != "server/0"
    assert config_generation.startswith("server/") and config_generation != "server/1"
    assert healthy.startswith("server/")
    assert "position" not in repaired_state and repaired_state["crossSectionScale"] == 1.5
    landmarks = {item["name"]: item for item in repaired_state["layers"]}["em landmarks"]
    assert [annotation["id"] for annotation in landmarks["annotations"]] == ["ok"]
    assert repaired_config == {"showUI": True}
    assert [(kind, ref) for kind, ref, _, _ in kept] == [("viewer_state", "broken-session-token"),
                                                          ("viewer_config", "broken-session-token")]
    assert kept[0][2] == state_text and kept[1][2] == config_text and all(reason for *_, reason in kept)
    session = ViewerSessions(catalog.sessions).get("broken-session-token")
    assert session.state == repaired_state

    again = lamella("check", "--database-url", url, "--data-dir", data_dir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not [line for line in again.stdout.splitlines() if line.startswith("bad-")]


# Over HTTP: refusals are 400, never 500 (nor anything stored)

BASE = "/api/datasets/correlative/images/fluorescence"


def as_curator(server: Server) -> dict[str, str]:
    """Headers for writes: transforms and their fits are the curators'."""
    return server.admin


@pytest.mark.parametrize(
    ("path", "body", "codes"),
    [
        ("transform", '{"matrix": [[1, 0, 0, 1e300], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "unit": "m"}',
         {"invalid_transform"}),
        ("transform", '{"matrix": [[1e-320, 0, 0, 0], [0, 1e-320, 0, 0], [0, 0, 1e-320, 0], [0, 0, 0, 1]]}',
         {"invalid_transform"}),
        ("landmarks", '{"moving": [[1e155, 0, 0], [1000, 0, 0], [0, 1000, 0], [0, 0, 1000]], "reference": '
                      '[[0, 0, 0], [1000, 0, 0], [0, 1000, 0], [0, 0, 1000]]}', {"invalid_transform"}),
        # JSON numbers no float holds: refused as a body (bad_request) or by the checks (invalid_transform).
        ("transform", '{"matrix": [[1, 0, 0, 1e400], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}',
         {"invalid_transform", "bad_request"}),
        ("landmarks", '{"moving": [[' + "9" * 400 + ', 0, 0], [1000, 0, 0], [0, 1000, 0], [0, 0, 1000]], '
                      '"reference": [[0, 0, 0], [1000, 0, 0], [0, 1000, 0], [0, 0, 1000]]}',
         {"invalid_transform", "bad_request"}),
    ],
    ids=["1e300-m", "1e-320-scale", "1e155-landmark", "1e400", "400-digit-landmark"],
)
def test_hostile_bodies_get_400_and_store_nothing(server: Server, path: str, body: str, codes: set[str]) -> None:
    before = server.get(f"{BASE}/transform", params={"history": "1"}).json()["history"]
    method = requests.put if path == "transform" else requests.post
    answer = method(f"{server.url}{BASE}/{path}", data=body, timeout=60, headers=as_curator(server))
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] in codes and answer.json()["message"]
    assert server.get(f"{BASE}/transform", params={"history": "1"}).json()["history"] == before


def test_a_400_digit_point_placed_in_a_session_gets_400(server: Server) -> None:
    headers = as_curator(server)
    opened = requests.post(f"{server.url}/api/datasets/correlative/sessions", timeout=60, headers=headers)
    token = opened.json()["token"]
    assert requests.post(f"{server.url}/api/sessions/{token}/landmark-layers", json={"image": "fluorescence"},
                         timeout=60, headers=headers).ok
    current = server.get(f"/api/sessions/{token}").json()
    for item in current["state"]["layers"]:
        if item["name"].endswith("landmarks"):
            item["annotations"] = [{"type": "point", "id": f"p{i}", "point": [HUGE_INTEGER if i == 0 else i, i, 1]}
                                   for i in range(4)]
    # No double holds the number: the state is not strict JSON we can store, and nothing changes.
    answer = requests.put(f"{server.url}/api/sessions/{token}", timeout=60, headers=headers,
                          json={"state": current["state"], "generation": current["generation"]})
    assert answer.status_code == 400 and answer.json()["code"] == "bad_request", answer.text
    assert server.get(f"/api/sessions/{token}").json()["generation"] == current["generation"]
    answer = requests.post(f"{server.url}/api/sessions/{token}/register", json={"image": "fluorescence"}, timeout=60,
                           headers=headers)
    assert answer.status_code == 400, answer.text
    assert "no landmarks" in answer.json()["message"]
