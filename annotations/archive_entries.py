"""Archive entries as EMPIAR's and the BioImage Archive's public APIs answer them, and their REMBI metadata.

Pure code: pydantic models of the records (unknown keys kept) and one parse function per archive that turns
any validation problem into one ``InvalidEntry`` line; ``annotations.entry_metadata`` maps them onto REMBI.

EMPIAR (``GET /empiar/api/entry/EMPIAR-NNNNN/``) answers ``{"EMPIAR-NNNNN": {...}}``; its enumerated
fields are either the deposition codes (``"('T1', '')"``, ``"('OT', 'NAME')"``, experiment types 1 to 9)
or their names (``"MRC"``): both are read. BioImage Archive records follow its shared data models
(``Study``, ``Image``, ``ImageRepresentation``; voxel sizes in metres).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from annotations.errors import InvalidEntry

EMPIAR_ACCESSION = re.compile(r"^EMPIAR-\d{5,}$", re.ASCII)
BIA_ACCESSION = re.compile(r"^S-B[A-Z]{2,4}\d+$", re.ASCII)

# EMPIAR's enumerations (deposition schema): code -> name.
EMPIAR_FORMATS = {"T1": "MRC", "T2": "MRCS", "T3": "TIFF", "T4": "IMAGIC", "T5": "DM3", "T6": "DM4",
                  "T7": "SPIDER", "T8": "XML", "T9": "EER"}  # fmt: skip
EMPIAR_DATA_FORMATS = {**EMPIAR_FORMATS, "T8": "BIG DATA VIEWER HDF5"}
EMPIAR_CATEGORIES = {
    "T1": "micrographs - single frame", "T2": "micrographs - multiframe",
    "T3": "micrographs - focal pairs - unprocessed", "T4": "micrographs - focal pairs - contrast inverted",
    "T5": "picked particles - single frame - unprocessed", "T6": "picked particles - multiframe - unprocessed",
    "T7": "picked particles - single frame - processed", "T8": "picked particles - multiframe - processed",
    "T9": "tilt series", "T10": "class averages",
}  # fmt: skip
EMPIAR_VOXEL_TYPES = {"T1": "UNSIGNED BYTE", "T2": "SIGNED BYTE", "T3": "UNSIGNED 16 BIT INTEGER",
                      "T4": "SIGNED 16 BIT INTEGER", "T5": "UNSIGNED 32 BIT INTEGER", "T6": "SIGNED 32 BIT INTEGER",
                      "T7": "32 BIT FLOAT", "T8": "BIT"}  # fmt: skip
EMPIAR_EXPERIMENT_TYPES = {
    1: "soft X-ray tomography", 2: "simulated data", 3: "raw image data of an EMDB structure",
    4: "serial block-face scanning electron microscopy (SBF-SEM)",
    5: "focused ion beam scanning electron microscopy (FIB-SEM)", 6: "integrative hybrid modelling",
    7: "correlative light and electron microscopy (CLEM)", 8: "correlative light and X-ray microscopy",
    9: "microcrystal electron diffraction (MicroED)",
}  # fmt: skip
_CODED = re.compile(r"^\(\s*'([A-Z0-9]+)'\s*,\s*'([^']*)'\s*\)$")
_NAME_PAIR = re.compile(r"^\(\s*'([^']+)'\s*,\s*'([^']*)'\s*\)$")  # ('Smith', 'JW')
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def enumerated(value: object, names: dict[str, str]) -> str | None:
    """The name of an EMPIAR enumerated value given as a code (``('T1', '')``, ``T1``) or a name."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, not {type(value).__name__}")
    text = value.strip()
    match = _CODED.fullmatch(text)
    code, other = (match.group(1), match.group(2)) if match else (text, "")
    if code == "OT":
        return other.strip().upper() or "OTHER"
    if code in names:
        return names[code]
    known = {name.upper(): name for name in names.values()}
    return known.get(text.upper(), text)


