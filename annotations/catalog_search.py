"""The catalog as a front door: what a dataset's card shows (organism, imaging method, size, from its REMBI
record and its images), and the search and filters over the datasets an actor may read.

A catalog of a few hundred datasets is filtered here, in Python, over the records the database already
returns (one query with the images): JSON fields of the REMBI record would need a different SQL spelling per
database, and a few hundred records filter in well under a millisecond each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from annotations.catalog import DatasetRecord

FILTER_TEXT = 200  # characters of a search or filter value


def rembi_field(dataset: DatasetRecord, module: str, name: str) -> str | None:
    """A text field of one REMBI module, or None when absent or not text."""
    value = (dataset.rembi.get(module) or {}).get(name)
    return value.strip() or None if isinstance(value, str) else None


def organism(dataset: DatasetRecord) -> str | None:
    return rembi_field(dataset, "biosample", "organism")


def imaging_method(dataset: DatasetRecord) -> str | None:
    return rembi_field(dataset, "image_acquisition", "imaging_method")


@dataclass(frozen=True)
class DatasetSize:
    """How big a dataset is: voxels and uncompressed bytes of its images' full-resolution levels, and the extent
    of its reference image in micrometres (x, y, z)."""

    voxels: int
    bytes: int
    extent_um: tuple[float, float, float] | None


def dataset_size(dataset: DatasetRecord) -> DatasetSize:
    voxels = total = 0
    for image in dataset.images:
        count = int(np.prod(image.shape, dtype=np.int64)) * max(image.channels, 1)
        voxels += count
        total += count * np.dtype(image.dtype).itemsize
    reference = dataset.reference()
    extent = None
    if reference is not None:
        z, y, x = (n * size / 1000 for n, size in zip(reference.shape, reference.voxel_size_nm, strict=True))
        extent = (round(x, 3), round(y, 3), round(z, 3))
    return DatasetSize(voxels, total, extent)


class CatalogFilter(BaseModel):
    """Which datasets to list. Each given value must be found (case-insensitively, as a part) in its field;
    ``text`` in the title, name, description, accession, organism, imaging method, keywords or image names."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=FILTER_TEXT, description="words to find in any descriptive field")
    method: str | None = Field(None, max_length=FILTER_TEXT, description="part of the REMBI imaging method")
    organism: str | None = Field(None, max_length=FILTER_TEXT, description="part of the REMBI biosample organism")
    accession: str | None = Field(None, max_length=FILTER_TEXT, description="part of the archive accession")

    def active(self) -> bool:
        return any(value for value in (self.text, self.method, self.organism, self.accession))


def _has(needle: str | None, haystack: str | None) -> bool:
    if not needle or not needle.strip():
        return True
    return haystack is not None and needle.strip().casefold() in haystack.casefold()


def searchable_text(dataset: DatasetRecord) -> str:
    keywords = (dataset.rembi.get("study") or {}).get("keywords") or []
    parts: list[Any] = [dataset.title, dataset.name, dataset.description, dataset.accession, organism(dataset),
                        imaging_method(dataset), *[image.name for image in dataset.images],
                        *[image.modality for image in dataset.images], *keywords]
    return "\n".join(str(part) for part in parts if part)


def matches(dataset: DatasetRecord, wanted: CatalogFilter) -> bool:
    if not (_has(wanted.method, imaging_method(dataset)) and _has(wanted.organism, organism(dataset))
            and _has(wanted.accession, dataset.accession)):
        return False
    text = searchable_text(dataset)
    return all(_has(word, text) for word in (wanted.text or "").split())


def filtered(datasets: Iterable[DatasetRecord], wanted: CatalogFilter) -> list[DatasetRecord]:
    return [dataset for dataset in datasets if matches(dataset, wanted)]


def facets(datasets: Iterable[DatasetRecord]) -> dict[str, list[str]]:
    """The distinct imaging methods and organisms among ``datasets``, sorted: the choices of the page's filters."""
    datasets = list(datasets)
    return {
        "methods": sorted({m for m in map(imaging_method, datasets) if m}, key=str.casefold),
        "organisms": sorted({o for o in map(organism, datasets) if o}, key=str.casefold),
    }
