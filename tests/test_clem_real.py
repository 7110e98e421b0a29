"""Real correlative data from ../shared/data: 3DCT cryo-CLEM landmarks and DeepCLEM section pairs."""

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import zarr
from PIL import Image
from scipy import ndimage
from skimage import transform as sktransform

from tests.conftest import SHARED_DATA, Server, shared_file
from tests.test_cli import lamella

CRYO = SHARED_DATA / "clem_cryo_fib_sem_lm_3dct_landmarks"
DEEPCLEM = SHARED_DATA / "clem_array_tomography_deepclem"
SEM_PIXEL_NM = 226_000 / 1024  # horizontal field width 226 µm (data bar) over 1024 pixels
LM_PIXEL_NM = 100.0  # the max projection carries no calibration
DEEPCLEM_PIXEL_NM = 10.0  # the PNGs carry none either


def read_level0(server: Server, dataset: str, image: str) -> np.ndarray:
    """The stored plane (y, x), exactly, through the Zarr passthrough (precomputed would be JPEG)."""
    url = server.get(f"/api/datasets/{dataset}/images/{image}").json()["urls"]["zarr"]
    plane = zarr.open_group(url[len("zarr3://"):], mode="r")["0"][:]
    return plane.reshape(plane.shape[-2:])  # 2D images are stored as (y, x)


def session_state(server: Server, dataset: str) -> dict[str, Any]:
    return requests.post(f"{server.url}/api/datasets/{dataset}/sessions", timeout=30).json()["state"]


def placed_pixels(state: dict[str, Any], name: str, moving_px: np.ndarray, moving_nm: float,
                  reference_nm: float) -> np.ndarray:
    """Reference pixel (x, y) where Neuroglancer draws moving pixel centres (see test_correlation)."""
    source = next(layer for layer in state["layers"] if layer["name"] == name)["source"]
    matrix = np.asarray(source["transform"]["matrix"])
    scales_in = np.array([moving_nm, moving_nm, 1.0])
    scales_out = np.array([reference_nm, reference_nm, 1.0])
    linear = matrix[:, :3] * scales_in[None, :] / scales_out[:, None]
    model = np.c_[moving_px, np.zeros(len(moving_px))] + 0.5
    return ((model @ linear.T + matrix[:, 3]) - 0.5)[:, :2]


@pytest.fixture(scope="module")
def cryo_clem(server: Server, data_dir: tuple[Path, Any]) -> str:
    root = str(data_dir[0])
    for name, path, modality, pixel in (("sem", "EB_060_marked.tiff", "EM", SEM_PIXEL_NM),
                                        ("lm", "MAX_SD_area5-0.tif", "fluorescence", LM_PIXEL_NM)):
        lamella("import", str(shared_file(CRYO / path)), "--dataset", "cryo-clem", "--name", name,
                "--modality", modality, "--voxel-size", f"1,{pixel},{pixel}", "--quiet", "--data-dir", root,
                check=True)
    return root


def test_3dct_landmarks_fit_lm_onto_sem_below_two_pixels(server: Server, cryo_clem: str) -> None:
    result = lamella("register", "cryo-clem", "lm", str(CRYO / "LM_coordinates.txt"),
                     "--reference-points", str(CRYO / "SEM_coordinates.txt"), "--fit", "affine",
                     "--author", "3DCT test set", "--data-dir", cryo_clem, check=True)
    lines = result.stdout.splitlines()
    assert len([line for line in lines if line.startswith("landmark ")]) == 11  # ids 1-7 and 9-12
    assert "RMS" in lines[-1]
    stored = requests.get(f"{server.url}/api/datasets/cryo-clem/images/lm/transform", timeout=30).json()
    assert stored["method"] == "point-lists" and stored["fit"] == "affine" and stored["dimensions"] == 2
    assert stored["author"] == "3DCT test set" and len(stored["residuals_nm"]) == 11
    rms_px = stored["rms_nm"] / SEM_PIXEL_NM
    assert rms_px < 2.0, f"RMS {rms_px:.2f} SEM pixels"
    # The emitted state puts each LM bead within 2 SEM pixels (the fit's residual) of its SEM partner.
    lm = np.loadtxt(CRYO / "LM_coordinates.txt", skiprows=1)
    sem = np.loadtxt(CRYO / "SEM_coordinates.txt", skiprows=1)
    common = np.intersect1d(lm[:, 0], sem[:, 0])
    lm_px = lm[np.isin(lm[:, 0], common)][:, 1:3]
    sem_px = sem[np.isin(sem[:, 0], common)][:, 1:3]
    placed = placed_pixels(session_state(server, "cryo-clem"), "lm", lm_px, LM_PIXEL_NM, SEM_PIXEL_NM)
    errors = np.linalg.norm(placed - sem_px, axis=1)
    np.testing.assert_allclose(errors, np.asarray(stored["residuals_nm"]) / SEM_PIXEL_NM, atol=1e-6)
    assert np.sqrt(np.mean(errors**2)) < 2.0


def test_bad_landmark_file_is_one_line_and_saves_nothing(server: Server, cryo_clem: str, tmp_path: Path) -> None:
    before = requests.get(f"{server.url}/api/datasets/cryo-clem/images/lm/transform",
                          params={"history": "1"}, timeout=30).json()["history"]
    short = tmp_path / "two.txt"
    short.write_text("1\t10\t10\t1\n2\t20\t20\t1\n")
    result = lamella("register", "cryo-clem", "lm", str(short), "--reference-points", str(short),
                     "--data-dir", cryo_clem)
    assert result.returncode != 0 and result.stderr.startswith("lamella: error:")
    assert len(result.stderr.strip().splitlines()) == 1
    after = requests.get(f"{server.url}/api/datasets/cryo-clem/images/lm/transform",
                         params={"history": "1"}, timeout=30).json()["history"]
    assert after == before


