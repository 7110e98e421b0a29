"""Correlative registration through the real server: transforms, landmarks, splines, overlay controls."""

from typing import Any

import numpy as np
import pytest
import requests

from tests.conftest import Server
from tiling.demo import fluorescence_affine
from tiling.transforms import apply_affine

BASE = "/api/datasets/correlative/images/fluorescence"


def put(server: Server, path: str, body: Any) -> requests.Response:
    """PUT as the admin (transforms are the curators')."""
    if isinstance(body, str):  # JSON that json.dumps would refuse to write (NaN)
        return requests.put(server.url + path, data=body, timeout=60, headers=server.admin)
    return requests.put(server.url + path, json=body, timeout=60, headers=server.admin)


def post(server: Server, path: str, body: Any = None) -> requests.Response:
    """POST as the admin: sessions opened this way act with the admin's rights."""
    return requests.post(server.url + path, json=body, timeout=60, headers=server.admin)


def new_session(server: Server, dataset: str) -> dict[str, Any]:
    response = post(server, f"/api/datasets/{dataset}/sessions")
    assert response.status_code == 201
    return response.json()


def layer(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in state["layers"] if item["name"] == name)


def base_resolution(server: Server, dataset: str, image: str) -> np.ndarray:
    info = server.get(f"/api/datasets/{dataset}/images/{image}/precomputed/info").json()
    return np.asarray(info["scales"][0]["resolution"], dtype=float)  # x, y, z nm


def emitted_placement(state: dict[str, Any], name: str, moving_nm: np.ndarray, output_nm: np.ndarray,
                      moving_indices: np.ndarray) -> np.ndarray:
    """Reference physical nm where Neuroglancer draws the centres of ``moving_indices``.

    Neuroglancer (render_coordinate_transform.ts) scales the linear part of a source transform by
    input/output dimension scales; the translation is in output units; precomputed voxel centres
    sit at model coordinate index + 1/2, and so do the reference's (identity) in global coordinates.
    """
    source = layer(state, name)["source"]
    transform = source["transform"]
    scales = np.array([transform["outputDimensions"][axis][0] for axis in "xyz"]) * 1e9
    np.testing.assert_allclose(scales, output_nm)
    assert all(transform["outputDimensions"][axis][1] == "m" for axis in "xyz")
    matrix = np.asarray(transform["matrix"])
    linear = matrix[:, :3] * moving_nm[None, :] / output_nm[:, None]
    global_coordinates = (moving_indices + 0.5) @ linear.T + matrix[:, 3]
    return (global_coordinates - 0.5) * output_nm


def test_demo_has_fluorescence_placed_by_its_known_affine(server: Server) -> None:
    state = new_session(server, "demo")["state"]
    assert [item["name"] for item in state["layers"]] == ["em", "organelles", "fluorescence"]
    fluorescence = layer(state, "fluorescence")
    assert fluorescence["blend"] == "additive" and fluorescence["shaderControls"]["color"].startswith("#")
    moving_nm = base_resolution(server, "demo", "fluorescence")
    reference_nm = base_resolution(server, "demo", "em")
    np.testing.assert_allclose(moving_nm, [24, 24, 40])
    indices = np.array([[0, 0, 0], [100, 50, 20], [199, 199, 55]], dtype=float)
    placed = emitted_placement(state, "fluorescence", moving_nm, reference_nm, indices)
    np.testing.assert_allclose(placed, apply_affine(fluorescence_affine(), indices * moving_nm), atol=1e-6)
    stored = server.get("/api/datasets/demo/images/fluorescence/transform").json()
    assert stored["method"] == "demo" and stored["kind"] == "affine" and stored["author"] == "lamella demo"
    np.testing.assert_allclose(stored["matrix"], fluorescence_affine())


def test_landmarks_round_trip_to_the_emitted_state(server: Server) -> None:
    """Landmarks in moving physical nm land on their partners in the state we emit."""
    truth = fluorescence_affine()
    rng = np.random.default_rng(11)
    moving = rng.uniform([0, 0, 0], [4000, 4000, 2000], (8, 3))
    reference = apply_affine(truth, moving)
    answer = post(server, f"{BASE}/landmarks", {"moving": moving.tolist(), "reference": reference.tolist(),
                                                "fit": "similarity"})
    assert answer.status_code == 201, answer.text
    result = answer.json()
    assert result["saved"] and result["rms_nm"] < 1e-6 and len(result["landmarks"]) == 8
    state = new_session(server, "correlative")["state"]
    moving_nm = base_resolution(server, "correlative", "fluorescence")
    reference_nm = base_resolution(server, "correlative", "em")
    # Each landmark, as a (fractional) moving voxel index, is drawn at its partner.
    placed = emitted_placement(state, "fluorescence", moving_nm, reference_nm, moving / moving_nm)
    np.testing.assert_allclose(placed, reference, atol=1e-6)
    # Provenance and history.
    history = server.get(f"{BASE}/transform", params={"history": "1"}).json()["history"]
    assert history[0]["method"] == "landmarks" and history[0]["fit"] == "similarity"
    assert history[0]["author"] == "admin" and len(history[0]["landmarks"]["moving"]) == 8


