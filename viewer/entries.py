"""Registering a whole archive entry (EMPIAR, BioImage Archive) as one dataset, all or nothing.

EMPIAR: the image sets whose files lie under ``files`` (laid out as the entry's ``directory`` fields) in a
format Lamella imports are converted to OME-Zarr; every other image set is listed in the dataset's REMBI
``image_data.image_sets`` with the reason. BioImage Archive: each image is registered, without copying, at
the OME-Zarr address its representation record gives. REMBI image-correlation records become stored
transforms. Everything is checked and converted first, then the dataset, its images and its transforms are
stored in one transaction; on any failure the converted images are removed and nothing is registered.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotations.archive_entries import BiaEntry, Correlation, EmpiarEntry, EmpiarImageSet
from annotations.entry_metadata import bia_metadata, empiar_metadata
from annotations.errors import DatasetNotFound, InvalidEntry, NameTaken
from tiling.errors import InvalidTransform
from tiling.pyramid import PyramidOptions
from tiling.sources import MRC_SUFFIXES, TIFF_SUFFIXES, open_source

if TYPE_CHECKING:
    from annotations.catalog import Catalog, DatasetRecord, ImageSpec, NewDataset
    from annotations.transforms import TransformSpec

EMPIAR_API = "https://www.ebi.ac.uk/empiar/api/entry/{accession}/"
FETCH_TIMEOUT_S = 30.0
# EMPIAR formats Lamella imports, and the file suffixes that hold them.
IMPORTED_FORMATS: dict[str, frozenset[str]] = {
    "MRC": frozenset(MRC_SUFFIXES),
    "MRCS": frozenset({".mrcs", ".mrc"}),
    "TIFF": frozenset(TIFF_SUFFIXES),
    "PNG": frozenset({".png"}),
    "JPEG": frozenset({".jpg", ".jpeg"}),
}
# Categories whose files are not one image volume (particles, class averages, movies).
NOT_VOLUMES = ("picked particles", "class averages", "micrographs - multiframe")
VOXEL_AGREEMENT = 0.01  # a record's voxel size and the OME-Zarr's may differ by this fraction
# Separate volumes (MRC files) one image set may become: single-particle sets hold thousands of
# micrographs, which are not a dataset of volumes to browse.
MAX_IMAGES_PER_SET = 50


@dataclass
class EntryReport:
    """What ``add-entry`` did: the dataset, and per image set or image what became of it."""

    dataset: DatasetRecord
    items: list[dict[str, Any]] = field(default_factory=list)
    transforms: int = 0


def read_json(path: Path, what: str) -> Any:
    """A JSON file, or InvalidEntry naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidEntry(f"{path}: cannot read the {what} ({error})") from None
    except (ValueError, RecursionError) as error:
        raise InvalidEntry(f"{path}: the {what} is not valid JSON ({error})") from None


def fetch_empiar(accession: str) -> Any:
    """EMPIAR's API answer for ``accession`` (the command does this without --entry-json; tests never do)."""
    import httpx

    url = EMPIAR_API.format(accession=accession)
    try:
        response = httpx.get(url, timeout=FETCH_TIMEOUT_S, follow_redirects=True,
                             headers={"Accept": "application/json", "User-Agent": "lamella"})
        response.raise_for_status()
        return response.json()
    except httpx.HTTPStatusError as error:
        raise InvalidEntry(f"{url}: EMPIAR answered {error.response.status_code}") from None
    except httpx.HTTPError as error:
        raise InvalidEntry(f"{url}: cannot fetch the entry ({error})") from None
    except ValueError:
        raise InvalidEntry(f"{url}: EMPIAR's answer is not JSON") from None


