"""The ``lamella`` command: a thin layer turning options into Settings and library calls.

Library errors become one-line messages and a non-zero exit, never a traceback. The database
layer is imported where it is used: ``lamella import`` opens the catalog in a background
thread near the end of the conversion.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from annotations.errors import CatalogError
from tiling.errors import TilingError
from viewer.cli_access import COMMANDS, new_dataset, with_new_dataset
from viewer.cli_annotations import annotations
from viewer.cli_base import fail, open_catalog, open_database, open_sessions, with_common
from viewer.cli_entries import add_entry
from viewer.cli_scene import COMMANDS as SCENE_COMMANDS
from viewer.config import Settings, SettingsError, bound_remote_stalls, configure_object_storage

if TYPE_CHECKING:
    from annotations.catalog import Catalog
    from annotations.metadata import DatasetMetadata


def open_catalog_for_import(settings: Settings) -> Catalog:
    """``open_catalog`` without the garbage collector scanning what importing the database layer
    creates: a full collection then took ~45 ms, all other threads waiting, at the end of an import."""
    gc.disable()
    try:
        return open_catalog(settings)
    finally:
        gc.freeze()  # its modules live until exit
        gc.enable()


def read_metadata(path: Path | None) -> DatasetMetadata | None:
    if path is None:
        return None
    from annotations.metadata import load_metadata

    return load_metadata(path)


def parse_voxel_size(_ctx: click.Context, _param: click.Parameter, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter("expected numbers such as 8,4,4 (z,y,x)") from None
    if len(values) not in (2, 3) or min(values) <= 0:
        raise click.BadParameter("expected 2 or 3 positive numbers (z,y,x)")
    return values


def parse_pair(_ctx: click.Context, param: click.Parameter, text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter("expected two numbers LOW,HIGH") from None
    if not low < high:
        raise click.BadParameter("LOW must be below HIGH")
    if param.name == "percentiles" and not (low >= 0 and high <= 100):
        raise click.BadParameter("percentiles lie between 0 and 100")
    return low, high


def default_zstd_level() -> int:
    """``PyramidOptions.zstd_level``, read only when needed: tiling.pyramid brings tensorstore (about a second
    of start-up that commands such as ``scene-map`` do not need)."""
    from tiling.pyramid import PyramidOptions

    return PyramidOptions.zstd_level


UNITS_TO_NM = {"nm": 1.0, "um": 1e3, "µm": 1e3, "angstrom": 0.1, "A": 0.1, "mm": 1e6}


class LamellaGroup(click.Group):
    """Turns library errors into one-line messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            gc.freeze()  # also what commands imported: the collection at exit need not scan it (0.1 s)
            return result
        except (TilingError, CatalogError, SettingsError) as error:
            fail(str(error))
        except OSError as error:
            fail(f"{error.filename or ''}: {error.strerror or error}".lstrip(": "))
        except Exception as error:
            if type(error).__module__.startswith("sqlalchemy."):  # not imported up front: see open_catalog
                cause = str(getattr(error, "orig", None) or error).strip().splitlines()
                fail(f"cannot use the database: {cause[0] if cause else type(error).__name__}")
            raise
        except KeyboardInterrupt:
            click.echo("lamella: interrupted; run the same command with --resume to continue", err=True)
            sys.exit(130)


