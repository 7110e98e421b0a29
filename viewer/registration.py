"""Adding images to the catalog: register an existing OME-Zarr, import a file, make the demo.

Each writes (if it writes) beside the destination first and registers only complete images,
in one transaction, so a failure leaves neither a half-written image nor a catalog entry.

The database layer (SQLAlchemy, Alembic, pydantic: ~0.3 s to import) and the readers used to
describe a written image are imported where they are used, so that ``import_file`` can convert
before its catalog is opened.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from annotations.errors import NameTaken
from annotations.names import check_name
from tiling.derived import derived_dir
from tiling.errors import ImportProblem
from tiling.object_storage import remove_upload
from tiling.pyramid import PyramidOptions, list_label, write_pyramid
from tiling.sources import ArraySource, RescaledSource, Source, open_source, percentile_window
from tiling.stores import is_object_storage

if TYPE_CHECKING:
    from annotations.catalog import Catalog, DatasetRecord, ImageSpec, NewDataset
    from annotations.metadata import DatasetMetadata
    from annotations.transforms import Transforms
    from tiling.meshes import MeshSummary
    from tiling.stores import S3Store

UPLOADS = ".uploads"  # in the images folder: images built here for a bucket, until uploaded
DEMO_DATASET = "demo"
DEMO_LABELS = "organelles"
# A catalog given as a function that opens it is opened once this much of a conversion is stored,
# or after this many seconds, whichever comes first (see _NameCheck).
CATALOG_AT_FRACTION = 0.9
CATALOG_AT_LATEST_S = 10.0


async def describe(uri: str, *, name: str, modality: str, kind: str, managed: bool) -> ImageSpec:
    """Open the OME-Zarr at ``uri`` and describe it for the catalog (checks it can be served)."""
    from annotations.catalog import ImageSpec
    from tiling.omezarr import estimate_window, make_context, open_volume
    from tiling.precomputed import served_dtype

    volume = await open_volume(uri, make_context(64 << 20))
    served_dtype(volume.dtype)
    window = await estimate_window(volume) if kind == "image" else (0.0, 0.0)
    return ImageSpec(
        name=name,
        modality=modality,
        kind=kind,
        uri=volume.store.uri,
        managed=managed,
        ome_version=volume.multiscale.version,
        zarr_format=volume.multiscale.zarr_format,
        dtype=volume.dtype.name,
        shape=list(volume.geometry[0].shape),
        channels=volume.num_channels,
        voxel_size_nm=list(volume.geometry[0].voxel_size_nm),
        levels=[
            {"path": g.path, "shape": list(g.shape), "voxel_size_nm": list(g.voxel_size_nm), "chunk": list(g.chunk)}
            for g in volume.geometry
        ],
        window=list(window),
    )


def default_image_name(location: str) -> str:
    stem = Path(location.rstrip("/")).name
    suffixes = (".ome.zarr", ".zarr", ".n5", ".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpg", ".mrcs",
                ".mrc", ".map", ".rec", ".st", ".ali")
    for suffix in suffixes:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    name = re.sub(r"[^a-z0-9_\-]+", "-", stem.lower()).strip("-_") or "image"
    return name if name[0].isalpha() else f"image-{name}"[:64]


def add_existing(
    catalog: Catalog,
    uri: str,
    dataset: str,
    *,
    name: str | None = None,
    modality: str = "EM",
    kind: str = "image",
    metadata: DatasetMetadata | None = None,
    new: NewDataset | None = None,
) -> DatasetRecord:
    """Register an OME-Zarr (path or URL) without copying it; ``new`` says how a new dataset starts."""
    name = _valid_names(dataset, name, uri)
    spec = describe_image(uri, name=name, modality=modality, kind=kind, managed=False)
    return catalog.register(dataset, spec, metadata, new)


def describe_image(uri: str, **options: Any) -> ImageSpec:
    """``tiling.omezarr.describe`` from synchronous code (the CLI's and the import threads')."""
    import asyncio

    return asyncio.run(describe(uri, **options))


def import_file(
    catalog: Catalog | Callable[[], Catalog],
    images_dir: Path,
    location: str,
    dataset: str,
    *,
    name: str | None = None,
    modality: str = "EM",
    metadata: DatasetMetadata | None = None,
    voxel_size_nm: tuple[float, ...] | None = None,
    options: PyramidOptions | None = None,
    show_progress: bool = True,
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    to_uint8: bool = False,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    warn: Callable[[str], None] | None = None,
    new: NewDataset | None = None,
    store: str | None = None,
) -> DatasetRecord:
    """Convert an image file, slice folder or array store into an OME-Zarr pyramid and register it.

    ``store`` (``s3://bucket/prefix``) puts the image in a bucket, at ``<prefix>/<dataset>/<name>.ome.zarr``,
    instead of the data directory: it is built on disk first, then uploaded (``tiling.object_storage``),
    and registered once the upload is complete.

    ``workers`` starts a local Dask cluster of that many processes; ``scheduler`` uses an
    existing one (``tcp://host:port``). ``resume`` continues an interrupted conversion.
    ``to_uint8`` maps ``window`` (default: the ``percentiles`` of a sample) onto 0..255 so
    16-bit or float EM can be served as JPEG; otherwise the dtype is kept.

    ``catalog`` may be a function that opens it: it is then opened in a thread near the end of
    the conversion, which stops at its next block if the catalog says the name is taken (an
    image already imported under that name is found at once, by its folder).
    """
    name = _valid_names(dataset, name, location)
    name_is_free = _NameCheck(catalog, dataset, name)
    name_is_free()
    source = open_source(location)
    target = None
    try:
        target = _bucket_target(store, dataset, name, resume, name_is_free) if store is not None else None
        # An image for a bucket is built in the data directory's uploads folder, then uploaded.
        destination = images_dir / (UPLOADS if target is not None else "") / dataset / f"{name}.ome.zarr"
        if target is not None and destination.exists() and not resume:
            shutil.rmtree(destination)  # built for an upload that was interrupted, and not resumed
        if destination.exists() and target is None:
            name_is_free(wait=True)  # a registered image: say so rather than that its folder exists
        if not (target is not None and destination.exists()):  # else built already: an upload to resume
            if to_uint8:
                window = window or percentile_window(source, *percentiles)
                source = RescaledSource(source, *window)
            for message in source.warnings:
                if warn is not None:
                    warn(f"{location}: {message}")
            voxel = voxel_size_nm or source.voxel_size_nm or (1.0,) * len(source.shape)
            if len(voxel) != len(source.shape):
                voxel = tuple(voxel[-len(source.shape):])
            write_image_pyramid(source, destination, tuple(voxel), options or PyramidOptions(name=name),
                                f"import {name}", show_progress, resume=resume, workers=workers,
                                scheduler=scheduler,
                                opener=functools.partial(open_for_import, location, window if to_uint8 else None),
                                on_block=name_is_free)
    except BaseException as error:
        if target is not None and not isinstance(error, KeyboardInterrupt):
            remove_upload(target)  # what a resumed upload had written, and the marker
        raise
    finally:
        source.close()
    if target is not None:
        return _upload_and_register(name_is_free, destination, target, dataset, name, modality, metadata, new,
                                    resume=resume, show_progress=show_progress)
    try:
        opened = name_is_free.catalog()
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise
    return _register_written(opened, destination, dataset, name, modality, metadata, new)


def _bucket_target(store: str, dataset: str, name: str, resume: bool, name_is_free: _NameCheck) -> S3Store:
    """Where in the bucket the image goes, once the bucket answers, lets us write and has no image there."""
    from tiling.object_storage import prepare_upload
    from tiling.stores import S3Config, S3Store, is_object_storage

    if not is_object_storage(store):
        raise ImportProblem(f"--store takes an s3://bucket/prefix address, not {store[:80]!r}")
    target = S3Store(f"{store.rstrip('/')}/{dataset}/{name}.ome.zarr", S3Config.from_env())
    name_is_free(wait=True)  # before anything is written to the bucket
    prepare_upload(target, resume=resume)
    return target


def _upload_and_register(
    name_is_free: _NameCheck, built: Path, target: S3Store, dataset: str, name: str, modality: str,
    metadata: DatasetMetadata | None, new: NewDataset | None, *, resume: bool, show_progress: bool,
) -> DatasetRecord:
    """Upload the image built at ``built`` to ``target``, register it there and remove ``built``.

    A failure removes what was uploaded and the built image (nothing registered); Ctrl-C keeps both for
    ``--resume``."""
    from tiling.object_storage import upload_image

    size = sum(path.stat().st_size for path in built.rglob("*") if path.is_file())
    try:
        with progress_bar(size, f"upload {name}", show_progress, unit="B") as bar:
            upload_image(built, target, resume=resume, progress=None if bar is None else bar.update)
        spec = describe_image(target.uri, name=name, modality=modality, kind="image", managed=True)
        record = name_is_free.catalog().register(dataset, spec, metadata, new)
    except KeyboardInterrupt:
        raise
    except BaseException:
        remove_upload(target)
        _remove_built(built)
        raise
    _remove_built(built)
    return record


def _remove_built(built: Path) -> None:
    """Remove an image built for a bucket, and its dataset's uploads folder once empty."""
    shutil.rmtree(built, ignore_errors=True)
    with contextlib.suppress(OSError):
        built.parent.rmdir()


def import_labels(
    catalog: Catalog,
    images_dir: Path,
    location: str,
    dataset: str,
    *,
    image: str,
    name: str | None = None,
    downsample: str = "mode",
    zstd_level: int = PyramidOptions.zstd_level,
    show_progress: bool = True,
    source: Source | None = None,
    segments: bool = True,
    segment_names: Path | None = None,
) -> DatasetRecord:
    """Import a segmentation as OME-Zarr labels of ``image`` (same grid) and register it.

    Labels of an imported image are written inside it (``labels/<name>``); labels of a
    registered, not copied, image go beside it in the data directory. ``source``, when given, is
    read instead of opening ``location`` (which then only names it). With ``segments``, the
    segment table (named from ``segment_names``, viewer.segment_tables) is stored inside the
    labels before they are registered: a names file that does not fit leaves nothing behind.
    """
    from tiling.segment_names import read_names

    names = read_names(segment_names) if segments and segment_names is not None else None
    parent = catalog.get_image(dataset, image)
    name = _free_name(catalog, dataset, name, location)
    source = open_source(location) if source is None else source
    try:
        if source.dtype.kind not in "ui":
            raise ImportProblem(f"{location}: labels must be integers, not {source.dtype}")
        shape = list(source.shape) if len(source.shape) == 3 else [1, *source.shape]
        if shape != parent.shape:
            raise ImportProblem(f"{location}: labels are {shape} (z, y, x) but image {image!r} is {parent.shape}")
        declared = source.voxel_size_nm
        expected = parent.voxel_size_nm[-len(source.shape):]
        if declared is not None and any(abs(d - e) > 0.01 * e for d, e in zip(declared, expected, strict=True)):
            raise ImportProblem(f"{location}: labels declare voxels of {[round(v, 3) for v in declared]} nm but "
                                f"image {image!r} has {[round(v, 3) for v in expected]} nm")
        inside = parent.managed and not is_object_storage(parent.uri)  # labels of an image in a bucket: beside
        destination = Path(parent.uri) / "labels" / name if inside else images_dir / dataset / f"{name}.labels.ome.zarr"
        options = PyramidOptions(ome_version=parent.ome_version, labels=True, label_downsample=downsample,  # type: ignore[arg-type]
                                 name=name, zstd_level=zstd_level)
        voxel = tuple(parent.voxel_size_nm[-len(source.shape):])
        write_image_pyramid(source, destination, voxel, options, f"labels {name}", show_progress)
    finally:
        source.close()
    try:
        if segments:
            from viewer.segment_tables import build_segments

            # Labels Lamella wrote keep their derived data inside their store (tiling.derived).
            build_segments(str(destination), destination, names, str(segment_names), show_progress,
                           f"segments of {name}")
        if inside:
            list_label(Path(parent.uri), name, parent.ome_version)  # type: ignore[arg-type]
        spec = describe_image(str(destination), name=name, modality="segmentation", kind="segmentation", managed=True)
        return catalog.register(dataset, spec.model_copy(update={"labels_of": parent.id}))
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def build_label_meshes(
    catalog: Catalog,
    images_dir: Path,
    dataset: str,
    image: str,
    *,
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    show_progress: bool = True,
) -> MeshSummary:
    """Build (or rebuild) the multi-resolution meshes of a label image, here or on a Dask cluster.

    The meshes go where ``tiling.derived`` keeps a label image's derived data; the previous build stays
    served until the new one is complete.
    """
    from tiling.meshes import MESH_DIR, build_meshes

    record = catalog.get_image(dataset, image)
    if record.kind != "segmentation":
        raise ImportProblem(f"image {image!r} of {dataset!r} is not a segmentation: only label images have meshes")
    folder = derived_dir(record.uri, record.managed, images_dir, record.id) / MESH_DIR
    folder.parent.mkdir(parents=True, exist_ok=True)
    with dask_client(workers, scheduler) as client:
        return build_meshes(record.uri, folder, client=client, threads=workers, resume=resume,
                            show_progress=show_progress)


def _free_name(catalog: Catalog, dataset: str, name: str | None, location: str) -> str:
    """A valid image name not yet used in the dataset (from the file name when not given)."""
    name = _valid_names(dataset, name, location)
    _NameCheck(catalog, dataset, name)(wait=True)
    return name


def _valid_names(dataset: str, name: str | None, location: str) -> str:
    """The image name (from the file name when not given), once it and the dataset name are valid."""
    name = check_name(name or default_image_name(location), "image")
    check_name(dataset, "dataset")
    return name


class _NameCheck:
    """Raises NameTaken if the image name is used in the dataset, once the catalog can tell.

    ``catalog`` may be a function that opens it. It is then opened in a thread only once the
    conversion is ``CATALOG_AT_FRACTION`` stored or ``CATALOG_AT_LATEST_S`` have passed: importing
    the database layer and opening take ~0.35 s of CPU, which competes for every core with a
    short conversion (opened at the start, it made the 1 GiB benchmark import ~0.1 s, 4%, slower
    on 2 cores), while a taken name costs a long conversion at most those seconds. Until the
    catalog is open, a call returns at once unless ``wait`` is given.
    """

    def __init__(self, catalog: Catalog | Callable[[], Catalog], dataset: str, name: str) -> None:
        self._catalog: Catalog | None = None if callable(catalog) else catalog
        self._open = catalog if callable(catalog) else None
        self._opening: Future[Catalog] | None = None
        self._since = time.monotonic()
        self.dataset, self.name = dataset, name
        self._checked = False

    def __call__(self, *, wait: bool = False, stored: float = 0.0) -> None:
        """Check the name; ``stored`` is the fraction of the conversion stored so far."""
        if self._checked:
            return
        if self._catalog is None:
            if self._opening is None and self._open is not None and (
                    wait or stored >= CATALOG_AT_FRACTION or time.monotonic() - self._since >= CATALOG_AT_LATEST_S):
                self._opening = _in_thread(self._open)
            if self._opening is None or not (wait or self._opening.done()):
                return
            self._catalog = self._opening.result()
        if self._catalog.has_image(self.dataset, self.name):
            raise NameTaken(f"dataset {self.dataset!r} already has an image {self.name!r}")
        self._checked = True

    def catalog(self) -> Catalog:
        self(wait=True)
        assert self._catalog is not None
        return self._catalog


def _in_thread(open_catalog: Callable[[], Catalog]) -> Future[Catalog]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="lamella-catalog")
    try:
        return pool.submit(open_catalog)
    finally:
        pool.shutdown(wait=False)


def write_image_pyramid(
    source: Source,
    destination: Path,
    voxel: tuple[float, ...],
    options: PyramidOptions,
    description: str,
    show_progress: bool,
    *,
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    opener: Callable[[], Source] | None = None,
    on_block: Callable[..., None] | None = None,
) -> None:
    """Write the pyramid with a progress bar (voxels, rate, time left), here or on a Dask cluster.

    ``on_block`` is called after each block with ``stored=`` the fraction of voxels stored; what it
    raises stops the conversion.
    """
    total = int(np.prod(source.shape, dtype=np.int64))
    stored = 0
    with progress_bar(total, description, show_progress) as bar, dask_client(workers, scheduler) as client:
        def progress(voxels: int) -> None:
            nonlocal stored
            stored += voxels
            if bar is not None:
                bar.update(voxels)
            if on_block is not None:
                on_block(stored=stored / total)

        write_pyramid(source, destination, voxel_size=voxel, options=options, progress=progress,
                      resume=resume, client=client, source_opener=opener)


@contextlib.contextmanager
def progress_bar(total: int, description: str, show: bool, unit: str = "vox") -> Iterator[Any]:
    """A tqdm bar of voxels (rate, time left), or None when not shown (tqdm is then not imported)."""
    if not show:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit=unit, unit_scale=True, desc=description) as bar:
        yield bar