def image_name(text: str, taken: set[str]) -> str:
    """A valid image name from ``text`` (an image set's name, a label), not in ``taken`` (then added to it)."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48].strip("-") or "image"
    base = base if base[0].isalpha() else f"image-{base}"[:48]
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


def _dataset_is_free(catalog: Catalog, name: str) -> None:
    try:
        catalog.get_dataset(name)
    except DatasetNotFound:
        return
    raise NameTaken(f"there is already a dataset {name!r}")


# EMPIAR


@dataclass
class _Planned:
    image_set: EmpiarImageSet
    name: str
    location: Path
    voxel_yx_nm: tuple[float, float] | None
    row: dict[str, Any]  # the set's listing in the metadata


def _set_files(image_set: EmpiarImageSet, files: Path, suffixes: frozenset[str]) -> list[Path]:
    """The files of an image set under ``files``; InvalidEntry when its directory or files are missing."""
    relative = Path(image_set.directory.strip().lstrip("/"))
    if ".." in relative.parts:
        raise InvalidEntry(f"image set {image_set.name!r}: its directory {image_set.directory!r} leads outside")
    candidates = [files / relative]
    if relative.parts and relative.parts[0] == "data":  # --files may be the entry's data folder itself
        candidates.append(files.joinpath(*relative.parts[1:]))
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise InvalidEntry(f"image set {image_set.name!r}: no folder {image_set.directory!r} under {files}")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise InvalidEntry(f"image set {image_set.name!r}: no {image_set.file_format} files in {folder}")
    return found


def _plan_empiar(entry: EmpiarEntry, files: Path | None) -> tuple[list[_Planned], list[dict[str, Any]]]:
    """Which image sets are imported (and from where), and the listing of every set."""
    planned: list[_Planned] = []
    listing: list[dict[str, Any]] = []
    taken: set[str] = set()
    for image_set in entry.imagesets:
        row: dict[str, Any] = {"name": image_set.name, "directory": image_set.directory,
                               "category": image_set.category, "format": image_set.file_format,
                               "voxel_type": image_set.voxel_type, "details": image_set.details}
        if image_set.segmentations:  # kept as the entry gives them (Lamella imports labels with --labels)
            row["segmentations"] = image_set.segmentations
        listing.append(row)
        file_format = (image_set.file_format or "").upper()
        category = (image_set.category or "").lower()
        reason = None
        if file_format not in IMPORTED_FORMATS:
            reason = f"format {image_set.file_format or 'not given'} is not one Lamella imports (MRC, TIFF, PNG, JPEG)"
        elif any(kind in category for kind in NOT_VOLUMES):
            reason = f"{image_set.category} are not an image volume"
        elif files is None:
            reason = "its files were not given (add-entry --files DIR)"
        if reason is not None:
            row.update(imported=False, reason=reason)
            continue
        assert files is not None
        found = _set_files(image_set, files, IMPORTED_FORMATS[file_format])
        voxel = ((image_set.pixel_height or image_set.pixel_width) / 10, image_set.pixel_width / 10) \
            if image_set.pixel_width else None  # ångström to nm
        slices = file_format in ("TIFF", "PNG", "JPEG") and len(found) > 1
        locations = [found[0].parent] if slices else found
        if len(locations) > MAX_IMAGES_PER_SET:
            row.update(imported=False, reason=f"{len(locations)} separate {file_format} files: more than the "
                                              f"{MAX_IMAGES_PER_SET} images one image set may become")
            continue
        names = []
        for location in locations:
            label = image_set.name if len(locations) == 1 else f"{image_set.name} {location.stem}"
            names.append(image_name(label, taken))
            planned.append(_Planned(image_set, names[-1], location, voxel, row))
        row.update(imported=True, images=names)
    return planned, listing


def _convert_set(plan: _Planned, destination: Path, show_progress: bool) -> Any:
    from viewer.registration import write_image_pyramid

    source = open_source(str(plan.location))
    try:
        ndim = len(source.shape)
        own = tuple(source.voxel_size_nm) if source.voxel_size_nm else None
        if plan.voxel_yx_nm is not None:  # the archive's calibration wins (files often carry none, or a wrong one)
            z = own[0] if own is not None and len(own) == 3 else plan.voxel_yx_nm[1]
            voxel = ((z,) if ndim == 3 else ()) + plan.voxel_yx_nm
        else:
            voxel = own or (1.0,) * ndim
        write_image_pyramid(source, destination, tuple(voxel[-ndim:]), PyramidOptions(name=plan.name),
                            f"import {plan.name}", show_progress)
        return voxel
    finally:
        source.close()


def add_empiar_entry(
    catalog: Catalog,
    images_dir: Path,
    document: Any,
    accession: str,
    *,
    files: Path | None = None,
    dataset: str | None = None,
    new: NewDataset | None = None,
    show_progress: bool = False,
) -> EntryReport:
    """Register an EMPIAR entry (its API answer ``document``) as a dataset; see the module's docstring."""
    from annotations.archive_entries import parse_empiar
    from viewer.registration import describe_image

    entry = parse_empiar(document, accession)
    name = dataset or accession.lower()
    _dataset_is_free(catalog, name)
    check_correlations(entry.image_correlation, accession)
    planned, listing = _plan_empiar(entry, files.resolve() if files is not None else None)
    written: list[Path] = []
    try:
        specs: list[ImageSpec] = []
        for plan in planned:
            destination = images_dir / name / f"{plan.name}.ome.zarr"
            shutil.rmtree(destination, ignore_errors=True)  # left by an interrupted run: the dataset is new
            written.append(destination)
            voxel = _convert_set(plan, destination, show_progress)
            specs.append(describe_image(str(destination), name=plan.name, modality=_modality(plan.image_set),
                                        kind="image", managed=True))
            plan.row.setdefault("voxel_size_nm", [round(v, 6) for v in voxel])
        set_images: dict[str, list[str]] = {}
        for row in listing:  # two sets of one name are ambiguous in a correlation: neither is one image
            set_images[row["name"]] = [] if row["name"] in set_images else row.get("images", [])
        transforms, notes = _transforms(entry.image_correlation, accession, set_images, specs)
        metadata = empiar_metadata(entry, listing)
        if notes:
            metadata.image_correlation.transforms = notes
        record = catalog.register_entry(name, specs, metadata, new, transforms)
    except BaseException:
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)
        if written:
            _remove_if_empty(images_dir / name)
        raise
    return EntryReport(record, listing, len(transforms))


