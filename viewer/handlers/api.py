"""JSON API: datasets, images and viewer sessions."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, Field

from annotations.catalog import DatasetChanges, DatasetRecord, ImageRecord, NewDataset
from viewer.bodies import Text
from viewer.handlers.base import BaseHandler
from viewer.state import DEFAULT_CONFIG, dataset_state, image_base_url


def origin_of(handler: BaseHandler) -> str:
    return f"{handler.request.protocol}://{handler.request.host}"


def image_json(origin: str, dataset: DatasetRecord, image: ImageRecord) -> dict[str, Any]:
    base = image_base_url(origin, dataset, image)
    return {
        "name": image.name,
        "modality": image.modality,
        "kind": image.kind,
        "labels_of": next((i.name for i in dataset.images if i.id == image.labels_of), None),
        "shape": {"z": image.shape[0], "y": image.shape[1], "x": image.shape[2]},
        "dtype": image.dtype,
        "channels": image.channels,
        "voxel_size_nm": {"z": image.voxel_size_nm[0], "y": image.voxel_size_nm[1], "x": image.voxel_size_nm[2]},
        "levels": image.levels,
        "window": image.window,
        "ome_version": image.ome_version,
        "zarr_format": image.zarr_format,
        "managed": image.managed,
        "urls": {
            "precomputed": f"precomputed://{base}/precomputed",
            "zarr": f"zarr{image.zarr_format}://{base}/zarr/",
        },
        "transform_url": f"{base}/transform",
    }


def dataset_json(origin: str, dataset: DatasetRecord) -> dict[str, Any]:
    return {
        "id": dataset.id,
        "name": dataset.name,
        "title": dataset.title,
        "description": dataset.description,
        "accession": dataset.accession,
        "licence": dataset.licence,
        "rembi": dataset.rembi,
        "reference_image": reference.name if (reference := dataset.reference()) else None,
        "visibility": dataset.visibility,
        "release_date": dataset.release_date.isoformat() if dataset.release_date else None,
        "public": dataset.public,
        "created_at": dataset.created_at.isoformat(),
        "url": f"{origin}/datasets/{dataset.id}",
        "images": [image_json(origin, dataset, image) for image in dataset.images],
    }


class NewDatasetBody(BaseModel):
    name: Text(64, min_length=1)  # type: ignore[valid-type]
    title: Text(500) | None = None  # type: ignore[valid-type]
    description: Text(20_000) = ""  # type: ignore[valid-type]
    visibility: str = Field("private", max_length=16)
    release_date: date | None = None


class DatasetChangesBody(DatasetChanges):
    """PATCH a dataset: only the fields given change."""


class DatasetsHandler(BaseHandler):
    """GET the datasets the actor may read; POST (curators, admins) a new empty dataset they curate."""

    async def get(self) -> None:
        datasets = await self.services.call(self.services.catalog.list_datasets, self.actor)
        origin = origin_of(self)
        self.write_json({"datasets": [dataset_json(origin, d) for d in datasets]})

    async def post(self) -> None:
        body: NewDatasetBody = await self.parse_body(NewDatasetBody)
        spec = NewDataset(title=body.title, description=body.description, visibility=body.visibility,
                          release_date=body.release_date, curator=self.actor.account_id)
        dataset = await self.services.call(self.services.catalog.create_dataset, body.name, spec)
        self.services.identity.forget()
        self.write_json(dataset_json(origin_of(self), dataset), 201)


class DatasetHandler(BaseHandler):
    async def get(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        self.write_json(dataset_json(origin_of(self), dataset))

    async def patch(self, dataset_ref: str) -> None:
        changes: DatasetChangesBody = await self.parse_body(DatasetChangesBody)
        dataset = await self.services.call(self.services.catalog.update_dataset, dataset_ref, changes)
        self.write_json(dataset_json(origin_of(self), dataset))


class ImagesHandler(BaseHandler):
    async def get(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        origin = origin_of(self)
        self.write_json({"images": [image_json(origin, dataset, i) for i in dataset.images]})


class ImageHandler(BaseHandler):
    async def get(self, dataset_ref: str, image_name: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        self.write_json(image_json(origin_of(self), dataset, dataset.image(image_name)))


class DatasetSessionsHandler(BaseHandler):
    """POST: a new server-owned viewer session showing the dataset, owned by the actor."""

    async def post(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        transforms = await self.services.call(self.services.correlation.current_transforms, dataset)
        state = dataset_state(origin_of(self), dataset, transforms)
        session = await self.services.call(
            self.services.viewer_sessions.create, dataset.id, state, DEFAULT_CONFIG, self.actor.account_id
        )
        self.write_json(
            {"token": session.token, "viewer_url": f"/v/{session.token}/", "state": session.state}, 201
        )


class SessionStateBody(BaseModel):
    """A whole viewer state; with ``generation``, stored only if that is still the current one (else 412)."""

    state: dict[str, Any]
    generation: Text(128) | None = None  # type: ignore[valid-type]


class SessionHandler(BaseHandler):
    """GET the state the server holds; PUT a new state, pushed to every open viewer."""

    async def get(self, token: str) -> None:
        session = await self.services.call(self.services.viewer_sessions.get, token)
        self.write_json({"token": token, "dataset_id": session.dataset_id,
                         "generation": session.generation, "state": session.state})

    async def put(self, token: str) -> None:
        body: SessionStateBody = await self.parse_body(SessionStateBody)
        new_generation = await self.services.call(
            self.services.viewer_sessions.set_state, token, body.state, expected=body.generation
        )
        self.services.session_watch.changed(token)
        self.write_json({"token": token, "generation": new_generation})
