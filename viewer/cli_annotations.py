"""``lamella annotations export`` and ``import``: a layer to and from CSV, Neuroglancer annotation JSON and static
precomputed folders, on the server's database (as ``lamella member add`` and the others run: by the operator).

An export reads as the operator (every layer); an import writes as the account named by ``--as``, with that
account's rights on the dataset, and makes it the author of what it adds.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from viewer.cli_base import fail, open_sessions, with_common
from viewer.config import Settings

EXPORT_CHOICES = ["csv", "ng-json", "precomputed-zip", "precomputed-tar", "mifa"]
IMPORT_CHOICES = ["csv", "ng-json"]
EXTENSIONS = {".csv": "csv", ".json": "ng-json"}


def _moment(_ctx: click.Context, param: click.Parameter, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text[:40]!r} is not an ISO 8601 time, e.g. 2026-01-01T00:00:00Z") from None
    if moment.tzinfo is None:
        raise click.BadParameter("give the time zone, e.g. 2026-01-01T00:00:00Z")
    return moment


def _layer(store: Any, actor: Any, access: Any, ref: str) -> Any:
    """A layer of the dataset by name or id."""
    from annotations.errors import LayerNotFound

    for layer in store.layers(actor, access):
        if layer.name == ref or str(layer.id) == ref:
            return layer
    raise LayerNotFound(f"no annotation layer {ref!r} in dataset {access.name!r}")


@click.group()
def annotations() -> None:
    """Annotation layers: export them, import annotations into them."""


@annotations.command("export")
@with_common
@click.argument("dataset")
@click.argument("layer")
@click.option("--format", "fmt", type=click.Choice(EXPORT_CHOICES), required=True,
              help="csv, ng-json (Neuroglancer annotation JSON), static precomputed annotation folders in a zip "
                   "or tar archive (tar for very large layers; with mifa.json beside them), or mifa (the layer's "
                   "MIFA annotation metadata).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write ('-': standard output) [default: DATASET-LAYER.csv|json|zip|tar|mifa.json here].")
@click.option("--author", default=None, help="Only annotations whose current version this account wrote.")
@click.option("--label", default=None, help="Only annotations with this label.")
@click.option("--since", default=None, callback=_moment, metavar="TIME", help="Only those updated at or after TIME "
              "(ISO 8601 with a zone).")
@click.option("--until", default=None, callback=_moment, metavar="TIME", help="Only those updated before TIME.")
@click.option("--as-of", "as_of", default=None, callback=_moment, metavar="TIME", help="The layer as it was at TIME.")
def export(dataset: str, layer: str, fmt: str, output: Path | None, author: str | None, label: str | None,
           since: datetime | None, until: datetime | None, as_of: datetime | None, **options: Any) -> None:
    """Export annotation LAYER (name or id) of DATASET."""
    from annotations.access import Access, Actor
    from annotations.annotation_export import export_layer
    from annotations.annotation_store import AnnotationStore
    from annotations.views import View

    settings = Settings.from_env(**options)
    sessions = open_sessions(settings)
    operator = Actor(name="operator", role="admin")
    access = Access(sessions).dataset_access(operator, dataset)
    record = _layer(AnnotationStore(sessions), operator, access, layer)
    view = View(as_of=as_of, author=author, label=label, since=since, until=until)
    with export_layer(sessions, operator, access, record.id, fmt, view, settings.annotation_cell_limit) as chunks:
        if output is not None and str(output) == "-":
            for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        target = output or Path(chunks.filename)
        # A file is written beside its name and renamed when whole; anything else (a pipe, /dev/null) directly.
        regular = not target.exists() or target.is_file()
        partial = target.with_name(target.name + ".part") if regular else target
        size = 0
        try:
            with partial.open("wb") as file:
                for chunk in chunks:
                    file.write(chunk)
                    size += len(chunk)
            if regular:
                os.replace(partial, target)
        finally:
            if regular:
                partial.unlink(missing_ok=True)
    click.echo(f"exported layer {record.name!r} of {access.name!r} as {fmt} to {target} ({size} bytes)", err=True)


@annotations.command("import")
@with_common
@click.argument("dataset")
@click.argument("layer")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(IMPORT_CHOICES), default=None,
              help="csv or ng-json [default: from the file's extension, .csv or .json].")
@click.option("--as", "account", required=True, metavar="ACCOUNT",
              help="The account that imports: it needs to annotate DATASET, and becomes the author.")
def import_(dataset: str, layer: str, file: Path, fmt: str | None, account: str, **options: Any) -> None:
    """Import FILE's annotations into LAYER (name or id) of DATASET: all of them, or none if any is wrong."""
    from annotations.access import Access
    from annotations.accounts import Accounts
    from annotations.annotation_import import import_annotations
    from annotations.annotation_store import AnnotationStore

    fmt = fmt or EXTENSIONS.get(file.suffix.lower())
    if fmt is None:
        fail(f"{file}: say --format csv or --format ng-json (the extension does not tell)")
    settings = Settings.from_env(**options)
    sessions = open_sessions(settings)
    record = Accounts(sessions).get(account)
    if record.disabled:
        fail(f"account {account!r} is disabled")
    actor = record.actor("token")
    access = Access(sessions).dataset_access(actor, dataset)
    store = AnnotationStore(sessions)
    target = _layer(store, actor, access, layer)
    created = import_annotations(store, actor, access, target.id, file.read_bytes(), fmt)
    click.echo(f"imported {created.count} annotations into layer {target.name!r} of {access.name!r} as {account!r}")