def _modality(image_set: EmpiarImageSet) -> str:
    text = f"{image_set.name} {image_set.details or ''}".lower()
    return "fluorescence" if any(word in text for word in ("fluorescen", "light microscopy", " lm ")) else "EM"


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


# Correlation


def check_correlations(correlations: list[Correlation], accession: str) -> None:
    """InvalidEntry unless every correlation record with a matrix relates two images by a usable affine
    (checked before any image set is converted)."""
    for number, correlation in enumerate(correlations, 1):
        if correlation.transformation_matrix is not None:
            _matrix_nm(correlation, accession, number)


def _matrix_nm(correlation: Correlation, accession: str, number: int) -> Any:
    from viewer.correlation import affine_in_nm

    if len(correlation.related_images) != 2:
        raise InvalidEntry(f"{accession}: image correlation {number} must relate two images "
                           f"(moving, reference), not {len(correlation.related_images)}")
    try:
        return affine_in_nm(correlation.transformation_matrix, correlation.unit or "nm")
    except InvalidTransform as error:
        raise InvalidEntry(f"{accession}: image correlation {number}: {error}") from None


def _transforms(
    correlations: list[Correlation], accession: str, images_of: dict[str, list[str]], specs: list[ImageSpec],
) -> tuple[list[tuple[str, str, TransformSpec]], list[dict[str, Any]]]:
    """Stored transforms from REMBI correlation records, and each record as listed in the metadata (with
    why no transform was stored when none was). A record whose matrix cannot be used is refused."""
    from annotations.transforms import TransformSpec
    from viewer.correlation import checked_spec

    registered = {spec.name for spec in specs}
    stored: list[tuple[str, str, TransformSpec]] = []
    notes: list[dict[str, Any]] = []
    for number, correlation in enumerate(correlations, 1):
        note = correlation.model_dump(include={"method", "fiducials", "transformation_matrix", "unit",
                                               "related_images"}, exclude_none=True)
        notes.append(note)
        if correlation.transformation_matrix is None:
            note["stored"] = False
            note["reason"] = "no transformation matrix"
            continue
        matrix = _matrix_nm(correlation, accession, number)
        ends = [images_of.get(str(ref), []) for ref in correlation.related_images]
        if len(ends[0]) != 1 or len(ends[1]) != 1 or not {ends[0][0], ends[1][0]} <= registered:
            missing = [str(ref) for ref, names in zip(correlation.related_images, ends, strict=True) if len(names) != 1]
            note["stored"] = False
            note["reason"] = f"{', '.join(missing) or 'an image'} not registered as one image"
            continue
        dimensions = 2 if len(correlation.transformation_matrix) == 3 else 3
        spec = checked_spec(TransformSpec(
            kind="affine", dimensions=dimensions, matrix=matrix.tolist(), method="archive-entry",
            author=accession, note="; ".join(p for p in (correlation.method, correlation.fiducials and
                                                          f"fiducials: {correlation.fiducials}") if p),
        ))
        stored.append((ends[0][0], ends[1][0], spec))
        note["stored"] = True
    references = {reference for _, reference, _ in stored}
    if len(references) > 1:
        raise InvalidEntry(f"{accession}: the image correlations map into {len(references)} different reference "
                           "images; a dataset has one reference space")
    return stored, notes