@click.group(cls=LamellaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lamella", prog_name="lamella", message="%(prog)s %(version)s")  # setup.cfg's
def main() -> None:
    """Lamella: serve, correlate and annotate volume EM in the browser."""
    gc.freeze()  # what is imported lives until exit: the collector need not scan it (exit is 0.2 s faster)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its problems reach the user as our one line
    logging.getLogger("pyvips").setLevel(logging.CRITICAL)  # likewise, and its INFO lines are per region read
    settings = Settings.from_env()
    bound_remote_stalls(settings)
    configure_object_storage(settings)


@main.command()
@with_common
@click.option("--host", default=None, help="Address to listen on [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: 8080; 0 picks a free one].")
@click.option("--processes", type=click.IntRange(1, 64), default=None, help="Server processes on one port.")
@click.option("--jpeg-quality", type=click.IntRange(1, 100), default=None, help="JPEG quality [default: 85].")
@click.option("--accel-redirect", default=None, help="Behind nginx: internal prefix for X-Accel-Redirect.")
@click.option("--demo/--no-demo", default=False, help="Create the demo dataset first if missing.")
@click.option("--access-log", is_flag=True, help="Log every request (off by default: a line per chunk is costly).")
def serve(demo: bool, access_log: bool, **options: Any) -> None:
    """Run the web server."""
    if not access_log:
        logging.getLogger("tornado.access").setLevel(logging.WARNING)  # errors are still logged
    from viewer.server import run

    settings = Settings.from_env(**options)
    engine = open_database(settings)
    if demo:
        from annotations.catalog import Catalog
        from annotations.db import make_sessions
        from annotations.transforms import Transforms
        from viewer.demo_project import ensure_demo_project
        from viewer.registration import ensure_demo

        sessions = make_sessions(engine)
        ensure_demo(Catalog(sessions), settings.images_dir, Transforms(sessions))
        ensure_demo_project(sessions)
    engine.dispose()  # server processes open their own connections
    run(settings)


@main.command("init-db")
@with_common
def init_db(**options: Any) -> None:
    """Create or upgrade the database schema."""
    settings = Settings.from_env(**options)
    open_catalog(settings)
    click.echo(f"database ready: {settings.resolved_database_url}")


@main.command()
@with_common
def demo(**options: Any) -> None:
    """Generate the demo dataset (no network) and register it."""
    from annotations.catalog import Catalog
    from annotations.transforms import Transforms
    from viewer.registration import ensure_demo

    settings = Settings.from_env(**options)
    sessions = open_sessions(settings)
    dataset = ensure_demo(Catalog(sessions), settings.images_dir, Transforms(sessions))
    click.echo(f"dataset {dataset.name!r} (id {dataset.id}) ready with {len(dataset.images)} image(s)")


@main.command()
@with_common
@click.argument("location")
@click.option("--dataset", required=True, help="Dataset name (created if new).")
@click.option("--name", default=None, help="Image name [default: from the path].")
@click.option("--modality", default="EM", show_default=True, help="Modality label, e.g. EM, fluorescence.")
@click.option("--labels", is_flag=True, help="The image is a segmentation.")
@click.option("--metadata", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="REMBI metadata for the dataset (JSON or YAML).")
@with_new_dataset
def add(location: str, dataset: str, name: str | None, modality: str, labels: bool,
        metadata: Path | None, private: bool, release: date | None, curator: str | None, **options: Any) -> None:
    """Register an existing OME-Zarr (a path, an http(s) URL or s3://bucket/path) without copying it."""
    from viewer.registration import add_existing

    settings = Settings.from_env(**options)
    new = new_dataset(settings, private, release, curator) if private or release or curator else None
    record = add_existing(open_catalog(settings), location, dataset, name=name, modality=modality,
                          kind="segmentation" if labels else "image", metadata=read_metadata(metadata), new=new)
    click.echo(f"registered {record.images[-1].name!r} in dataset {record.name!r} (id {record.id})")


@main.command("import")
@with_common
@click.argument("location")
@click.option("--dataset", required=True, help="Dataset name (created if new).")
@click.option("--name", default=None, help="Image name [default: from the file name].")
@click.option("--modality", default="EM", show_default=True, help="Modality label.")
@click.option("--voxel-size", default=None, callback=parse_voxel_size,
              help="z,y,x voxel size in nm (overrides the file).")
@click.option("--unit", type=click.Choice(list(UNITS_TO_NM)), default="nm", show_default=True,
              help="Unit of --voxel-size.")
@click.option("--to-uint8", is_flag=True,
              help="Rescale intensities to uint8 (served as JPEG) instead of keeping the dtype.")
@click.option("--window", default=None, callback=parse_pair, metavar="LOW,HIGH",
              help="With --to-uint8: the intensities mapped to 0 and 255 [default: from --percentiles].")
@click.option("--percentiles", default="0.5,99.5", show_default=True, callback=parse_pair, metavar="P1,P2",
              help="With --to-uint8: percentiles of a data sample that set the window.")
@click.option("--format", "ome_version", type=click.Choice(["0.5", "0.4"]), default="0.5", show_default=True,
              help="OME-Zarr 0.5 (Zarr v3, sharded) or 0.4 (Zarr v2).")
@click.option("--zstd-level", type=click.IntRange(1, 22), default=default_zstd_level, show_default="1",
              help="zstd level of the stored chunks (higher levels rarely shrink EM, and write slower).")
@click.option("--metadata", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="REMBI metadata for the dataset (JSON or YAML).")
@click.option("--labels", "labels_of", default=None, metavar="IMAGE",
              help="Import a segmentation as OME-Zarr labels of IMAGE (same shape).")
@click.option("--downsample", type=click.Choice(["mode", "stride"]), default="mode", show_default=True,
              help="How label pyramids are reduced (never by mean).")
@click.option("--meshes/--no-meshes", default=True, show_default=True,
              help="With --labels: build the segments' multi-resolution surface meshes.")
@click.option("--segments/--no-segments", default=True, show_default=True,
              help="With --labels: compute the segment table (voxels, volume, bounding box, centroid per id).")
@click.option("--segment-names", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="With --labels: names and classes of segments, CSV (id,name[,class]) or JSON.")
@click.option("--resume", is_flag=True, help="Continue an interrupted import, skipping finished shards.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Run on a local Dask cluster of N processes.")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT", help="Run on an existing Dask cluster.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--store", default=None, metavar="s3://BUCKET/PREFIX",
              help="Put the image in an S3-compatible bucket (at PREFIX/DATASET/NAME.ome.zarr) instead of the data "
                   "directory; endpoint and credentials from the AWS variables or LAMELLA_S3_ENDPOINT.")
