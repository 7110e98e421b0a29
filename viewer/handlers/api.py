"""JSON API: datasets, images and viewer sessions."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from annotations.access import Action, Actor, DatasetAccess, may
from annotations.catalog import DatasetChanges, DatasetRecord, ImageRecord, NewDataset
from annotations.catalog_search import CatalogFilter, dataset_size, facets, filtered, imaging_method, organism
from annotations.errors import ImageNotFound
from annotations.metadata import correlation_records, rembi_document
from annotations.names import NAME
from annotations.shared_views import CODE as SHARE_CODE_PATTERN
from tiling.thumbnails import THUMBNAIL_DIR, thumbnail, thumbnail_path
from viewer.apidoc import ANY_JSON, BINARY, RELEASE_DATE_IS_PRIVATE, op
from viewer.bodies import Day, Text
from viewer.handlers.base import BaseHandler
from viewer.state import DEFAULT_CONFIG, dataset_state, image_base_url

SHARE_CODE = f"^{SHARE_CODE_PATTERN.pattern}$"


def origin_of(handler: BaseHandler) -> str:
    return f"{handler.request.protocol}://{handler.request.host}"


class Zyx(BaseModel):
    z: float
    y: float
    x: float


class ImageUrls(BaseModel):
    precomputed: str  # precomputed://… for Neuroglancer
    zarr: str  # zarr2:// or zarr3://… for any Zarr client


class ImageOut(BaseModel):
    name: str
    modality: str
    kind: str  # image | segmentation
    labels_of: str | None
    shape: Zyx
    dtype: str
    channels: int
    voxel_size_nm: Zyx
    levels: list[dict[str, Any]]
    window: list[float]
    ome_version: str
    zarr_format: int
    managed: bool
    urls: ImageUrls
    transform_url: str


class SizeOut(BaseModel):
    voxels: int  # of every image's full-resolution level
    bytes: int  # those voxels uncompressed
    extent_um: list[float] | None  # the reference image's x, y, z extent in micrometres


class DatasetOut(BaseModel):
    id: int
    name: str
    title: str
    description: str
    accession: str | None
    licence: str | None
    organism: str | None  # REMBI biosample
    imaging_method: str | None  # REMBI image acquisition
    size: SizeOut
    thumbnail_url: str | None  # a JPEG of the reference image's middle slice (None without images)
    rembi: dict[str, Any]
    reference_image: str | None
    visibility: str  # public | private
    release_date: date | None  # a private dataset becomes public on this day (UTC)
    public: bool  # readable by anyone today
    created_at: datetime
    url: str
    images: list[ImageOut]
    can: DatasetRights | None = None  # the actor's rights (in the answer about one dataset)


class DatasetRights(BaseModel):
    """What the asking actor may do to the dataset (``annotations.access`` decides)."""

    annotate: bool  # create layers, add and change its own annotations
    curate: bool  # change anyone's annotations, metadata, members


def rights(actor: Actor, access: DatasetAccess | None) -> DatasetRights | None:
    if access is None:
        return None
    return DatasetRights(annotate=may(actor, Action.ANNOTATE, access), curate=may(actor, Action.CURATE, access))


class FacetsOut(BaseModel):
    methods: list[str]  # the imaging methods of the datasets the actor may read
    organisms: list[str]


class DatasetsOut(BaseModel):
    datasets: list[DatasetOut]  # those the filters kept
    total: int  # datasets the actor may read, before the filters
    facets: FacetsOut  # values the filters may take, over all the actor may read


class ImagesOut(BaseModel):
    images: list[ImageOut]


def image_json(origin: str, dataset: DatasetRecord, image: ImageRecord) -> ImageOut:
    base = image_base_url(origin, dataset, image)
    z, y, x = image.shape
    return ImageOut(
        name=image.name, modality=image.modality, kind=image.kind,
        labels_of=next((i.name for i in dataset.images if i.id == image.labels_of), None),
        shape=Zyx(z=z, y=y, x=x), dtype=image.dtype, channels=image.channels,
        voxel_size_nm=Zyx(z=image.voxel_size_nm[0], y=image.voxel_size_nm[1], x=image.voxel_size_nm[2]),
        levels=image.levels, window=image.window, ome_version=image.ome_version, zarr_format=image.zarr_format,
        managed=image.managed,
        urls=ImageUrls(precomputed=f"precomputed://{base}/precomputed", zarr=f"zarr{image.zarr_format}://{base}/zarr/"),
        transform_url=f"{base}/transform",
    )  # fmt: skip


def dataset_json(origin: str, dataset: DatasetRecord, can: DatasetRights | None = None) -> DatasetOut:
    reference = dataset.reference()
    size = dataset_size(dataset)
    return DatasetOut(
        id=dataset.id, name=dataset.name, title=dataset.title, description=dataset.description,
        accession=dataset.accession, licence=dataset.licence, organism=organism(dataset),
        imaging_method=imaging_method(dataset),
        size=SizeOut(voxels=size.voxels, bytes=size.bytes,
                     extent_um=list(size.extent_um) if size.extent_um else None),
        thumbnail_url=f"{origin}/api/datasets/{dataset.id}/thumbnail" if reference else None, rembi=dataset.rembi,
        reference_image=reference.name if reference else None, visibility=dataset.visibility,
        release_date=dataset.release_date, public=dataset.public, created_at=dataset.created_at,
        url=f"{origin}/datasets/{dataset.id}", images=[image_json(origin, dataset, image) for image in dataset.images],
        can=can,
    )  # fmt: skip


class NewDatasetBody(BaseModel):
    """A new, empty dataset; its creator becomes its curator. Private unless said otherwise."""

    model_config = {"json_schema_extra": {"examples": [{"name": "mito-fibsem", "title": "Mitochondria, FIB-SEM"}],
                                          **RELEASE_DATE_IS_PRIVATE}}

    name: str = Field(pattern=NAME.pattern)  # a-z first, then a-z, 0-9, _ and -: it appears in URLs
    title: Text(500) | None = None  # type: ignore[valid-type]
    description: Text(20_000) = ""  # type: ignore[valid-type]
    visibility: Literal["public", "private"] = "private"
    release_date: Day | None = None


class DatasetChangesBody(DatasetChanges):
    """PATCH a dataset: only the fields given change."""

    model_config = {"json_schema_extra": {"examples": [
        {"title": "Mitochondria, FIB-SEM (re-imaged)", "licence": "CC-BY-4.0"},
        {"description": "Segmented by hand.", "accession": None, "reference_image": "em"},
    ]}}


class DatasetsHandler(BaseHandler):
    @op(summary="The datasets the actor may read, searched and filtered (text, imaging method, organism, "
                "accession), with the values the filters may take", query=CatalogFilter, response=DatasetsOut)
    async def get(self) -> None:
        wanted: CatalogFilter = self.query()
        datasets = await self.services.call(self.services.catalog.list_datasets, self.actor)
        origin = origin_of(self)
        kept = filtered(datasets, wanted) if wanted.active() else datasets
        self.write_json(DatasetsOut(datasets=[dataset_json(origin, d) for d in kept], total=len(datasets),
                                    facets=FacetsOut(**facets(datasets))))

    @op(summary="Create an empty dataset (curators, admins); its creator curates it", body=NewDatasetBody,
        response=DatasetOut, status=201)
    async def post(self) -> None:
        body: NewDatasetBody = await self.parse_body()
        spec = NewDataset(title=body.title, description=body.description, visibility=body.visibility,
                          release_date=body.release_date, curator=self.actor.account_id)
        dataset = await self.services.call(self.services.catalog.create_dataset, body.name, spec)
        self.services.identity.forget()
        self.write_json(dataset_json(origin_of(self), dataset), 201)


class DatasetHandler(BaseHandler):
    @op(summary="A dataset: metadata, visibility and images", response=DatasetOut)
    async def get(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        self.write_json(dataset_json(origin_of(self), dataset, rights(self.actor, self.dataset_access)))

    @op(summary="Change a dataset's title, description, licence, accession or reference image",
        body=DatasetChangesBody, response=DatasetOut)
    async def patch(self, dataset_ref: str) -> None:
        changes: DatasetChangesBody = await self.parse_body()
        dataset = await self.services.call(self.services.catalog.update_dataset, dataset_ref, changes)
        self.write_json(dataset_json(origin_of(self), dataset))


class MetadataQuery(BaseModel):
    model_config = {"extra": "forbid"}

    format: Literal["rembi"] = Field("rembi", description="rembi: the REMBI modules as JSON")


class MetadataHandler(BaseHandler):
    @op(summary="A dataset's metadata as REMBI-shaped JSON (study, biosample, specimen, acquisition, image data "
                "with each image's URLs, correlation, analysed data)", query=MetadataQuery, response=ANY_JSON)
    async def get(self, dataset_ref: str) -> None:
        self.query()
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        origin = origin_of(self)
        images = [image_json(origin, dataset, image).model_dump(mode="json") for image in dataset.images]
        reference = dataset.reference()
        current = {} if reference is None else await self.services.call(
            self.services.transforms.current_for, [image.id for image in dataset.images], reference.id)
        document = rembi_document(dataset, images, dataset_json(origin, dataset).url,
                                  f"{origin}/api/datasets/{dataset.id}/annotation-layers",
                                  correlation_records(dataset, current))
        self.set_header("Content-Disposition", f'inline; filename="{dataset.name}-rembi.json"')
        self.write_json(document)


class ThumbnailHandler(BaseHandler):
    @op(summary="The dataset's thumbnail: its reference image's middle slice from a coarse level, as a JPEG (made "
                "once, then kept)", response=BINARY, content=("image/jpeg",), also={304: "not modified"})
    async def get(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        reference = dataset.reference()
        if reference is None:
            raise ImageNotFound(f"dataset {dataset.name!r} has no images")
        record, image = await self.services.images.resolve(dataset_ref, reference.name)
        folder = self.services.settings.data_dir / THUMBNAIL_DIR
        body = await thumbnail(image.volume, record.window, thumbnail_path(folder, record.id, record.uri))
        private = self.dataset_access is not None and not self.dataset_access.public()
        self.set_header("Content-Type", "image/jpeg")
        self.set_header("Cache-Control", f"{'private' if private else 'public'}, max-age=86400")
        if private:
            self.set_header("Vary", "Cookie, Authorization")
        self.finish(body)  # Tornado adds an ETag of the body and answers a matching If-None-Match with 304


class ImagesHandler(BaseHandler):
    @op(summary="A dataset's images", response=ImagesOut)
    async def get(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        origin = origin_of(self)
        self.write_json(ImagesOut(images=[image_json(origin, dataset, i) for i in dataset.images]))


class ImageHandler(BaseHandler):
    @op(summary="One image: shape, dtype, voxel size, levels, window, source URLs", response=ImageOut)
    async def get(self, dataset_ref: str, image_name: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        self.write_json(image_json(origin_of(self), dataset, dataset.image(image_name)))


class SessionCreatedOut(BaseModel):
    token: str  # the session's credential: keep it to yourself
    viewer_url: str
    state: dict[str, Any]


class SessionOut(BaseModel):
    token: str
    dataset_id: int | None
    generation: str
    state: dict[str, Any]


class GenerationOut(BaseModel):
    token: str
    generation: str


class SessionQuery(BaseModel):
    model_config = {"extra": "forbid"}

    view: str | None = Field(None, pattern=SHARE_CODE, description="start from this shared view of the dataset")


class DatasetSessionsHandler(BaseHandler):
    @op(summary="Open a viewer session on the dataset (or from one of its shared views), owned by (and acting "
                "with the rights of) the actor", query=SessionQuery, response=SessionCreatedOut, status=201)
    async def post(self, dataset_ref: str) -> None:
        query: SessionQuery = self.query()
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        transforms = await self.services.call(self.services.correlation.current_transforms, dataset)
        state = dataset_state(origin_of(self), dataset, transforms)
        session = await self.services.call(
            self.services.viewer_annotations.open_session, self.actor, self.dataset_access, origin_of(self), state,
            DEFAULT_CONFIG, query.view,
        )
        self.write_json(SessionCreatedOut(token=session.token, viewer_url=f"/v/{session.token}/", state=session.state),
                        201)


class SessionStateBody(BaseModel):
    """A whole viewer state; with ``generation``, stored only if that is still the current one (else 412)."""

    model_config = {"json_schema_extra": {"examples": [{"state": {"layout": "xy", "layers": []}}]}}

    state: dict[str, Any]
    generation: Text(128) | None = None  # type: ignore[valid-type]


class SessionHandler(BaseHandler):
    @op(summary="The viewer state the server holds for this session", response=SessionOut)
    async def get(self, token: str) -> None:
        session = await self.services.call(self.services.viewer_sessions.get, token)
        self.write_json(SessionOut(token=token, dataset_id=session.dataset_id, generation=session.generation,
                                   state=session.state))

    @op(summary="Replace the session's state; every open viewer follows", body=SessionStateBody,
        response=GenerationOut)
    async def put(self, token: str) -> None:
        body: SessionStateBody = await self.parse_body()
        new_generation = await self.services.call(
            self.services.viewer_annotations.receive, token, self.owner, self.dataset_access, body.state,
            expected=body.generation,
        )
        self.services.session_watch.changed(token)
        self.write_json(GenerationOut(token=token, generation=new_generation))
