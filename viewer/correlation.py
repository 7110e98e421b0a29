"""Registering modalities: matrices, landmark fits and transform files into stored transforms.

Composes ``tiling.transforms`` (the geometry), ``tiling.transform_formats`` (the files) and
``annotations.transforms`` (the storage). Everything is checked before anything is stored.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from annotations.catalog import Catalog, DatasetRecord, ImageRecord
from annotations.errors import ImageNotFound
from annotations.transforms import TransformRecord, Transforms, TransformSpec
from annotations.viewer_sessions import ViewerSessions
from tiling.errors import InvalidTransform
from tiling.omezarr import UNIT_TO_NM
from tiling.transform_formats import (
    CONVENTION,
    ImportedTransform,
    canonical_unit,
    matrix_json,
    mobie_view,
    parse_transform_file,
)
from tiling.transforms import (
    FIT_KINDS,
    MAX_COORDINATE_NM,
    ThinPlateSpline,
    apply_affine,
    as_affine,
    check_affine,
    check_pair_dimensions,
    check_points,
    check_transform,
    fit_affine,
    scale_matrix,
)
from viewer.state import dataset_state, move_landmarks, replace_sources, session_origin, xyz

FITS = (*FIT_KINDS, "tps")
log = logging.getLogger("lamella")


def nm_per(unit: str | None) -> float:
    """Nanometres per ``unit`` (nm, um, µm, micron, angstrom, mm, m and their long names)."""
    name = canonical_unit(unit)
    if name is None:
        return 1.0
    if name not in UNIT_TO_NM:
        raise InvalidTransform(f"{unit!r} is not a length unit here; use nm, um, mm, angstrom or m")
    return UNIT_TO_NM[name]


def affine_in_nm(matrix: object, unit: str | None) -> np.ndarray:
    """An affine whose translation, given in ``unit``, is converted to nm; checked once converted."""
    factor = nm_per(unit)
    array = as_affine(matrix)
    largest = float(np.max(np.abs(array[:3, 3])))
    if largest * factor > MAX_COORDINATE_NM:  # Python floats: an overflow here is inf, not an error
        shown = f"{largest:.3g} {unit or 'nm'}"
        raise InvalidTransform(f"the translation ({shown}) is beyond ±{MAX_COORDINATE_NM:g} nm (1 km)")
    array[:3, 3] *= factor
    return check_affine(array)


def converted(points: np.ndarray, factor: np.ndarray | float, name: str) -> np.ndarray:
    """Checked points (any unit, within bounds) times ``factor`` (to nm: a unit's factor, or a voxel
    size for level-0 voxel indices, OME voxel centres at index x size), checked again in nm."""
    with np.errstate(over="ignore", invalid="ignore"):  # judged just below
        return check_points(points * factor, f"{name} (in nm)")


def composed(*matrices: np.ndarray) -> np.ndarray:
    """The product of checked affines, itself checked."""
    with np.errstate(over="ignore", invalid="ignore"):  # judged just below
        product = functools.reduce(np.matmul, matrices)
    return check_affine(product)


def checked_spec(spec: TransformSpec) -> TransformSpec:
    """``spec`` if everything it holds is usable (the criterion ``lamella check`` also applies)."""
    check_transform(spec.kind, spec.dimensions, spec.matrix, spec.landmarks, spec.residuals_nm, spec.rms_nm)
    return spec


def global_to_nm(points: np.ndarray, reference: ImageRecord) -> np.ndarray:
    """Neuroglancer global coordinates (reference voxels, centres at i + ½) to reference nm."""
    return (points - 0.5) * xyz(reference.voxel_size_nm)


def to_moving(record: TransformRecord | None, points_nm: np.ndarray) -> np.ndarray:
    """Reference nm → moving nm through ``record`` (identity when None)."""
    if record is None:
        return points_nm
    if record.kind == "tps" and record.landmarks:
        landmarks = record.landmarks
        return ThinPlateSpline(landmarks["moving"], landmarks["reference"], record.dimensions).inverse(points_nm)
    # Stored matrices are checked, but rows older than the checks may not be (see ``lamella check``).
    return apply_affine(np.linalg.inv(check_affine(record.matrix)), points_nm)


def to_reference(record: TransformRecord | None, points_nm: np.ndarray) -> np.ndarray:
    """Moving nm → reference nm through ``record`` (identity when None)."""
    if record is None:
        return points_nm
    if record.kind == "tps" and record.landmarks:
        landmarks = record.landmarks
        spline = ThinPlateSpline(landmarks["moving"], landmarks["reference"], record.dimensions, inverse=False)
        return spline.forward(points_nm)
    return apply_affine(check_affine(record.matrix), points_nm)


def finite_or_none(values: np.ndarray | None) -> list[float | None] | None:
    """Residuals for JSON and the database: NaN (not measurable) becomes null."""
    if values is None:
        return None
    return [float(v) if np.isfinite(v) else None for v in values]


def rms_of(values: np.ndarray | None) -> float | None:
    finite = values[np.isfinite(values)] if values is not None else np.array([])
    return float(np.sqrt(np.mean(finite**2))) if len(finite) else None


def landmark_report(
    names: list[str],
    moving_nm: np.ndarray,
    reference_nm: np.ndarray,
    residuals: np.ndarray | None,
    reference: ImageRecord,
) -> list[dict[str, Any]]:
    """Per pair: where it is in each image and how far the transform misses (nm and reference pixels).

    A residual is null when it cannot be measured (a spline through too few pairs).
    """
    pixel = float(min(reference.voxel_size_nm[1:]))
    measured = finite_or_none(residuals) or [None] * len(names)
    return [
        {
            "name": name,
            "moving_nm": moving_nm[i].tolist(),
            "reference_nm": reference_nm[i].tolist(),
            "residual_nm": measured[i],
            "residual_px": None if measured[i] is None else measured[i] / pixel,
        }
        for i, name in enumerate(names)
    ]


@dataclass
class Registration:
    """A fitted transform and its per-landmark report; ``record`` is set once it is saved."""

    spec: TransformSpec
    report: list[dict[str, Any]] = field(default_factory=list)
    record: TransformRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "saved": self.record is not None,
            "transform": transform_json(self.record or self.spec),
            "rms_nm": self.spec.rms_nm,
            "landmarks": self.report,
        }


def strict_json(value: Any) -> Any:
    """``value`` with non-finite numbers as null: what browsers' JSON parsers accept."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strict_json(item) for item in value]
    return value


