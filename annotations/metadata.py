"""Dataset metadata following the REMBI modules (Sarkans et al. 2021), read from JSON or YAML.

Every module is optional and keeps unknown keys, so a full BioImage Archive or EMPIAR
record fits; the fields named here are the ones Lamella shows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from annotations.errors import InvalidMetadata

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