# BioImage Archive


def add_bia_entry(
    catalog: Catalog,
    entry: BiaEntry,
    *,
    dataset: str | None = None,
    new: NewDataset | None = None,
    on_image: Callable[[str], None] | None = None,
) -> EntryReport:
    """Register a BioImage Archive study's OME-Zarr images (not copied) as a dataset, all or nothing."""
    from viewer.registration import describe_image

    accession = entry.study.accession_id
    name = dataset or accession.lower()
    _dataset_is_free(catalog, name)
    check_correlations(entry.study.correlation_method, accession)
    specs: list[ImageSpec] = []
    listing: list[dict[str, Any]] = []
    taken: set[str] = set()
    images_of: dict[str, list[str]] = {}
    for image in entry.images:
        row: dict[str, Any] = {"uuid": image.uuid, "label": image.label}
        listing.append(row)
        representation = image.ome_zarr()
        if representation is None:
            formats = sorted({r.image_format for r in image.representation if r.image_format}) or ["none"]
            row.update(imported=False, reason=f"no OME-Zarr representation (formats: {', '.join(formats)})")
            continue
        uri = representation.file_uri[0]
        lamella_name = image_name(image.label or f"image {image.uuid[:8]}", taken)
        if on_image is not None:
            on_image(uri)
        spec = describe_image(uri, name=lamella_name, modality="EM", kind="image", managed=False)
        given = representation.voxel_size_nm()
        if given is not None:
            stored = spec.voxel_size_nm[-len(given):]
            if any(abs(g - s) > VOXEL_AGREEMENT * g for g, s in zip(given, stored, strict=True)):
                raise InvalidEntry(
                    f"{accession}: image {image.label or image.uuid}: the record gives voxels of "
                    f"{[round(v, 4) for v in given]} nm (z, y, x) but its OME-Zarr {[round(v, 4) for v in stored]} nm")
        layout = "bioformats2raw" if spec.uri.rstrip("/") != uri.rstrip("/") else "multiscales"
        row.update(imported=True, images=[lamella_name], uri=uri, series_uri=spec.uri, layout=layout,
                   ome_version=spec.ome_version, zarr_format=spec.zarr_format, voxel_size_nm=spec.voxel_size_nm)
        specs.append(spec)
        for key in (image.uuid, image.label):
            if key:
                images_of[key] = [lamella_name]
    transforms, notes = _transforms(entry.study.correlation_method, accession, images_of, specs)
    metadata = bia_metadata(entry, listing)
    if notes:
        metadata.image_correlation.transforms = notes
    record = catalog.register_entry(name, specs, metadata, new, transforms)
    return EntryReport(record, listing, len(transforms))