def transform_json(transform: TransformSpec) -> dict[str, Any]:
    """A transform for the API; a quarantined one (kept in the history) may hold non-finite values: null."""
    data = strict_json(transform.model_dump(mode="json"))
    data["convention"] = f"{CONVENTION}, in nm; voxel centres at index*size"
    return data


class Correlation:
    def __init__(self, catalog: Catalog, transforms: Transforms) -> None:
        self.catalog = catalog
        self.transforms = transforms

    # Reading

    def current_transforms(self, dataset: DatasetRecord) -> dict[int, TransformRecord]:
        """Each image's current transform into the dataset's present reference image."""
        reference = dataset.reference()
        if reference is None:
            return {}
        return self.transforms.current_for([image.id for image in dataset.images], reference.id)

    def lookup(
        self, dataset_ref: str | int, image_name: str, reference_name: str | None = None
    ) -> tuple[DatasetRecord, ImageRecord, ImageRecord]:
        """(dataset, moving image, reference image) checked to belong together."""
        dataset = self.catalog.get_dataset(dataset_ref)
        image = dataset.image(image_name)
        if reference_name is None:
            reference = dataset.reference()
        else:
            try:
                reference = dataset.image(reference_name)
            except ImageNotFound:
                raise InvalidTransform(
                    f"dataset {dataset.name!r} has no image {reference_name!r}; "
                    "a transform maps into an image of the same dataset"
                ) from None
        if reference is None:
            raise InvalidTransform(f"dataset {dataset.name!r} has no reference image")
        if image.id == reference.id:
            raise InvalidTransform(f"{image.name!r} is the reference image: it defines the space others map into")
        if image.labels_of is not None:
            raise InvalidTransform(f"{image.name!r} is a segmentation: it follows the transform of the image it labels")
        return dataset, image, reference

    def current(self, dataset_ref: str | int, image_name: str) -> tuple[DatasetRecord, TransformRecord | None]:
        dataset = self.catalog.get_dataset(dataset_ref)
        image = dataset.image(image_name)
        return dataset, self.current_transforms(dataset).get(image.id)

    def refresh_sessions(
        self,
        viewer_sessions: ViewerSessions,
        dataset_ref: str | int,
        *,
        moved: tuple[str, TransformRecord | None] | None = None,
        default_origin: str | None = None,
        active_days: float = 7.0,
    ) -> list[str]:
        """Re-place the dataset's layers in its recently active viewer sessions; returns their tokens.

        ``moved`` (image name, its previous transform) also carries the points of that image's
        landmark layer along with it. Each session keeps the origin it was opened through; one
        session that cannot be updated is logged and skipped, never fails the save behind it.
        """
        dataset = self.catalog.get_dataset(dataset_ref)
        transforms = self.current_transforms(dataset)
        reference = dataset.reference()
        mapping = None
        if moved is not None and reference is not None:
            image = dataset.image(moved[0])
            old, new = moved[1], transforms.get(image.id)
            size = xyz(reference.voxel_size_nm)

            def mapping(points: np.ndarray) -> np.ndarray:
                moving_nm = to_moving(old, (points - 0.5) * size)
                return to_reference(new, moving_nm) / size + 0.5

        updated = []
        for token in viewer_sessions.tokens_for_dataset(dataset.id, active_within_days=active_days):

            def change(state: dict[str, Any]) -> dict[str, Any]:
                origin = session_origin(state) or default_origin
                if origin is None:
                    return state
                if mapping is not None and moved is not None:
                    state = move_landmarks(state, moved[0], mapping)
                return replace_sources(state, origin, dataset, transforms)

            try:
                viewer_sessions.update_state(token, change)
                updated.append(token)
            except Exception as error:  # a malformed or contended session must not undo a saved transform
                log.warning("viewer session %s… not updated after a new transform: %s", token[:6], error)
        return updated

    # Writing

    def set_matrix(
        self,
        dataset_ref: str | int,
        image_name: str,
        matrix: object,
        *,
        unit: str | None = "nm",
        reference: str | None = None,
        method: str = "matrix",
        author: str = "",
        note: str = "",
    ) -> TransformRecord:
        """Store an affine given in ``unit`` (its translation is converted to nm)."""
        _, image, reference_image = self.lookup(dataset_ref, image_name, reference)
        spec = TransformSpec(
            kind="affine",
            dimensions=3,
            matrix=affine_in_nm(matrix, unit).tolist(),
            method=method,
            author=author,
            note=note,
        )
        return self.transforms.save(image.id, reference_image.id, checked_spec(spec))

    def fit_landmarks(
        self,
        dataset_ref: str | int,
        image_name: str,
        moving: object,
        reference_points: object,
        *,
        fit: str = "affine",
        units: str = "nm",
        dimensions: int | None = None,
        names: list[str] | None = None,
        reference: str | None = None,
        method: str = "landmarks",
        author: str = "",
        note: str = "",
        save: bool = True,
    ) -> Registration:
        """Fit ``fit`` from paired points, report each pair's residual, and store it if ``save``.

        ``units`` is "pixels" (level-0 voxel indices of each image) or a length unit.
        """
        if fit not in FITS:
            raise InvalidTransform(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
        _, image, reference_image = self.lookup(dataset_ref, image_name, reference)
        check_pair_dimensions(moving, reference_points, dimensions)
        moving_points = check_points(moving, "moving landmarks")
        reference_xyz = check_points(reference_points, "reference landmarks")
        if units == "pixels":
            moving_nm = converted(moving_points, xyz(image.voxel_size_nm), "moving landmarks")
            reference_nm = converted(reference_xyz, xyz(reference_image.voxel_size_nm), "reference landmarks")
        else:
            factor = nm_per(units)
            moving_nm = converted(moving_points, factor, "moving landmarks")
            reference_nm = converted(reference_xyz, factor, "reference landmarks")
        if dimensions is None:
            # A flat moving image (a section, a projection) or points all in one plane: fit in x, y.
            flat = image.shape[0] == 1
            coplanar = np.ptp(moving_nm[:, 2]) == 0 and np.ptp(reference_nm[:, 2]) == 0
            dimensions = 2 if flat or coplanar else 3
        names = names or [str(i + 1) for i in range(len(moving_nm))]
        if len(names) != len(moving_nm):
            raise InvalidTransform(f"{len(names)} landmark names for {len(moving_nm)} landmark pairs")
        residuals: np.ndarray | None
        if fit == "tps":
            spline = ThinPlateSpline(moving_nm, reference_nm, dimensions, inverse=False)
            residuals = spline.leave_one_out_nm()
            kind = "tps"
            try:  # the spline's affine part, for exports and as a fallback view
                matrix: np.ndarray | None = fit_affine(moving_nm, reference_nm, "affine", dimensions).matrix
            except InvalidTransform:
                matrix = None
        else:
            fitted = fit_affine(moving_nm, reference_nm, fit, dimensions)  # type: ignore[arg-type]
            residuals, kind, matrix = fitted.residuals_nm, "affine", fitted.matrix
        spec = TransformSpec(
            kind=kind,
            dimensions=dimensions,
            matrix=None if matrix is None else matrix.tolist(),
            landmarks={"moving": moving_nm.tolist(), "reference": reference_nm.tolist(), "names": names},
            method=method,
            fit=fit,
            residuals_nm=finite_or_none(residuals),
            rms_nm=rms_of(residuals),
            author=author,
            note=note,
        )
        report = landmark_report(names, moving_nm, reference_nm, residuals, reference_image)
        registration = Registration(checked_spec(spec), report)
        if save:
            registration.record = self.transforms.save(image.id, reference_image.id, spec)
        return registration

    def import_file(
        self,
        dataset_ref: str | int,
        image_name: str,
        filename: str,
        text: str,
        *,
        reference_text: str | None = None,
        fit: str | None = None,
        unit: str | None = None,
        reference: str | None = None,
        author: str = "",
        save: bool = True,
    ) -> Registration:
        """A transform file (matrix, MoBIE, eC-CLEM, BigWarp, point lists) stored with its provenance.

        Landmark-only files are fitted by ``fit``; by default a spline if the file's own registration
        was non-linear, else an affine.
        """
        imported: ImportedTransform = parse_transform_file(filename, text, reference_text=reference_text)
        fit = fit or ("tps" if imported.nonlinear else "affine")
        note = f"{filename}: {imported.notes}"
        pairs_in_physical = imported.landmarks is not None and not imported.landmarks.in_pixels
        stated = imported.unit or (imported.landmarks.unit if imported.landmarks else None)
        needs_unit = imported.matrix is not None or pairs_in_physical
        if unit is None and stated is None and needs_unit and imported.format in ("mobie", "bigwarp"):
            raise InvalidTransform(
                f"{filename}: {imported.format} files do not state their length unit; give it (e.g. um or nm)"
            )
        _, image, reference_image = self.lookup(dataset_ref, image_name, reference)
        pairs = imported.landmarks
        if imported.matrix is None:
            assert pairs is not None
            registration = self.fit_landmarks(
                dataset_ref, image_name, pairs.moving, pairs.reference,
                fit=fit, units="pixels" if pairs.in_pixels else (unit or pairs.unit or "nm"),
                dimensions=pairs.dimensions, names=list(pairs.names), reference=reference,
                method=imported.format, author=author, note=note, save=False,
            )  # fmt: skip
        else:
            # The file's own matrix is what its author validated: keep it, and judge it by its landmarks.
            if imported.unit == "pixel":  # e.g. eC-CLEM 2D: moving pixels -> reference pixels
                to_reference_nm = scale_matrix(xyz(reference_image.voxel_size_nm))
                from_moving_nm = np.linalg.inv(scale_matrix(xyz(image.voxel_size_nm)))
                matrix = composed(to_reference_nm, check_affine(imported.matrix), from_moving_nm)
            else:
                matrix = affine_in_nm(imported.matrix, unit or imported.unit or "nm")
            spec = TransformSpec(
                kind="affine", dimensions=imported.dimensions, matrix=matrix.tolist(),
                method=imported.format, author=author, note=note,
            )  # fmt: skip
            report: list[dict[str, Any]] = []
            if pairs is not None:
                moving_points = check_points(pairs.moving, "moving landmarks")
                reference_xyz = check_points(pairs.reference, "reference landmarks")
                if pairs.in_pixels:
                    moving_nm = converted(moving_points, xyz(image.voxel_size_nm), "moving landmarks")
                    reference_nm = converted(reference_xyz, xyz(reference_image.voxel_size_nm), "reference landmarks")
                else:
                    factor = nm_per(unit or pairs.unit or imported.unit or "nm")
                    moving_nm = converted(moving_points, factor, "moving landmarks")
                    reference_nm = converted(reference_xyz, factor, "reference landmarks")
                residuals = np.linalg.norm(apply_affine(matrix, moving_nm) - reference_nm, axis=1)
                spec.landmarks = {"moving": moving_nm.tolist(), "reference": reference_nm.tolist(),
                                  "names": list(pairs.names)}
                spec.residuals_nm = finite_or_none(residuals)
                spec.rms_nm = rms_of(residuals)
                report = landmark_report(list(pairs.names), moving_nm, reference_nm, residuals, reference_image)
            registration = Registration(checked_spec(spec), report)
        if save:
            registration.record = self.transforms.save(image.id, reference_image.id, registration.spec)
        return registration

    # Exports

    def export(self, dataset_ref: str | int, image_name: str, form: str, origin: str) -> dict[str, Any]:
        dataset, record = self.current(dataset_ref, image_name)
        image = dataset.image(image_name)
        reference = dataset.reference()
        if form == "neuroglancer":
            # A whole viewer state: the reference and this image (and its labels) in reference space.
            shown = {image.id, *(i.id for i in dataset.images if i.labels_of == image.id)}
            if reference is not None:
                shown.add(reference.id)
            subset = dataset.model_copy(update={"images": [i for i in dataset.images if i.id in shown]})
            return dataset_state(origin, subset, self.current_transforms(dataset))
        if record is None:
            matrix = np.eye(4)
        elif record.matrix is None:
            raise InvalidTransform(f"{image_name!r} has no affine to export")
        else:
            matrix = np.asarray(record.matrix)
        if form == "mobie":
            if record is not None and record.kind == "tps":
                raise InvalidTransform("MoBIE views hold affine transforms only; this image has a thin-plate spline")
            return mobie_view(f"{dataset.name}-{image_name}", image_name, matrix, unit_scale=1e-3)
        if form == "json":
            data = transform_json(record) if record is not None else matrix_json(matrix, "nanometer")
            data["image"] = image_name
            data["reference"] = reference.name if reference else None
            return data
        raise InvalidTransform("format must be json, mobie or neuroglancer")
