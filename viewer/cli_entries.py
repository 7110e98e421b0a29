"""``lamella add-entry``: an EMPIAR entry or a BioImage Archive study registered as one dataset (viewer.entries)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import click

from viewer.cli_access import new_dataset, with_new_dataset
from viewer.cli_base import fail, open_catalog, with_common
from viewer.config import Settings

JSON_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


@click.command("add-entry")
@with_common
@click.argument("accession")
@click.option("--entry-json", type=JSON_FILE, default=None,
              help="EMPIAR: the entry as EMPIAR's API answers it [default: fetched from EMPIAR].")
@click.option("--files", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="EMPIAR: the folder holding the entry's image sets, laid out as their 'directory' fields.")
@click.option("--study-json", type=JSON_FILE, default=None, help="BioImage Archive: the study record.")
@click.option("--images-json", type=JSON_FILE, default=None,
              help="BioImage Archive: the study's image records with their image representations.")
@click.option("--dataset", default=None, help="Dataset name [default: the accession in lower case].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@with_new_dataset
def add_entry(accession: str, entry_json: Path | None, files: Path | None, study_json: Path | None,
              images_json: Path | None, dataset: str | None, quiet: bool, private: bool, release: date | None,
              curator: str | None, **options: Any) -> None:
    """Register an archive entry (EMPIAR-NNNNN or S-BIADNNNN) as a dataset: metadata, images, transforms.

    EMPIAR image sets found under --files in a format Lamella imports are imported; the others are listed in
    the dataset's metadata with the reason. BioImage Archive images are registered at their OME-Zarr address.
    Nothing is registered unless the whole entry is.
    """
    from viewer.entries import add_bia_entry, add_empiar_entry, fetch_empiar, read_json

    settings = Settings.from_env(**options)
    empiar = re.fullmatch(r"EMPIAR-\d{5,}", accession, re.ASCII) is not None
    if empiar and (study_json or images_json):
        fail("--study-json and --images-json are for BioImage Archive studies (S-BIAD...)")
    if not empiar and (entry_json or files):
        fail("--entry-json and --files are for EMPIAR entries (EMPIAR-NNNNN)")
    if not empiar and (study_json is None or images_json is None):
        fail(f"{accession} is not an EMPIAR accession: give a BioImage Archive study with --study-json and "
             "--images-json")
    new = new_dataset(settings, private, release, curator) if private or release or curator else None
    if empiar:
        document = read_json(entry_json, "EMPIAR entry") if entry_json else fetch_empiar(accession)
        report = add_empiar_entry(open_catalog(settings), settings.images_dir, document, accession, files=files,
                                  dataset=dataset, new=new, show_progress=not quiet)
    else:
        from annotations.archive_entries import parse_bia

        assert study_json is not None and images_json is not None
        entry = parse_bia(read_json(study_json, "study record"), read_json(images_json, "image records"), accession)
        report = add_bia_entry(open_catalog(settings), entry, dataset=dataset, new=new)
    for item in report.items:
        what = item.get("name") or item.get("label") or item.get("uuid")
        if item.get("imported"):
            click.echo(f"imported\t{what}\t{', '.join(item['images'])}")
        else:
            click.echo(f"not imported\t{what}\t{item['reason']}")
    record = report.dataset
    click.echo(f"registered {accession} as dataset {record.name!r} (id {record.id}) with {len(record.images)} "
               f"image(s) and {report.transforms} transform(s)")