@with_new_dataset
def import_(location: str, dataset: str, name: str | None, modality: str, voxel_size: tuple[float, ...] | None,
            ome_version: str, zstd_level: int, metadata: Path | None, labels_of: str | None, downsample: str,
            meshes: bool, resume: bool, workers: int | None, scheduler: str | None, quiet: bool, unit: str,
            to_uint8: bool, window: tuple[float, float] | None, percentiles: tuple[float, float], private: bool,
            release: date | None, curator: str | None, segments: bool, segment_names: Path | None,
            store: str | None, **options: Any) -> None:
    """Convert a TIFF stack, folder of slices or MRC file into an OME-Zarr pyramid."""
    from tiling.pyramid import PyramidOptions
    from viewer.registration import build_label_meshes, default_image_name, import_file, import_labels

    gc.freeze()  # these modules too: collections during the conversion need not scan them (~0.07 s)
    settings = Settings.from_env(**options)
    if segment_names is not None and (labels_of is None or not segments):
        fail("--segment-names goes with --labels IMAGE (and not with --no-segments)")
    if labels_of is not None and store is not None:
        fail("--store goes with images; labels go beside their image (or in the data directory for one in a bucket)")
    if labels_of is not None:
        record = import_labels(open_catalog(settings), settings.images_dir, location, dataset, image=labels_of,
                               name=name, downsample=downsample, zstd_level=zstd_level, show_progress=not quiet,
                               segments=segments, segment_names=segment_names)
        labels = record.images[-1].name
        click.echo(f"imported labels {labels!r} of {labels_of!r} into dataset {record.name!r}")
        if meshes:
            summary = build_label_meshes(open_catalog(settings), settings.images_dir, record.name, labels,
                                         workers=workers, scheduler=scheduler, show_progress=not quiet)
            click.echo(_meshes_built(summary))
        return
    meta = read_metadata(metadata)
    # The database layer is imported only when asked for: it would delay the conversion (see open_catalog_for_import).
    new = new_dataset(settings, private, release, curator) if private or release or curator else None
    catalog = functools.partial(open_catalog_for_import, settings)  # opened near the end of the conversion
    image_name = name or default_image_name(location)
    record = import_file(
        catalog, settings.images_dir, location, dataset, name=image_name, modality=modality, metadata=meta,
        voxel_size_nm=tuple(v * UNITS_TO_NM[unit] for v in voxel_size) if voxel_size else None,
        options=PyramidOptions(ome_version=ome_version, name=image_name, zstd_level=zstd_level),  # type: ignore[arg-type]
        show_progress=not quiet, resume=resume, workers=workers, scheduler=scheduler,
        to_uint8=to_uint8, window=window, percentiles=percentiles,
        warn=lambda message: click.echo(f"lamella: warning: {message}", err=True), new=new, store=store,
    )
    click.echo(f"imported {image_name!r} into dataset {record.name!r} (id {record.id})")