def open_for_import(location: str, window: tuple[float, float] | None) -> Source:
    """The import source as every worker sees it (picklable through functools.partial)."""
    source = open_source(location)
    return RescaledSource(source, *window) if window is not None else source


@contextlib.contextmanager
def dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A Dask distributed client for the conversion, or None to run in this process."""
    if scheduler is None and not workers:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler, timeout="20s") as client:
            yield client
        return
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _register_written(
    catalog: Catalog, destination: Path, dataset: str, name: str, modality: str, metadata: DatasetMetadata | None,
    new: NewDataset | None,
) -> DatasetRecord:
    try:
        spec = describe_image(str(destination), name=name, modality=modality, kind="image", managed=True)
        return catalog.register(dataset, spec, metadata, new)
    except BaseException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def ensure_demo(catalog: Catalog, images_dir: Path, transforms: Transforms) -> DatasetRecord:
    """Generate and register the demo dataset unless it is already there.

    Two modalities: the EM volume, and a fluorescence-like mitochondrial stain on its own grid
    placed by a known affine, stored as its transform.
    """
    from tiling.demo import (  # scipy: only when making the demo
        DEMO_SHAPE,
        DEMO_VOXEL_NM,
        FLUORESCENCE_VOXEL_NM,
        MITOCHONDRION_IDS,
        fluorescence_affine,
        make_demo_fluorescence,
        make_demo_volume,
    )

    has_em = catalog.has_image(DEMO_DATASET, "em")
    has_fluorescence = catalog.has_image(DEMO_DATASET, "fluorescence")
    has_labels = catalog.has_image(DEMO_DATASET, DEMO_LABELS)
    if has_em and has_fluorescence and has_labels:
        return catalog.get_dataset(DEMO_DATASET)
    mitochondria = np.zeros(DEMO_SHAPE, dtype=bool)
    labels = np.zeros(DEMO_SHAPE, dtype=np.uint32)
    volume = make_demo_volume(DEMO_SHAPE, mitochondria=mitochondria, labels=labels)
    if not has_em:
        destination = images_dir / DEMO_DATASET / "em.ome.zarr"
        shutil.rmtree(destination, ignore_errors=True)  # left by an interrupted earlier run
        write_pyramid(ArraySource(volume), destination, voxel_size=DEMO_VOXEL_NM, options=PyramidOptions(name="em"))
        _register_written(catalog, destination, DEMO_DATASET, "em", "EM", demo_metadata(), None)
    del volume
    if not has_labels:  # the cells and mitochondria the volume was drawn from, with their surfaces
        em = catalog.get_image(DEMO_DATASET, "em")
        shutil.rmtree(Path(em.uri) / "labels" / DEMO_LABELS, ignore_errors=True)
        with tempfile.TemporaryDirectory() as folder:
            names = Path(folder) / "names.csv"
            ids = np.unique(labels[labels > 0]).tolist()
            names.write_text("id,name,class\n" + "".join(
                f"{i},{kind} {i if kind == 'cell' else i - MITOCHONDRION_IDS + 1},{kind}\n"
                for i in ids for kind in ["mitochondrion" if i >= MITOCHONDRION_IDS else "cell"]))
            import_labels(catalog, images_dir, DEMO_LABELS, DEMO_DATASET, image="em", name=DEMO_LABELS,
                          show_progress=False, source=ArraySource(labels), segment_names=names)
        build_label_meshes(catalog, images_dir, DEMO_DATASET, DEMO_LABELS, show_progress=False)
    del labels
    if has_fluorescence:
        return catalog.get_dataset(DEMO_DATASET)
    destination = images_dir / DEMO_DATASET / "fluorescence.ome.zarr"
    shutil.rmtree(destination, ignore_errors=True)
    fluorescence = make_demo_fluorescence(mitochondria)
    write_pyramid(
        ArraySource(fluorescence), destination, voxel_size=FLUORESCENCE_VOXEL_NM,
        options=PyramidOptions(name="fluorescence"),
    )  # fmt: skip
    dataset = _register_written(catalog, destination, DEMO_DATASET, "fluorescence", "fluorescence", None, None)
    from viewer.correlation import Correlation

    Correlation(catalog, transforms).set_matrix(
        DEMO_DATASET, "fluorescence", fluorescence_affine(), unit="nm", method="demo", author="lamella demo",
        note="the known affine the demo's fluorescence channel was generated with",
    )  # fmt: skip
    return catalog.get_dataset(dataset.id)


def demo_metadata() -> DatasetMetadata:
    from annotations.metadata import parse_metadata

    return parse_metadata(
        {
            "title": "Demo: synthetic FIB-SEM-like volume with a correlative fluorescence channel",
            "description": "A deterministic volume generated offline by `lamella demo`: cells with "
            "membranes, mitochondria with cristae and vesicles, 512 x 512 x 256 voxels at 8 nm; the "
            "segmentation it was drawn from (cells 1, 2, ...; mitochondria 1001, 1002, ...) with surface "
            "meshes; and a fluorescence-like mitochondrial stain at 24 x 24 x 40 nm, rotated, scaled and "
            "shifted by a known affine.",
            "licence": "CC0-1.0",
            "study": {"title": "Lamella demo", "keywords": ["vEM", "FIB-SEM", "CLEM", "synthetic"]},
            "biosample": {"organism": "none (synthetic)"},
            "image_acquisition": {"imaging_method": "FIB-SEM and fluorescence (simulated)",
                                  "voxel_size_nm": [8, 8, 8]},
            "image_data": {"file_format": "OME-Zarr 0.5"},
        }
    )