def test_put_matrix_in_micrometres_and_export(server: Server) -> None:
    matrix = np.eye(4)
    matrix[:3, 3] = [1.5, -2.0, 0.25]  # µm
    answer = put(server, f"{BASE}/transform", {"matrix": matrix.tolist(), "unit": "um", "note": "stage offset"})
    assert answer.status_code == 200, answer.text
    stored = server.get(f"{BASE}/transform").json()
    np.testing.assert_allclose(np.asarray(stored["matrix"])[:3, 3], [1500, -2000, 250])
    assert stored["method"] == "matrix" and stored["note"] == "stage offset"
    mobie = server.get(f"{BASE}/transform", params={"format": "mobie"}).json()
    view = next(iter(mobie["views"].values()))
    parameters = view["sourceTransforms"][0]["affine"]["parameters"]
    np.testing.assert_allclose(parameters, [1, 0, 0, 1.5, 0, 1, 0, -2.0, 0, 0, 1, 0.25])
    neuroglancer = server.get(f"{BASE}/transform", params={"format": "neuroglancer"}).json()
    assert [item["name"] for item in neuroglancer["layers"]] == ["em", "fluorescence"]
    assert neuroglancer["dimensions"]["x"] == [8e-9, "m"]
    assert layer(neuroglancer, "fluorescence")["source"]["transform"]["outputDimensions"]["x"] == [8e-9, "m"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"matrix": np.zeros((4, 4)).tolist()}, "invalid_transform"),
        ({"matrix": np.diag([1.0, 0.0, 1.0, 1.0]).tolist()}, "invalid_transform"),
        ('{"matrix": [[1, 0, 0, NaN], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}', "bad_request"),  # not strict JSON
        ({"matrix": [[1, 0], [0, 1]]}, "invalid_transform"),
        ({"matrix": np.eye(4).tolist(), "reference": "u16"}, "invalid_transform"),
        ({"matrix": np.eye(4).tolist(), "reference": "fluorescence"}, "invalid_transform"),
        ({"matrix": np.eye(4).tolist(), "unit": "furlong"}, "invalid_transform"),
        ({}, "bad_request"),
        ({"file": {"name": "x.xml", "content": "<not xml"}}, "invalid_transform"),
    ],
)
def test_bad_transforms_are_refused_and_nothing_is_saved(server: Server, body: Any, code: str) -> None:
    before = server.get(f"{BASE}/transform", params={"history": "1"}).json()["history"]
    answer = put(server, f"{BASE}/transform", body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == code and answer.json()["message"]
    assert server.get(f"{BASE}/transform", params={"history": "1"}).json()["history"] == before


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"moving": [[0, 0, 0], [1, 0, 0]], "reference": [[0, 0, 0], [1, 0, 0]]}, "at least"),
        ({"moving": [[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0]], "reference": [[0, 0, 0], [1, 1, 1], [1, 0, 0],
                                                                             [0, 1, 0]]}, "same point"),
        ({"moving": [[0, 0, 0]] * 2, "reference": [[0, 0, 0]]}, "pairs"),
        ({"moving": [[0, 0], [1, 0], [0, 1]], "reference": [[0, 0, 0, 0]] * 3}, "points"),
        ({"moving": [[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], "reference": [[0, 0, 0], [10, 0, 0],
                                                                                 [0, 10, 0], [0, 0, 10]],
          "fit": "banana"}, "unknown fit"),
    ],
)
def test_bad_landmarks_are_refused(server: Server, body: dict[str, Any], words: str) -> None:
    before = server.get(f"{BASE}/transform", params={"history": "1"}).json()["history"]
    answer = post(server, f"{BASE}/landmarks", body)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["message"]
    assert server.get(f"{BASE}/transform", params={"history": "1"}).json()["history"] == before


