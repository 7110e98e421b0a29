"""The REMBI metadata of an archive entry (``annotations.archive_entries``): study, biosample, specimen,
acquisition, image data and correlation, with licence, citation, DOI and cross-references as links."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from annotations.archive_entries import BiaEntry, Correlation, EmpiarEntry, Reference
from annotations.metadata import DatasetMetadata, parse_metadata

EMPIAR_LICENCE = "CC0-1.0"  # EMPIAR releases every entry under CC0
_LICENCES = {
    "https://creativecommons.org/publicdomain/zero/1.0/": "CC0-1.0",
    "https://creativecommons.org/licenses/by/4.0/": "CC-BY-4.0",
    "https://creativecommons.org/licenses/by-sa/4.0/": "CC-BY-SA-4.0",
    "https://creativecommons.org/licenses/by-nc/4.0/": "CC-BY-NC-4.0",
}


def _link(reference: Reference) -> dict[str, str]:
    name = reference.name
    if name.startswith("EMD-"):
        return {"name": name, "url": f"https://www.ebi.ac.uk/emdb/{name}"}
    if name.startswith("S-"):
        return {"name": name, "url": f"https://www.ebi.ac.uk/biostudies/studies/{name}"}
    return {"name": name}


def empiar_metadata(entry: EmpiarEntry, image_sets: list[dict[str, Any]]) -> DatasetMetadata:
    """REMBI metadata of an EMPIAR entry; ``image_sets`` says what became of each image set."""
    citations = [c for c in entry.citation if c.title or c.doi]
    formats = sorted({s.file_format for s in entry.imagesets if s.file_format})
    pixels = [s for s in entry.imagesets if s.pixel_width]
    return parse_metadata({
        "title": entry.title,
        "accession": entry.accession,
        "licence": EMPIAR_LICENCE,
        "study": {
            "title": entry.title,
            "authors": [a.display for a in sorted(entry.authors, key=lambda a: a.order_id)],
            "publication": citations[0].text() if citations else None,
            "doi": entry.doi or (citations[0].doi if citations else None),
            "citations": [c.model_dump(exclude_none=True, mode="json") for c in citations],
            "release_date": entry.release_date,
            "scale": entry.scale,
            "links": [_link(r) for r in (*entry.cross_references, *entry.biostudies_references, *entry.idr_references)],
            "archive": "EMPIAR",
        },
        "image_acquisition": {
            "imaging_method": entry.experiment_type,
            # EMPIAR gives pixel sizes in ångström; REMBI here holds nm (y, x of the first set that gives them)
            **({"voxel_size_nm": [(pixels[0].pixel_height or pixels[0].pixel_width) / 10,  # type: ignore[operator]
                                  pixels[0].pixel_width / 10]} if pixels else {}),  # type: ignore[operator]
        },
        "image_data": {"file_format": ", ".join(formats) or None, "image_sets": image_sets},
        "image_correlation": _correlation_module(entry.image_correlation),
    })


def bia_metadata(entry: BiaEntry, images: list[dict[str, Any]]) -> DatasetMetadata:
    """REMBI metadata of a BioImage Archive study; ``images`` says what became of each image."""
    study = entry.study
    publications = [p for p in study.related_publication if p.title or p.doi]
    licence = _LICENCES.get(study.licence or "", study.licence)
    return parse_metadata({
        "title": study.title,
        "description": study.description,
        "accession": study.accession_id,
        "licence": licence[:200] if licence else None,
        "study": {
            "title": study.title,
            "description": study.description,
            "authors": [a.display_name for a in study.author],
            "keywords": study.keyword,
            "funding": study.funding_statement,
            "publication": publications[0].text() if publications else None,
            "doi": publications[0].doi if publications else None,
            "release_date": str(study.release_date) if study.release_date else None,
            "links": [{"name": link.description or link.link_type or link.link, "url": link.link}
                      for link in study.see_also],
            "archive": "BioImage Archive",
        },
        "biosample": {
            "organism": _joined(t.scientific_name or t.common_name for b in study.bio_sample
                                for t in b.organism_classification),
            "biological_entity": _joined(b.biological_entity_description for b in study.bio_sample),
            "description": _joined(b.title for b in study.bio_sample),
        },
        "specimen": {"sample_preparation": _joined(
            p.protocol_description or p.title for p in study.specimen_imaging_preparation_protocol)},
        "image_acquisition": {
            "imaging_method": _joined(m for p in study.image_acquisition_protocol for m in p.imaging_method_name),
            "microscope": _joined(p.imaging_instrument_description for p in study.image_acquisition_protocol),
        },
        "image_data": {"file_format": "OME-Zarr", "images": images},
        "image_correlation": _correlation_module(study.correlation_method),
    })


def _joined(texts: Iterable[str | None]) -> str | None:
    """Distinct texts in order, joined by "; " (None when there are none)."""
    return "; ".join(dict.fromkeys(t for t in texts if t)) or None


def _correlation_module(correlations: list[Correlation]) -> dict[str, Any]:
    if not correlations:
        return {}
    return {
        "method": "; ".join(c.method for c in correlations if c.method) or None,
        "fiducials": "; ".join(c.fiducials for c in correlations if c.fiducials) or None,
        "transforms": [c.model_dump(include={"method", "transformation_matrix", "unit", "related_images"},
                                    exclude_none=True) for c in correlations],
    }
