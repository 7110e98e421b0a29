"""Dataset metadata following the REMBI modules (Sarkans et al. 2021), read from JSON or YAML.

Every module is optional and keeps unknown keys, so a full BioImage Archive or EMPIAR
record fits; the fields named here are the ones Lamella shows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from annotations.errors import InvalidMetadata

if TYPE_CHECKING:  # catalog imports this module
    from annotations.catalog import DatasetRecord
    from annotations.transforms import TransformRecord

ACCESSION = re.compile(r"^(EMPIAR-\d{5,}|S-B[A-Z]{2,4}\d+|EMD-\d{4,}|IDR\d{4,}\S*)$", re.ASCII)


class Module(BaseModel):
    model_config = ConfigDict(extra="allow")


class Study(Module):
    title: str | None = None
    description: str | None = None
    authors: list[str] = []
    keywords: list[str] = []
    funding: str | None = None
    publication: str | None = None


class Biosample(Module):
    organism: str | None = None
    biological_entity: str | None = None
    description: str | None = None


class Specimen(Module):
    sample_preparation: str | None = None
    growth_protocol: str | None = None


class ImageAcquisition(Module):
    imaging_method: str | None = None
    microscope: str | None = None
    detector: str | None = None
    voxel_size_nm: list[float] | None = None


class ImageData(Module):
    description: str | None = None
    file_format: str | None = None


class ImageCorrelation(Module):
    method: str | None = None
    fiducials: str | None = None
    transforms: list[Any] = []


class DatasetMetadata(BaseModel):
    """What ``--metadata FILE`` holds; ``title`` defaults to the dataset name."""

    model_config = ConfigDict(extra="forbid")
    title: str | None = Field(default=None, max_length=500)
    description: str = ""
    accession: str | None = None
    licence: str | None = Field(default=None, max_length=200)
    study: Study = Study()
    biosample: Biosample = Biosample()
    specimen: Specimen = Specimen()
    image_acquisition: ImageAcquisition = ImageAcquisition()
    image_data: ImageData = ImageData()
    image_correlation: ImageCorrelation = ImageCorrelation()

    @field_validator("accession")
    @classmethod
    def _accession(cls, value: str | None) -> str | None:
        if value is not None and not ACCESSION.fullmatch(value):
            raise ValueError("expected an archive accession such as EMPIAR-10982 or S-BIAD123")
        return value

    def rembi(self) -> dict[str, Any]:
        modules = ("study", "biosample", "specimen", "image_acquisition", "image_data", "image_correlation")
        return {name: getattr(self, name).model_dump(exclude_defaults=True) for name in modules}


def parse_metadata(document: Any) -> DatasetMetadata:
    try:
        return DatasetMetadata.model_validate(document or {})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}" for e in error.errors()
        )
        raise InvalidMetadata(problems) from None


def load_metadata(path: Path) -> DatasetMetadata:
    """Read a JSON or YAML metadata file (raises InvalidMetadata naming the file)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise InvalidMetadata(f"{path}: {error.strerror}") from None
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise InvalidMetadata(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {error}") from None
    try:
        return parse_metadata(document)
    except InvalidMetadata as error:
        raise InvalidMetadata(f"{path}: {error}") from None


REMBI_MODULES = ("study", "study_component", "biosample", "specimen", "image_acquisition", "image_data",
                 "image_correlation", "analysed_data")


def correlation_records(dataset: DatasetRecord, current: dict[int, TransformRecord]) -> list[dict[str, Any]]:
    """REMBI image-correlation records of a dataset's current transforms (``current``: image id to its newest
    transform into the reference image), in the shape ``lamella add-entry`` reads back: related images (moving,
    reference), method, fiducials, and an affine's matrix (x, y, z in nm, row by row); a thin-plate spline gives
    its landmark pairs instead."""
    reference = dataset.reference()
    names = {image.id: image.name for image in dataset.images}
    records = []
    for image_id, transform in sorted(current.items()):
        if image_id not in names or reference is None or image_id == reference.id:
            continue
        pairs = len((transform.landmarks or {}).get("moving") or [])
        record: dict[str, Any] = {
            "related_images": [names[image_id], reference.name],
            "method": " ".join(p for p in (transform.method, transform.fit and f"({transform.fit} fit)") if p),
            "fiducials": f"{pairs} landmark pairs" if pairs else None,
            "kind": transform.kind, "unit": "nm",
            "transformation_matrix": transform.matrix if transform.kind == "affine" else None,
            "landmarks": transform.landmarks if transform.kind != "affine" else None,
            "residuals_nm": transform.residuals_nm, "rms_nm": transform.rms_nm,
        }
        records.append({key: value for key, value in record.items() if value is not None})
    return records


def rembi_document(dataset: DatasetRecord, images: list[dict[str, Any]], page_url: str,
                   layers_url: str, correlations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A dataset's metadata as the REMBI modules (Sarkans et al. 2021), for an archive submission or a catalog.

    ``images``: each image as the API describes it (name,
    modality, shape, voxel size, dtype, OME-Zarr version, URLs); ``page_url``, ``layers_url``: where the dataset
    is viewed and its annotation layers (analysed data) are listed; ``correlations``: the records of the dataset's
    current transforms (``correlation_records``), which are the image-correlation module's transforms. Stored
    modules keep every key they hold; what Lamella knows itself (title, accession, licence, the images, the
    transforms) fills in what they lack.
    """
    stored = dataset.rembi or {}

    def module(name: str) -> dict[str, Any]:
        value = stored.get(name)
        return dict(value) if isinstance(value, dict) else {}

    study = module("study")
    study.setdefault("title", dataset.title)
    study.setdefault("description", dataset.description)
    study["accession"] = dataset.accession
    study["licence"] = dataset.licence
    study["url"] = page_url
    image_data = module("image_data")
    image_data["images"] = [{
        "name": image["name"], "modality": image["modality"], "kind": image["kind"],
        "file_format": f"OME-Zarr {image['ome_version']} (Zarr v{image['zarr_format']})",
        "dimensions_zyx": [image["shape"][axis] for axis in "zyx"], "channels": image["channels"],
        "data_type": image["dtype"], "voxel_size_nm_zyx": [image["voxel_size_nm"][axis] for axis in "zyx"],
        "levels": len(image["levels"]), "zarr_url": image["urls"]["zarr"].split("://", 1)[1],
        "neuroglancer_source": image["urls"]["precomputed"],
    } for image in images]
    reference = dataset.reference()
    return {
        "format": "REMBI",
        "study": study,
        "study_component": {"name": dataset.name, "description": dataset.description,
                            "reference_image": reference.name if reference is not None else None},
        "biosample": module("biosample"),
        "specimen": module("specimen"),
        "image_acquisition": module("image_acquisition"),
        "image_data": image_data,
        "image_correlation": correlation_module(module("image_correlation"), correlations),
        "analysed_data": {"annotation_layers": layers_url,
                          "description": "annotation layers, each with its MIFA record (export format=mifa)"},
    }


def correlation_module(stored: dict[str, Any], correlations: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The image-correlation module: what was stored, with the dataset's current transforms as its transforms
    (and its method and fiducials summed up from them) when it has any."""
    if not correlations:
        return stored
    return {**stored,
            "method": "; ".join(dict.fromkeys(record["method"] for record in correlations if record.get("method"))),
            "fiducials": "; ".join(dict.fromkeys(r["fiducials"] for r in correlations if r.get("fiducials")))
            or stored.get("fiducials"),
            "transforms": correlations}