def test_transform_for_image_of_another_dataset_or_unknown_is_refused(server: Server) -> None:
    answer = put(server, "/api/datasets/correlative/images/nope/transform", {"matrix": np.eye(4).tolist()})
    assert answer.status_code == 404
    answer = put(server, "/api/datasets/correlative/images/em/transform", {"matrix": np.eye(4).tolist()})
    assert answer.status_code == 400 and "reference image" in answer.json()["message"]


def test_thin_plate_spline_is_served_as_a_resampled_volume(server: Server) -> None:
    """An affine-consistent spline resamples the fluorescence where the affine puts it."""
    truth = fluorescence_affine()
    rng = np.random.default_rng(5)
    moving = rng.uniform([0, 0, 0], [4700, 4700, 2200], (12, 3))
    answer = post(server, f"{BASE}/landmarks", {"moving": moving.tolist(),
                                                "reference": apply_affine(truth, moving).tolist(), "fit": "tps"})
    assert answer.status_code == 201, answer.text
    record = answer.json()["transform"]
    assert record["kind"] == "tps" and len(record["residuals_nm"]) == 12  # leave-one-out errors
    state = new_session(server, "correlative")["state"]
    source = layer(state, "fluorescence")["source"]
    assert source.endswith(f"/warped/{record['id']}/precomputed")
    url = source[len("precomputed://"):][len(server.url):]
    info = server.get(url + "/info").json()
    em_info = server.get("/api/datasets/correlative/images/em/precomputed/info").json()
    assert [s["size"] for s in info["scales"]] == [s["size"] for s in em_info["scales"]]
    assert info["data_type"] == "uint16"
    # A 64^3 chunk of level 1 in the middle, against the stored fluorescence mapped by the affine.
    import tensorstore as ts

    warped = ts.open({"driver": "neuroglancer_precomputed", "kvstore": server.url + url, "scale_index": 1}).result()
    region = warped[128:192, 128:192, 32:96].read().result()[..., 0]  # x, y, z
    fluorescence = ts.open({"driver": "neuroglancer_precomputed",
                            "kvstore": server.url + BASE + "/precomputed", "scale_index": 0}).result()
    stored = fluorescence.read().result()[..., 0]  # x, y, z at 24, 24, 40 nm
    level_nm = np.asarray(info["scales"][1]["resolution"], dtype=float)
    offset = np.asarray(info["scales"][1]["voxel_offset"])
    # Reference voxel centres of the region, in physical nm (OME convention: level-1 centres).
    ix, iy, iz = np.meshgrid(np.arange(128, 192, 8), np.arange(128, 192, 8), np.arange(32, 96, 8), indexing="ij")
    index = np.stack([ix, iy, iz], -1).reshape(-1, 3) + offset
    physical = (index + 0.5) * level_nm - base_resolution(server, "correlative", "em") / 2
    moving_index = np.rint(apply_affine(np.linalg.inv(truth), physical) / [24, 24, 40]).astype(int)
    inside = np.all((moving_index >= 0) & (moving_index < stored.shape), axis=1)
    expected = stored[tuple(moving_index[inside].T)].astype(float)
    got = region[(ix.reshape(-1) - 128)[inside], (iy.reshape(-1) - 128)[inside], (iz.reshape(-1) - 32)[inside]]
    assert inside.sum() > 100
    assert np.corrcoef(expected, got.astype(float))[0, 1] > 0.9


def test_overlay_controls_change_the_session_state(server: Server) -> None:
    token = new_session(server, "correlative")["token"]
    answer = post(server, f"/api/sessions/{token}/display", {
        "layers": {"fluorescence": {"colour": "#ff00ff", "window": [100, 900], "opacity": 0.6, "visible": False}},
        "layout": "side-by-side",
    })
    assert answer.status_code == 200, answer.text
    state = server.get(f"/api/sessions/{token}").json()["state"]
    fluorescence = layer(state, "fluorescence")
    assert fluorescence["shaderControls"]["color"] == "#ff00ff"
    assert fluorescence["shaderControls"]["normalized"] == {"range": [100.0, 900.0]}
    assert fluorescence["opacity"] == 0.6 and fluorescence["visible"] is False
    assert state["layout"]["type"] == "row"
    assert [child["layers"] for child in state["layout"]["children"]] == [["em"], ["fluorescence"]]
    for bad in ({"layers": {"nope": {"opacity": 1}}}, {"layers": {"em": {"opacity": 3}}},
                {"layers": {"em": {"window": [5, 1]}}}, {"layers": {"em": {"colour": "red"}}},
                {"layout": "diagonal"}, {"layers": {"em": {"blink": True}}}, {"layers": {"em": {"colour": "#-12345"}}},
                {"layers": {"em": {"window": [True, 3]}}}, {"layers": {"em": {"opacity": None}}}):
        answer = post(server, f"/api/sessions/{token}/display", bad)
        assert answer.status_code == 400 and answer.json()["message"], bad
    assert server.get(f"/api/sessions/{token}").json()["state"] == state


