"""Registration transforms between the physical spaces of two images.

Conventions, used everywhere in Lamella:
- A transform maps the *moving* image's physical coordinates to the *reference* image's
  physical coordinates, in nanometres, in x, y, z order.
- Physical coordinates follow OME-Zarr: the centre of level-0 voxel ``i`` lies at ``i * voxel_size``.
- Affine transforms are homogeneous 4x4 matrices acting on column vectors ``[x, y, z, 1]``.
  2D transforms are lifted to 3D with z mapped identically.
- A thin-plate spline is kept as its landmark pairs; it is evaluated forwards (moving → reference,
  for points) and backwards (reference → moving, for resampling), each fitted from the same pairs:
  both pass through every landmark, but between landmarks they are only approximately inverse.

Neuroglancer applies an affine itself through a layer's source transform; ``neuroglancer_matrix``
converts one, accounting for the half-voxel shift between OME's voxel centres and the corner
convention of precomputed sources (see ``tiling.precomputed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.interpolate import RBFInterpolator
from scipy.spatial import cKDTree
from skimage import transform as sktransform

from tiling.errors import InvalidTransform

FitKind = Literal["rigid", "similarity", "affine"]
FIT_KINDS: tuple[FitKind, ...] = ("rigid", "similarity", "affine")
_ESTIMATORS = {
    "rigid": sktransform.EuclideanTransform,
    "similarity": sktransform.SimilarityTransform,
    "affine": sktransform.AffineTransform,
}
# Smallest number of pairs that determines each kind (2D, 3D).
MIN_PAIRS = {"rigid": (2, 3), "similarity": (2, 3), "affine": (3, 4), "tps": (3, 4)}
# Points closer than this (nm) are the same point.
DUPLICATE_NM = 1e-6
# More pairs than anyone clicks or a registration tool writes; keeps a fit's cost bounded.
MAX_PAIRS = 2000
# Leave-one-out costs one spline per pair: above this many pairs it is not reported.
MAX_LEAVE_ONE_OUT = 150

# Bounds on what a transform may hold, far beyond any microscope, so that no product of a point,
# a matrix and its inverse can overflow float64 (~1.8e308): landmark coordinates and translations
# within ±1e12 (nm: 1 km; points are judged in their own unit before any conversion, and again in
# nm after it); each singular value of a linear part (a physical nm -> nm scale) within [1e-6, 1e6];
# and a condition number (largest over smallest singular value) of at most 1e9, so that inverting
# cannot lose more than 9 of float64's ~16 digits.
MAX_COORDINATE_NM = 1e12
MAX_SCALE = 1e6
MAX_CONDITION = 1e9


def affine_problem(matrix: np.ndarray) -> str | None:
    """Why a 4x4 float64 affine cannot be used (singular, ill-conditioned, out of bounds), or None.

    The one criterion for every matrix Lamella stores, judged after every conversion (units,
    pixels to nm, 2D to 3D, composition), and for matrices already stored (``lamella check``).
    """
    if matrix.shape != (4, 4):
        return f"the matrix must be 4x4, not {'x'.join(map(str, matrix.shape))}"
    if not np.all(np.isfinite(matrix)):
        return "the matrix holds non-finite values (NaN or infinity)"
    if not np.allclose(matrix[3], [0.0, 0.0, 0.0, 1.0]):
        return f"the last row of an affine must be 0 0 0 1, not {matrix[3].tolist()}"
    largest = float(np.max(np.abs(matrix[:3, :3])))
    if largest > MAX_SCALE:  # the largest singular value is at least this: judged before any arithmetic
        return f"the matrix scales by up to {largest:.3g}; a scale between modalities lies within {MAX_SCALE:g}"
    translation = float(np.max(np.abs(matrix[:3, 3])))
    if translation > MAX_COORDINATE_NM:
        return f"the translation ({translation:.3g} nm) is beyond ±{MAX_COORDINATE_NM:g} nm (1 km)"
    singular = np.linalg.svd(matrix[:3, :3], compute_uv=False)
    if singular[-1] == 0 or singular[-1] / singular[0] < 1 / MAX_CONDITION:
        return "the matrix is singular: it collapses space and cannot be inverted"
    if singular[0] > MAX_SCALE or singular[-1] < 1 / MAX_SCALE:
        return (
            f"the matrix scales by {singular[-1]:.3g} to {singular[0]:.3g}; "
            f"a scale between modalities lies within {1 / MAX_SCALE:g} and {MAX_SCALE:g}"
        )
    if not np.all(np.isfinite(np.linalg.inv(matrix))):  # cannot happen within the bounds above; kept as the rule
        return "the matrix has no finite inverse"
    return None


def as_affine(matrix: object) -> np.ndarray:
    """A 4x4 float64 from a 4x4, 3x4 or 3x3 (2D, lifted) array of finite numbers; not yet judged."""
    try:
        array = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InvalidTransform("the matrix must be a 4x4 array of finite numbers") from None
    if array.shape == (3, 3):
        array = lift_2d(array)
    if array.shape == (3, 4):
        array = np.vstack([array, [0.0, 0.0, 0.0, 1.0]])
    if array.shape != (4, 4):
        raise InvalidTransform(f"the matrix must be 4x4 (or 3x4, or 3x3 for 2D), not {'x'.join(map(str, array.shape))}")
    if not np.all(np.isfinite(array)):
        raise InvalidTransform("the matrix holds non-finite values (NaN or infinity)")
    return array


def check_affine(matrix: object) -> np.ndarray:
    """A valid 4x4 homogeneous affine as float64, or InvalidTransform saying why not (``affine_problem``)."""
    array = as_affine(matrix)
    problem = affine_problem(array)
    if problem is not None:
        raise InvalidTransform(problem)
    return array


def lift_2d(matrix: np.ndarray) -> np.ndarray:
    """A 3x3 homogeneous 2D affine (x, y) as a 4x4 3D one with z unchanged."""
    try:
        array = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InvalidTransform("a 2D affine must be a 3x3 array of finite numbers") from None
    if array.shape != (3, 3):
        raise InvalidTransform("a 2D affine must be 3x3")
    if not np.allclose(array[2], [0.0, 0.0, 1.0]):
        raise InvalidTransform(f"the last row of a 2D affine must be 0 0 1, not {array[2].tolist()}")
    lifted = np.eye(4)
    lifted[:2, :2] = array[:2, :2]
    lifted[:2, 3] = array[:2, 2]
    return lifted


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points (n, 3) mapped through a 4x4 affine."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def scale_matrix(voxel_size_xyz: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """Voxel indices to physical coordinates (OME: voxel centres at index x size)."""
    return np.diag([*np.asarray(voxel_size_xyz, dtype=np.float64), 1.0])


def points_problem(points: np.ndarray, name: str) -> str | None:
    """Why (n, 2|3) float64 points cannot be used (non-finite, beyond ±``MAX_COORDINATE_NM``), or None."""
    if not np.all(np.isfinite(points)):
        return f"{name} hold non-finite coordinates (NaN or infinity)"
    if points.size and float(np.max(np.abs(points))) > MAX_COORDINATE_NM:
        return f"{name} hold a coordinate beyond ±{MAX_COORDINATE_NM:g} (1 km in nm): {np.max(np.abs(points)):.3g}"
    return None


def check_points(points: object, name: str) -> np.ndarray:
    """(n, 3) float64 points (2D ones get z = 0): finite and within ±``MAX_COORDINATE_NM``.

    Judged before any arithmetic, in whatever unit they are given, and again by callers once
    converted to nm.
    """
    try:
        array = np.asarray(points, dtype=np.float64)
    except OverflowError:
        raise InvalidTransform(f"{name} hold a number too large for a coordinate") from None
    except (TypeError, ValueError):
        raise InvalidTransform(f"{name} must be a list of [x, y, z] numbers") from None
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise InvalidTransform(f"{name} must be a list of [x, y] or [x, y, z] points")
    problem = points_problem(array, name)
    if problem is not None:
        raise InvalidTransform(problem)
    if array.shape[1] == 2:
        array = np.hstack([array, np.zeros((len(array), 1))])
    return array


def check_pair_dimensions(moving: object, reference: object, dimensions: int | None) -> None:
    """Both point sets 2D or both 3D, and 3D if a 3D fit is asked for."""
    moving_points = check_points(moving, "moving landmarks")
    reference_points = check_points(reference, "reference landmarks")
    given = (np.asarray(moving, dtype=object).shape[-1], np.asarray(reference, dtype=object).shape[-1])
    if len(moving_points) and len(reference_points) and given[0] != given[1]:
        raise InvalidTransform(
            f"moving landmarks have {given[0]} coordinates and reference landmarks {given[1]}; "
            "both must be 2D (x, y) or both 3D (x, y, z): mismatched dimensions"
        )
    if dimensions == 3 and given[0] == 2:
        raise InvalidTransform("a 3D fit needs x, y, z landmarks; these are 2D (give dimensions 2)")


def check_pairs(moving: object, reference: object, kind: str, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
    """Validated (n, 3) point arrays: equal counts, enough pairs, no duplicates."""
    check_pair_dimensions(moving, reference, dimensions)
    moving_points = check_points(moving, "moving landmarks")
    reference_points = check_points(reference, "reference landmarks")
    if len(moving_points) != len(reference_points):
        raise InvalidTransform(
            f"{len(moving_points)} moving landmarks but {len(reference_points)} reference landmarks; they come in pairs"
        )
    if dimensions not in (2, 3):
        raise InvalidTransform(f"dimensions must be 2 or 3, not {dimensions}")
    needed = MIN_PAIRS[kind][dimensions - 2]
    if len(moving_points) > MAX_PAIRS:
        raise InvalidTransform(f"{len(moving_points)} landmark pairs; at most {MAX_PAIRS} are accepted")
    if len(moving_points) < needed:
        raise InvalidTransform(
            f"a {dimensions}D {kind} fit needs at least {needed} landmark pairs, got {len(moving_points)}"
        )
    for label, points in (("moving", moving_points), ("reference", reference_points)):
        duplicates = sorted(cKDTree(points).query_pairs(DUPLICATE_NM))
        if duplicates:
            first, second = duplicates[0]
            raise InvalidTransform(f"{label} landmarks {first + 1} and {second + 1} are the same point")
    return moving_points, reference_points


def _numbers(value: object, name: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise InvalidTransform(f"{name} hold a number too large for float64") from None
    except (TypeError, ValueError):
        raise InvalidTransform(f"{name} are not an array of numbers") from None


def check_transform(
    kind: str, dimensions: int, matrix: object, landmarks: object, residuals: object, rms: object
) -> None:
    """InvalidTransform unless a transform as stored (matrix, landmark pairs, residuals, RMS) is usable.

    The criteria of ``check_affine`` and ``check_points``, on the stored form (4x4, nm): applied
    to every transform before it is stored and, by ``lamella check``, to what older versions stored.
    """
    if kind not in ("affine", "tps"):
        raise InvalidTransform(f"unknown transform kind {kind!r}")
    if dimensions not in (2, 3):
        raise InvalidTransform(f"dimensions must be 2 or 3, not {dimensions!r}")
    if matrix is None and kind == "affine":
        raise InvalidTransform("an affine transform without a matrix")
    if matrix is not None:
        problem = affine_problem(_numbers(matrix, "the matrix"))
        if problem:
            raise InvalidTransform(problem)
    if landmarks is None and kind == "tps":
        raise InvalidTransform("a thin-plate spline without landmarks")
    if landmarks is not None:
        if not isinstance(landmarks, dict) or not {"moving", "reference"} <= set(landmarks):
            raise InvalidTransform("landmarks must hold moving and reference points")
        moving = check_points(landmarks["moving"], "moving landmarks")
        reference = check_points(landmarks["reference"], "reference landmarks")
        if len(moving) != len(reference):
            raise InvalidTransform(f"{len(moving)} moving landmarks but {len(reference)} reference landmarks")
    if residuals is not None:
        if not isinstance(residuals, list):
            raise InvalidTransform("residuals must be a list")
        measured = _numbers([value for value in residuals if value is not None], "residuals")
        if not np.all(np.isfinite(measured)):
            raise InvalidTransform("residuals hold non-finite values (NaN or infinity)")
    if rms is not None:
        value = _numbers(rms, "the RMS residual")
        if value.ndim != 0 or not np.isfinite(value):
            raise InvalidTransform("the RMS residual is not a finite number")


def transform_problem(
    kind: str, dimensions: int, matrix: object, landmarks: object, residuals: object, rms: object
) -> str | None:
    """Why a stored transform cannot be used (``check_transform``'s message), or None."""
    try:
        check_transform(kind, dimensions, matrix, landmarks, residuals, rms)
    except InvalidTransform as error:
        return str(error)
    return None


@dataclass(frozen=True)
class Fit:
    """A transform fitted from landmark pairs, with how well it fits each pair (nm)."""

    kind: str
    matrix: np.ndarray | None  # affine kinds
    residuals_nm: np.ndarray  # per pair: distance between the mapped moving point and its partner
    rms_nm: float


def fit_affine(moving: object, reference: object, kind: FitKind = "affine", dimensions: int = 3) -> Fit:
    """Least-squares rigid, similarity or affine transform mapping ``moving`` onto ``reference``.

    2D fits use x and y only and are lifted to 3D (z unchanged).
    """
    if kind not in _ESTIMATORS:
        raise InvalidTransform(f"unknown fit {kind!r}; choose one of {', '.join(FIT_KINDS)}")
    moving_points, reference_points = check_pairs(moving, reference, kind, dimensions)
    axes = slice(0, dimensions)
    estimated = _ESTIMATORS[kind].from_estimate(moving_points[:, axes], reference_points[:, axes])
    if not estimated:
        raise InvalidTransform(f"the landmarks do not determine a {kind} transform (are they collinear or coplanar?)")
    params = np.asarray(estimated.params, dtype=np.float64)
    matrix = lift_2d(params) if dimensions == 2 else params
    if dimensions == 2:
        # Lifting keeps z; the pairs' z offset (e.g. different section planes) is a translation.
        matrix[2, 3] = float(np.mean(reference_points[:, 2] - moving_points[:, 2]))
    matrix = check_affine(matrix)
    residuals = np.linalg.norm(apply_affine(matrix, moving_points) - reference_points, axis=1)
    return Fit(kind, matrix, residuals, float(np.sqrt(np.mean(residuals**2))))


class ThinPlateSpline:
    """A thin-plate spline (with its affine part) through landmark pairs, both directions.

    2D splines use the r² log r kernel on x, y and keep z; 3D splines use the r kernel,
    the biharmonic one in three dimensions.
    """

    def __init__(self, moving: object, reference: object, dimensions: int = 3, *, inverse: bool = True) -> None:
        self.moving, self.reference = check_pairs(moving, reference, "tps", dimensions)
        self.dimensions = dimensions
        kernel = "thin_plate_spline" if dimensions == 2 else "linear"
        axes = slice(0, dimensions)
        try:
            self._forward = RBFInterpolator(self.moving[:, axes], self.reference[:, axes], kernel=kernel, degree=1)
            self._backward = (
                RBFInterpolator(self.reference[:, axes], self.moving[:, axes], kernel=kernel, degree=1)
                if inverse
                else None
            )
        except (ValueError, np.linalg.LinAlgError) as error:
            raise InvalidTransform(f"the landmarks do not determine a thin-plate spline: {error}") from None
        # 2D splines keep z; the pairs' z offset (e.g. different section planes) is a translation.
        self._z_shift = float(np.mean(self.reference[:, 2] - self.moving[:, 2])) if dimensions == 2 else 0.0

    def _apply(self, interpolator: RBFInterpolator, points: np.ndarray, z_shift: float) -> np.ndarray:
        out = np.array(points, dtype=np.float64)
        if len(out):
            out[:, : self.dimensions] = interpolator(out[:, : self.dimensions])
            if self.dimensions == 2:
                out[:, 2] += z_shift
        return out

    def leave_one_out_nm(self) -> np.ndarray | None:
        """Per pair, how far the spline fitted without it misses it: the honest error of an interpolant.

        None when there are too few pairs to leave one out (or too many to afford it); NaN for a
        pair whose absence leaves the others degenerate.
        """
        count = len(self.moving)
        if count <= MIN_PAIRS["tps"][self.dimensions - 2] or count > MAX_LEAVE_ONE_OUT:
            return None
        errors = np.zeros(count)
        for left_out in range(count):
            keep = np.arange(count) != left_out
            try:
                spline = ThinPlateSpline(self.moving[keep], self.reference[keep], self.dimensions, inverse=False)
            except InvalidTransform:
                errors[left_out] = np.nan
                continue
            missed = spline.forward(self.moving[left_out : left_out + 1])[0] - self.reference[left_out]
            errors[left_out] = np.linalg.norm(missed)
        return errors

    def forward(self, points: np.ndarray) -> np.ndarray:
        """Moving physical points (n, 3) → reference physical points."""
        return self._apply(self._forward, points, self._z_shift)

    def inverse(self, points: np.ndarray) -> np.ndarray:
        """Reference physical points (n, 3) → moving physical points (for resampling)."""
        assert self._backward is not None, "built with inverse=False"
        return self._apply(self._backward, points, -self._z_shift)


def neuroglancer_matrix(
    matrix: np.ndarray,
    moving_voxel_nm: tuple[float, float, float] | np.ndarray,
    reference_voxel_nm: tuple[float, float, float] | np.ndarray,
) -> list[list[float]]:
    """The 3x4 ``source.transform.matrix`` that places a moving precomputed layer by ``matrix``.

    Neuroglancer scales the linear part by input/output dimension scales itself, so it stays
    physical; the translation is in output units (reference voxels). Precomputed corners sit
    half a voxel before OME centres, in both the moving and the reference image:
    ``g = (A · s_m · (m - ½) + b) / s_r + ½`` with ``m`` the moving model coordinate.
    Dimensions are x, y, z; ``outputDimensions`` must be the reference's x, y, z in metres.
    """
    moving_size = np.asarray(moving_voxel_nm, dtype=np.float64)
    reference_size = np.asarray(reference_voxel_nm, dtype=np.float64)
    linear = matrix[:3, :3]
    translation = (matrix[:3, 3] - linear @ (moving_size / 2)) / reference_size + 0.5
    return [[float(v) for v in [*linear[row], translation[row]]] for row in range(3)]