@main.command()
@with_common
@click.argument("dataset")
@click.argument("image")
@click.option("--resume", is_flag=True, help="Continue an interrupted build, keeping the blocks it finished.")
@click.option("--workers", type=click.IntRange(1, 256), default=None,
              help="Run on a local Dask cluster of N processes [default: a process per core, no Dask].")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT", help="Run on an existing Dask cluster.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def mesh(dataset: str, image: str, resume: bool, workers: int | None, scheduler: str | None, quiet: bool,
         **options: Any) -> None:
    """Build the multi-resolution surface meshes of a label image (imported or added); rebuilds replace the last."""
    from viewer.registration import build_label_meshes

    settings = Settings.from_env(**options)
    summary = build_label_meshes(open_catalog(settings), settings.images_dir, dataset, image, resume=resume,
                                 workers=workers, scheduler=scheduler, show_progress=not quiet)
    click.echo(_meshes_built(summary))


def _meshes_built(summary: Any) -> str:
    return (f"meshes built: {summary.segments} segments, {summary.fragments} fragments in {summary.lods} levels "
            f"of detail, {summary.bytes / 1e6:.1f} MB in {summary.seconds:.1f} s (build {summary.build})")


@main.command()
@with_common
@click.argument("dataset")
@click.argument("image")
@click.argument("transform_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--reference-points", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The reference image's coordinate list, when TRANSFORM_FILE lists the moving image's points.")
@click.option("--fit", type=click.Choice(["rigid", "similarity", "affine", "tps"]), default=None,
              help="What to fit when the file holds landmarks only [default: tps for an eC-CLEM spline, else affine].")
@click.option("--unit", default=None, help="Length unit of the file's physical numbers [default: the file's, else nm].")
@click.option("--reference", default=None, help="Reference image [default: the dataset's].")
@click.option("--set-reference", is_flag=True, help="Make --reference the dataset's reference image first.")
@click.option("--author", default="", help="Who made the registration (provenance).")
def register(dataset: str, image: str, transform_file: Path, reference_points: Path | None, fit: str | None,
             unit: str | None, reference: str | None, set_reference: bool, author: str, **options: Any) -> None:
    """Register IMAGE into the dataset's reference space from a transform or landmark file.

    Reads matrices (JSON, CSV), MoBIE affines and views, eC-CLEM XML, BigWarp landmarks and
    3DCT-style coordinate lists (with --reference-points).
    """
    from annotations.catalog import Catalog
    from annotations.transforms import Transforms
    from annotations.viewer_sessions import ViewerSessions
    from viewer.correlation import Correlation

    settings = Settings.from_env(**options)
    sessions = open_sessions(settings)
    catalog = Catalog(sessions)
    if set_reference and reference is None:
        fail("--set-reference needs --reference IMAGE")
    try:
        text = transform_file.read_text(encoding="utf-8")
        reference_text = reference_points.read_text(encoding="utf-8") if reference_points else None
    except (OSError, UnicodeDecodeError) as error:
        fail(f"{transform_file}: cannot read the file ({error})")
    correlation = Correlation(catalog, Transforms(sessions))

    def register_file(save: bool) -> Any:
        return correlation.import_file(
            dataset, image, transform_file.name, text, reference_text=reference_text, fit=fit, unit=unit,
            reference=reference, author=author, save=save,
        )  # fmt: skip

    if set_reference:
        register_file(save=False)  # check everything before changing the dataset
        catalog.set_reference(dataset, reference)  # type: ignore[arg-type]
    _, previous = correlation.current(dataset, image)
    registration = register_file(save=True)
    # Viewers open on the dataset follow (each server process polls their state in the database).
    correlation.refresh_sessions(ViewerSessions(sessions), dataset, moved=(image, previous))
    spec = registration.spec
    for row in registration.report:
        if row["residual_nm"] is None:
            click.echo(f"landmark {row['name']}\tresidual not measurable")
        else:
            click.echo(f"landmark {row['name']}\tresidual {row['residual_nm']:.1f} nm ({row['residual_px']:.2f} px)")
    rms = f", RMS {spec.rms_nm:.1f} nm" if spec.rms_nm is not None else ""
    click.echo(f"registered {image!r} ({spec.kind} from {spec.method}{rms})")


@main.command()
@with_common
@click.argument("dataset")
@click.argument("image")
@click.option("--names", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Names and classes of segments: CSV with a header (id,name[,class]) or JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def segments(dataset: str, image: str, names: Path | None, quiet: bool, **options: Any) -> None:
    """Compute (or recompute) the segment table of a label image: voxels, volume, bounding box and centroid per
    segment id, with optional names; served as Neuroglancer segment properties and at .../segments."""
    from viewer.segment_tables import compute_segments

    settings = Settings.from_env(**options)
    record, table = compute_segments(open_catalog(settings), settings.images_dir, dataset, image, names,
                                     show_progress=not quiet)
    click.echo(f"{len(table)} segments of {record.name!r} in dataset {dataset!r}")


@main.command("datasets")
@with_common
def list_datasets(**options: Any) -> None:
    """List the datasets and their images."""
    settings = Settings.from_env(**options)
    for dataset in open_catalog(settings).list_datasets():
        until = f" until {dataset.release_date}" if dataset.release_date else ""
        access = "public" if dataset.public else f"private{until}"
        click.echo(f"{dataset.id}\t{dataset.name}\t{access}\t{dataset.title}")
        for image in dataset.images:
            shape = "x".join(str(s) for s in image.shape)
            click.echo(f"\t{image.name}\t{image.modality}\t{shape} {image.dtype}\t{image.uri}")


@main.command()
@with_common
@click.option("--repair", is_flag=True,
              help="Quarantine unusable transforms (kept as history, never current) and clean viewer states "
                   "and configs of non-finite numbers (the originals are kept in quarantined_documents).")
def check(repair: bool, **options: Any) -> None:
    """Open every registered image and report the ones that cannot be served; report (and with
    --repair, quarantine) stored transforms and viewer states that cannot be used."""
    import asyncio

    from annotations.repair import find_bad_sessions, find_bad_transforms, quarantine_transform, repair_session
    from tiling.omezarr import make_context, open_volume
    from tiling.transforms import transform_problem

    settings = Settings.from_env(**options)
    catalog = open_catalog(settings)
    context = make_context()
    broken = 0
    for dataset in catalog.list_datasets():
        for image in dataset.images:
            try:
                asyncio.run(open_volume(image.uri, context))
                click.echo(f"ok\t{dataset.name}/{image.name}")
            except TilingError as error:
                broken += 1
                click.echo(f"broken\t{dataset.name}/{image.name}\t{error}")
    sessions = catalog.sessions
    transforms = find_bad_transforms(sessions, transform_problem)
    documents = find_bad_sessions(sessions)
    for transform in transforms:
        click.echo(f"bad-transform\t{transform.dataset}/{transform.image}\t#{transform.id}\t{transform.reason}")
    for document in documents:  # tokens are secrets: shown shortened, kept whole in quarantined_documents
        click.echo(f"bad-session\t{document.dataset or '-'}\t{document.token[:6]}…\t{document.part}: {document.reason}")
    if repair and (transforms or documents):
        touched = {transform.dataset for transform in transforms}
        for transform in transforms:
            if quarantine_transform(sessions, transform):
                click.echo(f"quarantined\t{transform.dataset}/{transform.image}\t#{transform.id}")
        for document in documents:
            done = repair_session(sessions, document)
            if done is not None:
                touched.add(document.dataset)
                click.echo(f"repaired-session\t{document.dataset or '-'}\t{document.token[:6]}…\t{document.part}: "
                           f"removed {', '.join(done.removed)}; original kept in quarantined_documents")
        # Open viewers of those datasets: layers re-placed by the transforms now current.
        from annotations.transforms import Transforms
        from annotations.viewer_sessions import ViewerSessions
        from viewer.correlation import Correlation

        correlation = Correlation(catalog, Transforms(sessions))
        for name in sorted(name for name in touched if name is not None):
            tokens = correlation.refresh_sessions(ViewerSessions(sessions), name)
            if tokens:
                click.echo(f"refreshed\t{name}\t{len(tokens)} viewer session(s) re-placed by the current transforms")
    if (transforms or documents) and not repair:
        unusable = f"{len(transforms)} transform(s) and {len(documents)} viewer document(s) cannot be used"
        also = f"; {broken} image(s) cannot be served" if broken else ""
        fail(f"{unusable}{also}; lamella check --repair quarantines them")
    if broken:
        fail(f"{broken} image(s) cannot be served")


for command in [*COMMANDS, *SCENE_COMMANDS, annotations, add_entry]:
    main.add_command(command)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    main()