def test_landmarks_placed_in_the_viewer_are_fitted_and_move_the_layer(server: Server) -> None:
    """The user's points (as Neuroglancer posts them) are fitted, saved, and every open view updates."""
    put(server, f"{BASE}/transform", {"matrix": np.eye(4).tolist(), "note": "start from identity"})
    session = new_session(server, "correlative")
    token = session["token"]
    assert post(server, f"/api/sessions/{token}/landmark-layers", {"image": "fluorescence"}).status_code == 200
    state = server.get(f"/api/sessions/{token}").json()
    names = [item["name"] for item in state["state"]["layers"]]
    assert "em landmarks" in names and "fluorescence landmarks" in names
    truth = fluorescence_affine()
    rng = np.random.default_rng(9)
    moving_nm = rng.uniform([200, 200, 200], [4000, 4000, 2000], (6, 3))
    reference_nm = apply_affine(truth, moving_nm)
    # Global coordinates (EM voxels, centres at i + 1/2); with the identity shown, the moving
    # image's feature appears at its own physical position.
    new_state = state["state"]
    for name, points in (("em landmarks", reference_nm), ("fluorescence landmarks", moving_nm)):
        layer(new_state, name)["annotations"] = [
            {"type": "point", "id": f"p{i}", "point": (point / 8.0 + 0.5).tolist()} for i, point in enumerate(points)
        ]
    assert put(server, f"/api/sessions/{token}", {"state": new_state, "generation": state["generation"]}).ok
    other = new_session(server, "correlative")["token"]
    answer = post(server, f"/api/sessions/{token}/register", {"image": "fluorescence", "fit": "affine"})
    assert answer.status_code == 201, answer.text
    result = answer.json()
    assert result["rms_nm"] < 1e-3 and len(result["landmarks"]) == 6
    np.testing.assert_allclose(result["transform"]["matrix"], truth, atol=1e-6)
    for viewer in (token, other):
        current = server.get(f"/api/sessions/{viewer}").json()["state"]
        placed = emitted_placement(current, "fluorescence", np.array([24.0, 24.0, 40.0]), np.array([8.0] * 3),
                                   moving_nm / [24, 24, 40])
        np.testing.assert_allclose(placed, reference_nm, atol=1e-3)
    # The points placed on the fluorescence moved with it: they sit on its features, now on the EM's.
    current = server.get(f"/api/sessions/{token}").json()["state"]
    moved = np.array([a["point"] for a in layer(current, "fluorescence landmarks")["annotations"]])
    np.testing.assert_allclose((moved - 0.5) * 8.0, reference_nm, atol=1e-3)
    # Unequal numbers of points: a clear refusal.
    current = server.get(f"/api/sessions/{token}").json()
    layer(current["state"], "em landmarks")["annotations"].pop()
    put(server, f"/api/sessions/{token}", {"state": current["state"], "generation": current["generation"]})
    answer = post(server, f"/api/sessions/{token}/register", {"image": "fluorescence"})
    assert answer.status_code == 400 and "pairs" in answer.json()["message"]