@pytest.fixture(scope="module")
def deepclem(server: Server, data_dir: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(data_dir[0])
    size = f"1,{DEEPCLEM_PIXEL_NM},{DEEPCLEM_PIXEL_NM}"
    for section in ("s6", "s8"):  # s8 is 951 rows, the others 954
        for folder, name, modality in (("EM_raw", "em", "EM"),
                                       ("FM_raw", "fm", "fluorescence")):
            lamella("import", str(shared_file(DEEPCLEM / folder / f"{section}_ds.png")),
                    "--dataset", f"deepclem-{section}", "--name", name, "--modality", modality,
                    "--voxel-size", size, "--quiet", "--data-dir", root, check=True)
    # The unregistered pair; the chromatin PNG keeps its signal in G and B: one grey channel first.
    grey = tmp_path_factory.mktemp("deepclem") / "chromatin.png"
    rgb = np.asarray(Image.open(shared_file(DEEPCLEM / "Chromatin.png")))
    Image.fromarray(rgb[..., 1:].max(axis=-1)).save(grey)
    for path, name, modality in ((DEEPCLEM / "EM.png", "em-unregistered", "EM"),
                                 (grey, "chromatin", "fluorescence")):
        lamella("import", str(path), "--dataset", "deepclem-unregistered", "--name", name, "--modality", modality,
                "--voxel-size", size, "--quiet", "--data-dir", root, check=True)
    return root


def test_preregistered_deepclem_pairs_overlay_pixel_for_pixel(server: Server, deepclem: str) -> None:
    """Same pixel grid, identity transform: every FM pixel is drawn on its EM pixel (within a pixel)."""
    for section in ("s6", "s8"):
        dataset = f"deepclem-{section}"
        answer = requests.put(f"{server.url}/api/datasets/{dataset}/images/fm/transform",
                              json={"matrix": np.eye(4).tolist(), "note": "DeepCLEM pairs share one pixel grid"},
                              timeout=30, headers=server.admin)
        assert answer.ok, answer.text
        em = read_level0(server, dataset, "em")
        fm = read_level0(server, dataset, "fm")
        source = np.asarray(Image.open(DEEPCLEM / "FM_raw" / f"{section}_ds.png"))
        np.testing.assert_array_equal(fm, source)
        assert em.shape == fm.shape
        # Neuroglancer draws each FM pixel centre on the same EM pixel centre.
        transform = requests.get(f"{server.url}/api/datasets/{dataset}/images/fm/transform", timeout=30).json()
        assert transform["method"] == "matrix"
        corners = np.array([[0, 0], [em.shape[1] - 1, em.shape[0] - 1], [600, 400]], dtype=float)
        placed = placed_pixels(session_state(server, dataset), "fm", corners, DEEPCLEM_PIXEL_NM, DEEPCLEM_PIXEL_NM)
        np.testing.assert_allclose(placed, corners, atol=1e-6)
        # Content check: nuclear chromatin (bright in FM) lies on dark heterochromatin in the EM;
        # the best cross-modal match is within a few pixels of zero shift.
        a = ndimage.gaussian_filter(fm.astype(float), 3)[20:-20, 20:-20]
        b = ndimage.gaussian_filter(255 - em.astype(float), 3)
        scores = {(dy, dx): np.corrcoef(a.ravel(), b[20 + dy: b.shape[0] - 20 + dy,
                                                     20 + dx: b.shape[1] - 20 + dx].ravel())[0, 1]
                  for dy in range(-6, 7, 2) for dx in range(-6, 7, 2)}
        best = max(scores, key=scores.__getitem__)
        assert max(abs(best[0]), abs(best[1])) <= 4, best


def test_unregistered_deepclem_pair_is_fitted_from_nucleus_landmarks(server: Server, deepclem: str) -> None:
    # Nucleus centres: chromatin blobs (centroids of the blurred signal) and the same nuclei in the EM.
    chromatin_px = [[224, 603, 0], [576, 725, 0], [956, 563, 0]]
    em_px = [[170, 300, 0], [510, 380, 0], [850, 210, 0]]
    answer = requests.post(f"{server.url}/api/datasets/deepclem-unregistered/images/chromatin/landmarks",
                           json={"moving": chromatin_px, "reference": em_px, "units": "pixels",
                                 "fit": "similarity", "names": ["left", "middle", "right"]}, timeout=30,
                           headers=server.admin)
    assert answer.status_code == 201, answer.text
    result = answer.json()
    assert [row["name"] for row in result["landmarks"]] == ["left", "middle", "right"]
    assert all(row["residual_px"] < 10 for row in result["landmarks"])
    matrix = np.asarray(result["transform"]["matrix"])
    # Resample the served chromatin into the EM by the stored transform: it now lies on the nuclei.
    em = read_level0(server, "deepclem-unregistered", "em-unregistered").astype(float)
    chromatin = read_level0(server, "deepclem-unregistered", "chromatin").astype(float)
    pixels = np.diag([DEEPCLEM_PIXEL_NM, DEEPCLEM_PIXEL_NM, 1.0])
    in_pixels = np.linalg.inv(pixels) @ matrix[[0, 1, 3]][:, [0, 1, 3]] @ pixels

    def overlap(transform: np.ndarray) -> float:
        warped = sktransform.warp(chromatin, np.linalg.inv(transform), output_shape=em.shape, order=1)
        return float(np.corrcoef(ndimage.gaussian_filter(warped, 4).ravel(),
                                 ndimage.gaussian_filter(255 - em, 4).ravel())[0, 1])

    assert overlap(in_pixels) > 0.15 > overlap(np.eye(3)) + 0.1
