"""Transform geometry: fits, thin-plate splines, checks and the Neuroglancer convention."""

import numpy as np
import pytest

from tiling.errors import InvalidTransform
from tiling.transforms import (
    ThinPlateSpline,
    apply_affine,
    check_affine,
    fit_affine,
    lift_2d,
    neuroglancer_matrix,
)


def similarity(angle_deg: float, scale: float, shift: tuple[float, float, float]) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    matrix = np.eye(4)
    matrix[:2, :2] = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix[2, 2] = scale
    matrix[:3, 3] = shift
    return matrix


def neuroglancer_global(
    ng: list[list[float]], model: np.ndarray, input_nm: np.ndarray, output_nm: np.ndarray
) -> np.ndarray:
    """What Neuroglancer does with a source transform (render_coordinate_transform.ts):
    the linear part is scaled by input/output dimension scales, the translation is in output units."""
    matrix = np.asarray(ng)
    linear = matrix[:, :3] * input_nm[None, :] / output_nm[:, None]
    return model @ linear.T + matrix[:, 3]


@pytest.mark.parametrize("kind", ["rigid", "similarity", "affine"])
def test_fits_recover_the_transform_that_made_the_points(kind: str) -> None:
    rng = np.random.default_rng(1)
    truth = similarity(17, 1.0 if kind == "rigid" else 1.3, (120.0, -40.0, 8.0))
    if kind == "affine":
        truth[0, 1] += 0.2  # shear
    moving = rng.uniform(0, 5000, (12, 3))
    fit = fit_affine(moving, apply_affine(truth, moving), kind, 3)
    np.testing.assert_allclose(fit.matrix, truth, atol=1e-6)
    assert fit.rms_nm < 1e-6 and fit.residuals_nm.shape == (12,)


def test_2d_fit_is_lifted_with_z_kept() -> None:
    rng = np.random.default_rng(2)
    truth = lift_2d(np.array([[0.9, -0.3, 50.0], [0.35, 1.1, -20.0], [0.0, 0.0, 1.0]]))
    moving = np.c_[rng.uniform(0, 1000, (6, 2)), np.zeros(6)]
    fit = fit_affine(moving, apply_affine(truth, moving), "affine", 2)
    np.testing.assert_allclose(fit.matrix, truth, atol=1e-9)
    assert fit.matrix[2].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_rigid_fit_of_noisy_points_reports_residuals() -> None:
    rng = np.random.default_rng(3)
    truth = similarity(5, 1.0, (10.0, 20.0, 0.0))
    moving = rng.uniform(0, 1000, (8, 3))
    reference = apply_affine(truth, moving) + rng.normal(0, 2.0, (8, 3))
    fit = fit_affine(moving, reference, "rigid", 3)
    assert 0.5 < fit.rms_nm < 6
    np.testing.assert_allclose(fit.residuals_nm, np.linalg.norm(apply_affine(fit.matrix, moving) - reference, axis=1))


def test_thin_plate_spline_interpolates_and_inverts() -> None:
    rng = np.random.default_rng(4)
    moving = rng.uniform(0, 1000, (10, 3))
    moving[:, 2] = 0
    bend = moving.copy()
    bend[:, 0] += 30 * np.sin(moving[:, 1] / 200)  # non-linear
    spline = ThinPlateSpline(moving, bend, dimensions=2)
    np.testing.assert_allclose(spline.forward(moving), bend, atol=1e-6)
    np.testing.assert_allclose(spline.inverse(bend), moving, atol=1e-6)
    errors = spline.leave_one_out_nm()
    assert errors.shape == (10,) and np.all(errors > 0)
    # An affine set of pairs gives an affine spline: exact between landmarks too.
    truth = similarity(10, 1.1, (5.0, 5.0, 0.0))
    spline = ThinPlateSpline(moving, apply_affine(truth, moving), dimensions=2)
    probe = rng.uniform(100, 900, (5, 3))
    probe[:, 2] = 0
    np.testing.assert_allclose(spline.forward(probe), apply_affine(truth, probe), atol=1e-6)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.zeros((4, 4)), "last row"),
        (np.diag([1.0, 1.0, 0.0, 1.0]), "singular"),
        (np.full((4, 4), np.nan), "non-finite"),
        (np.eye(5), "4x4"),
        ([["a"]], "numbers"),
        (np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1.0]]), "0 0 1"),
    ],
)
def test_bad_matrices_are_refused(matrix: object, message: str) -> None:
    with pytest.raises(InvalidTransform, match=message):
        check_affine(matrix)


def test_bad_landmarks_are_refused() -> None:
    points = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    with pytest.raises(InvalidTransform, match="at least 4"):
        fit_affine(points[:3], points[:3], "affine", 3)
    with pytest.raises(InvalidTransform, match="same point"):
        fit_affine([*points[:3], points[0]], points, "affine", 3)
    with pytest.raises(InvalidTransform, match="pairs"):
        fit_affine(points, points[:3], "rigid", 3)
    with pytest.raises(InvalidTransform, match="non-finite"):
        fit_affine([[np.nan, 0, 0], *points[1:]], points, "affine", 3)
    with pytest.raises(InvalidTransform, match=r"collinear|coplanar|singular"):
        fit_affine([[0, 0, 0], [1, 1, 0], [2, 2, 0], [3, 3, 0]], points, "affine", 2)


def test_neuroglancer_matrix_places_voxel_centres() -> None:
    """A moving voxel centre, through the emitted matrix, lands on the reference voxel its physical point is in."""
    truth = similarity(12, 1.04, (420.0, -380.0, -60.0))
    moving_nm = np.array([24.0, 24.0, 40.0])
    reference_nm = np.array([8.0, 8.0, 8.0])
    ng = neuroglancer_matrix(truth, moving_nm, reference_nm)
    indices = np.array([[0, 0, 0], [10, 20, 5], [199, 3, 55]], dtype=float)
    model = indices + 0.5  # Neuroglancer's precomputed model coordinate of a voxel centre
    global_coordinates = neuroglancer_global(ng, model, moving_nm, reference_nm)
    expected_physical = apply_affine(truth, indices * moving_nm)  # OME: centre of voxel i at i * size
    np.testing.assert_allclose((global_coordinates - 0.5) * reference_nm, expected_physical, atol=1e-9)
    # The identity between grids of different voxel size still aligns centres, not corners.
    ng = neuroglancer_matrix(np.eye(4), moving_nm, reference_nm)
    np.testing.assert_allclose((neuroglancer_global(ng, model, moving_nm, reference_nm) - 0.5) * reference_nm,
                               indices * moving_nm, atol=1e-9)