def test_transform_files_through_the_api(server: Server) -> None:
    """eC-CLEM landmark schemas (µm) and BigWarp CSVs become stored transforms with their provenance."""
    from tests.test_transform_formats import ec_clem_schema

    truth_um = fluorescence_affine()
    truth_um[2] = [0, 0, 1, 0]  # a 2D registration: z untouched
    truth_um[:2, 2] = 0
    truth_um[:2, 3] /= 1000
    rng = np.random.default_rng(2)
    source = np.c_[rng.uniform(0, 4, (6, 2)), np.zeros(6)]
    target = apply_affine(truth_um, source)
    answer = put(server, f"{BASE}/transform", {"file": {"name": "lm.transformation_schema.xml",
                                                        "content": ec_clem_schema(source, target)},
                                               })
    assert answer.status_code == 200, answer.text
    stored = server.get(f"{BASE}/transform").json()
    assert stored["method"] == "ec-clem" and stored["author"] == "admin" and stored["dimensions"] == 2
    assert stored["note"].startswith("lm.transformation_schema.xml:") and stored["rms_nm"] < 1e-6
    expected = truth_um.copy()
    expected[:3, 3] *= 1000  # stored in nm
    np.testing.assert_allclose(stored["matrix"], expected, atol=1e-6)
    spline = ec_clem_schema(source, target).replace('type="AFFINE"', 'type="SPLINE"')
    answer = put(server, f"{BASE}/transform", {"file": {"name": "nl.transformation_schema.xml", "content": spline}})
    assert answer.status_code == 200 and answer.json()["transform"]["kind"] == "tps", answer.text
    rows = "\n".join(f'"Pt-{i}","true",' + ",".join(f'"{v}"' for v in [*m, *r])
                     for i, (m, r) in enumerate(zip(source * 1000, target * 1000, strict=True)))
    bigwarp = {"file": {"name": "landmarks.csv", "content": rows}, "fit": "similarity"}
    answer = put(server, f"{BASE}/transform", bigwarp)
    assert answer.status_code == 400 and "unit" in answer.json()["message"]
    answer = put(server, f"{BASE}/transform", {**bigwarp, "unit": "nm"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["transform"]["method"] == "bigwarp" and len(answer.json()["landmarks"]) == 6


def test_points_of_mixed_dimensions_are_refused(server: Server) -> None:
    answer = post(server, f"{BASE}/landmarks", {"moving": [[0, 0], [10, 0], [0, 10]],
                                                "reference": [[0, 0, 0], [10, 0, 0], [0, 10, 0]]})
    assert answer.status_code == 400 and "dimension" in answer.json()["message"]
    answer = post(server, f"{BASE}/landmarks", {"moving": [[0, 0], [10, 0], [0, 10]],
                                                "reference": [[0, 0], [10, 0], [0, 10]], "dimensions": 3})
    assert answer.status_code == 400 and "3D" in answer.json()["message"]


def test_malformed_session_states_and_odd_bodies_get_400(server: Server) -> None:
    token = new_session(server, "correlative")["token"]
    answer = post(server, f"/api/sessions/{token}/display", None)
    assert answer.status_code == 400
    answer = requests.post(f"{server.url}/api/sessions/{token}/display", data="[" * 100_000, timeout=30)
    assert answer.status_code == 413 and answer.json()["code"] == "body_too_large"
    answer = requests.post(f"{server.url}/api/sessions/{token}/display", data="[" * 1_000 + "]" * 1_000, timeout=30)
    assert answer.status_code == 400 and answer.json()["code"] == "bad_request"
    answer = requests.post(f"{server.url}/api/sessions/{token}/display", timeout=30,
                           data='{"layers": {"em": {"window": [1, Infinity]}}}')
    assert answer.status_code == 400
    current = server.get(f"/api/sessions/{token}").json()
    answer = put(server, f"/api/sessions/{token}", {"state": {"layers": "x"}, "generation": current["generation"]})
    assert answer.status_code == 400 and answer.json()["code"] == "invalid_state"
    assert server.get(f"/api/sessions/{token}").json()["generation"] == current["generation"]
    broken = {"layers": [{"name": "fluorescence landmarks", "annotations": [{"type": "point", "point": "x"}]}]}
    assert put(server, f"/api/sessions/{token}", {"state": broken, "generation": current["generation"]}).ok
    for path, body in (("display", {"layers": {"em": {"window": [0, 1]}}}), ("register", {"image": "fluorescence"})):
        answer = post(server, f"/api/sessions/{token}/{path}", body)
        assert answer.status_code == 400, (path, answer.text)
    assert post(server, f"/api/sessions/{token}/landmark-layers", {"image": "fluorescence"}).ok  # adds, keeps
    # A saved transform is not undone by one broken session of the dataset.
    answer = put(server, f"{BASE}/transform", {"matrix": np.eye(4).tolist()})
    assert answer.status_code == 200, answer.text


def test_spline_through_the_minimum_pairs_reports_residuals_as_not_measurable(server: Server) -> None:
    moving = [[0, 0, 0], [1000, 0, 0], [0, 1000, 0], [0, 0, 1000]]
    answer = post(server, f"{BASE}/landmarks", {"moving": moving, "reference": moving, "fit": "tps", "save": False})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["rms_nm"] is None and all(row["residual_nm"] is None for row in result["landmarks"])
    too_many = np.random.default_rng(0).uniform(0, 1e6, (2500, 3)).tolist()
    answer = post(server, f"{BASE}/landmarks", {"moving": too_many, "reference": too_many, "save": False})
    assert answer.status_code == 400 and "at most" in answer.json()["message"]