class Record(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class EmpiarImageSet(Record):
    name: str = Field(min_length=1, max_length=500)
    directory: str = Field(min_length=1)
    category: str | None = None
    header_format: str | None = None
    data_format: str | None = None
    voxel_type: str | None = None
    num_images_or_tilt_series: int | None = None
    frames_per_image: int | None = None
    pixel_width: float | None = Field(None, gt=0)  # ångström
    pixel_height: float | None = Field(None, gt=0)
    image_width: int | None = None
    image_height: int | None = None
    details: str | None = None
    segmentations: list[Any] | None = None

    @field_validator("category")
    @classmethod
    def _category(cls, value: object) -> str | None:
        return enumerated(value, EMPIAR_CATEGORIES)

    @field_validator("header_format")
    @classmethod
    def _header(cls, value: object) -> str | None:
        return enumerated(value, EMPIAR_FORMATS)

    @field_validator("data_format")
    @classmethod
    def _data(cls, value: object) -> str | None:
        return enumerated(value, EMPIAR_DATA_FORMATS)

    @field_validator("voxel_type")
    @classmethod
    def _voxel(cls, value: object) -> str | None:
        return enumerated(value, EMPIAR_VOXEL_TYPES)

    @property
    def file_format(self) -> str | None:
        return self.data_format or self.header_format


class EmpiarAuthor(Record):
    name: str = Field(min_length=1)
    order_id: int = 0
    author_orcid: str | None = None

    @property
    def display(self) -> str:
        """``('Smith', 'JW')`` as ``Smith JW``; other spellings as given."""
        match = _NAME_PAIR.fullmatch(self.name.strip())
        return f"{match.group(1)} {match.group(2)}".strip() if match else self.name.strip()


def _unwrap_author(value: object) -> object:
    # The public API nests each author as {"author": {...}}; the deposition JSON does not.
    return value["author"] if isinstance(value, dict) and isinstance(value.get("author"), dict) else value


class EmpiarCitation(Record):
    title: str | None = None
    authors: list[EmpiarAuthor] = []
    journal: str | None = None
    journal_abbreviation: str | None = None
    year: int | None = None
    volume: str | None = None
    first_page: str | None = None
    last_page: str | None = None
    doi: str | None = None
    pubmedid: str | None = None

    @field_validator("authors", mode="before")
    @classmethod
    def _authors(cls, value: object) -> object:
        return [_unwrap_author(a) for a in value] if isinstance(value, list) else value

    def text(self) -> str:
        names = ", ".join(a.display for a in sorted(self.authors, key=lambda a: a.order_id))
        pages = "-".join(p for p in (self.first_page, self.last_page) if p)
        where = " ".join(str(p) for p in (self.journal or self.journal_abbreviation, self.volume) if p)
        parts = [names, f"({self.year})" if self.year else "", f"{self.title}." if self.title else "",
                 f"{where}:{pages}" if pages and where else where, f"doi:{self.doi}" if self.doi else ""]
        return " ".join(p for p in parts if p)


class Reference(Record):
    name: str = Field(min_length=1)


class Correlation(Record):
    """REMBI's image-correlation module: method, fiducials, transformation matrix and related images.

    ``related_images`` names the moving image then the reference image (image set names for EMPIAR, image
    uuids or labels for the BioImage Archive); the matrix maps moving to reference physical coordinates
    (x, y, z) in ``unit`` (default nanometres), as 16, 12 or (2D) 9 numbers, row by row, or rows of numbers.
    """

    method: str | None = Field(None, validation_alias=AliasChoices(
        "method", "spatial_and_temporal_alignment", "title", "protocol_description"))
    fiducials: str | None = Field(None, validation_alias=AliasChoices("fiducials", "fiducials_used"))
    transformation_matrix: list[list[float]] | None = None
    unit: str | None = None
    related_images: list[str] = Field(default=[], validation_alias=AliasChoices(
        "related_images", "related_images_and_relationship"))

    @field_validator("transformation_matrix", mode="before")
    @classmethod
    def _matrix(cls, value: object) -> object:
        flat = isinstance(value, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        if isinstance(value, str) or flat:
            numbers = [float(n) for n in (_NUMBER.findall(value) if isinstance(value, str) else value)]  # type: ignore[union-attr]
            side = {16: 4, 12: 4, 9: 3}.get(len(numbers))
            if side is None:
                raise ValueError(f"a transformation matrix has 16, 12 or 9 numbers, not {len(numbers)}")
            return [numbers[i: i + side] for i in range(0, len(numbers), side)]
        return value

    @field_validator("related_images", mode="before")
    @classmethod
    def _related(cls, value: object) -> object:
        if isinstance(value, dict):  # {"moving": ..., "reference": ...}
            return [value.get("moving"), value.get("reference")]
        return value


class EmpiarEntry(Record):
    accession: str
    title: str = Field(min_length=1, max_length=500)
    authors: list[EmpiarAuthor] = []
    release_date: str | None = None
    experiment_type: str | None = None
    scale: str | None = None
    citation: list[EmpiarCitation] = []
    cross_references: list[Reference] = []
    biostudies_references: list[Reference] = []
    idr_references: list[Reference] = []
    imagesets: list[EmpiarImageSet] = Field(min_length=1)
    image_correlation: list[Correlation] = []
    doi: str | None = None

    @field_validator("authors", mode="before")
    @classmethod
    def _authors(cls, value: object) -> object:
        return [_unwrap_author(a) for a in value] if isinstance(value, list) else value

    @field_validator("experiment_type", mode="before")
    @classmethod
    def _experiment(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            if value not in EMPIAR_EXPERIMENT_TYPES:
                raise ValueError(f"experiment type {value} is not one of EMPIAR's (1 to 9)")
            return EMPIAR_EXPERIMENT_TYPES[value]
        return value

    @field_validator("image_correlation", mode="before")
    @classmethod
    def _correlation(cls, value: object) -> object:
        return _listed(value)

    @field_validator("release_date", mode="before")
    @classmethod
    def _release(cls, value: object) -> object:
        return str(value) if isinstance(value, date) else value


class BiaAffiliation(Record):
    display_name: str


class BiaContributor(Record):
    display_name: str = Field(min_length=1)
    orcid: str | None = None
    affiliation: list[BiaAffiliation] = []


class BiaLink(Record):
    link: str
    link_type: str | None = None
    description: str | None = None


class BiaPublication(Record):
    title: str | None = None
    authors_name: str | None = None
    publication_year: int | None = None
    pubmed_id: str | None = None
    doi: str | None = None

    def text(self) -> str:
        parts = [self.authors_name or "", f"({self.publication_year})" if self.publication_year else "",
                 f"{self.title}." if self.title else "", f"doi:{self.doi}" if self.doi else ""]
        return " ".join(p for p in parts if p)


class BiaTaxon(Record):
    scientific_name: str | None = None
    common_name: str | None = None


class BiaBioSample(Record):
    title: str | None = None
    organism_classification: list[BiaTaxon] = []
    biological_entity_description: str | None = None


class BiaProtocol(Record):
    title: str | None = None
    protocol_description: str | None = None
    imaging_instrument_description: str | None = None
    imaging_method_name: list[str] = []


def _listed(value: object) -> object:
    return [value] if isinstance(value, dict) else value if value is not None else []


class BiaStudy(Record):
    accession_id: str
    title: str = Field(min_length=1, max_length=500)
    description: str = ""
    release_date: date | None = None
    licence: str | None = None
    author: list[BiaContributor] = []
    keyword: list[str] = []
    see_also: list[BiaLink] = []
    related_publication: list[BiaPublication] = []
    funding_statement: str | None = None
    correlation_method: list[Correlation] = []
    # The study's other records (BioSample, protocols), when given with it: the REMBI modules.
    bio_sample: list[BiaBioSample] = []
    specimen_imaging_preparation_protocol: list[BiaProtocol] = []
    image_acquisition_protocol: list[BiaProtocol] = []

    @field_validator("correlation_method", "bio_sample", "specimen_imaging_preparation_protocol",
                     "image_acquisition_protocol", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _listed(value)


class BiaImageRepresentation(Record):
    uuid: str | None = None
    representation_of_uuid: str | None = None
    use_type: str | None = None
    image_format: str = ""
    file_uri: list[str] = []
    voxel_physical_size_x: float | None = Field(None, gt=0, validation_alias=AliasChoices(
        "voxel_physical_size_x", "physical_size_x", "single_voxel_physical_size_x"))
    voxel_physical_size_y: float | None = Field(None, gt=0, validation_alias=AliasChoices(
        "voxel_physical_size_y", "physical_size_y", "single_voxel_physical_size_y"))
    voxel_physical_size_z: float | None = Field(None, gt=0, validation_alias=AliasChoices(
        "voxel_physical_size_z", "physical_size_z", "single_voxel_physical_size_z"))
    size_x: int | None = None
    size_y: int | None = None
    size_z: int | None = None

    @property
    def is_ome_zarr(self) -> bool:
        return self.image_format.lower().lstrip(".").replace("_", ".") in ("ome.zarr", "zarr")

    def voxel_size_nm(self) -> list[float] | None:
        """The record's z, y, x voxel size in nm (the records give metres); None when x or y is missing."""
        x, y, z = self.voxel_physical_size_x, self.voxel_physical_size_y, self.voxel_physical_size_z
        if x is None or y is None:
            return None
        return [v * 1e9 for v in ((z,) if z is not None else ()) + (y, x)]


class BiaImage(Record):
    uuid: str = Field(min_length=1)
    label: str | None = None
    representation: list[BiaImageRepresentation] = Field(
        default=[], validation_alias=AliasChoices("representation", "image_representation", "representations"))

    def ome_zarr(self) -> BiaImageRepresentation | None:
        """The representation to register: an OME-Zarr one, interactive-display ones first."""
        zarrs = [r for r in self.representation if r.is_ome_zarr and r.file_uri]
        zarrs.sort(key=lambda r: r.use_type != "INTERACTIVE_DISPLAY")
        return zarrs[0] if zarrs else None


class BiaEntry(BaseModel):
    study: BiaStudy
    images: list[BiaImage]


def _problems(error: ValidationError, prefix: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
    return f"{prefix}{where or 'entry'}: {first['msg']}{more}"


def parse_empiar(document: object, accession: str) -> EmpiarEntry:
    """The entry ``accession`` from EMPIAR's API answer (``{"EMPIAR-NNNNN": {...}}``, or the entry alone)."""
    if not EMPIAR_ACCESSION.fullmatch(accession):
        raise InvalidEntry(f"{accession!r} is not an EMPIAR accession (EMPIAR-NNNNN)")
    if not isinstance(document, dict):
        raise InvalidEntry("the EMPIAR entry is not a JSON object")
    if accession in document:
        document = document[accession]
    elif any(EMPIAR_ACCESSION.fullmatch(str(key)) for key in document):
        raise InvalidEntry(f"the EMPIAR answer holds {', '.join(map(str, document))[:80]}, not {accession}")
    if not isinstance(document, dict):
        raise InvalidEntry(f"{accession} is not a JSON object")
    try:
        return EmpiarEntry.model_validate({**document, "accession": accession})
    except ValidationError as error:
        raise InvalidEntry(_problems(error, f"{accession}: ")) from None


def parse_bia(study: object, images: object, accession: str) -> BiaEntry:
    """A BioImage Archive study and its images: a list of Image records, each with its representations
    embedded (``representation``) or given beside it as ImageRepresentation records
    (``representation_of_uuid``); ``{"images": [...], "image_representations": [...]}`` is read too."""
    if not BIA_ACCESSION.fullmatch(accession):
        raise InvalidEntry(f"{accession!r} is not a BioImage Archive accession (S-BIADNNNN)")
    if isinstance(images, dict):
        images = [*(images.get("images") or []), *(images.get("image_representations") or [])]
    if not isinstance(study, dict) or not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
        raise InvalidEntry(f"{accession}: the study must be a JSON object and the images a list of objects")
    loose = [item for item in images if "representation_of_uuid" in item]
    records = [item for item in images if "representation_of_uuid" not in item]
    try:
        parsed = BiaEntry(study=BiaStudy.model_validate(study), images=[BiaImage.model_validate(i) for i in records])
        representations = [BiaImageRepresentation.model_validate(item) for item in loose]
    except ValidationError as error:
        raise InvalidEntry(_problems(error, f"{accession}: ")) from None
    if parsed.study.accession_id != accession:
        raise InvalidEntry(f"the study record is {parsed.study.accession_id!r}, not {accession}")
    by_uuid = {image.uuid: image for image in parsed.images}
    for representation in representations:
        image = by_uuid.get(str(representation.representation_of_uuid))
        if image is None:
            raise InvalidEntry(f"{accession}: a representation of image {representation.representation_of_uuid!r}, "
                               "which the images do not hold")
        image.representation.append(representation)
    return parsed
