"""JSON API: datasets, images and viewer sessions."""

from __future__ import annotations

from typing import Any

from annotations.catalog import DatasetRecord, ImageRecord
from viewer.errors import BadRequest
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
        "created_at": dataset.created_at.isoformat(),
        "url": f"{origin}/datasets/{dataset.id}",
        "images": [image_json(origin, dataset, image) for image in dataset.images],
    }


class DatasetsHandler(BaseHandler):
    async def get(self) -> None:
        datasets = await self.services.call(self.services.catalog.list_datasets)
        origin = origin_of(self)
        self.write_json({"datasets": [dataset_json(origin, d) for d in datasets]})


class DatasetHandler(BaseHandler):
    async def get(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        self.write_json(dataset_json(origin_of(self), dataset))


class ImagesHandler(BaseHandler):
    async def get(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        origin = origin_of(self)
        self.write_json({"images": [image_json(origin, dataset, i) for i in dataset.images]})


class ImageHandler(BaseHandler):
    async def get(self, dataset_ref: str, image_name: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        image = await self.services.call(self.services.catalog.get_image, dataset.id, image_name)
        self.write_json(image_json(origin_of(self), dataset, image))


class DatasetSessionsHandler(BaseHandler):
    """POST: a new server-owned viewer session showing the dataset."""

    async def post(self, dataset_ref: str) -> None:
        dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
        transforms = await self.services.call(self.services.correlation.current_transforms, dataset)
        state = dataset_state(origin_of(self), dataset, transforms)
        session = await self.services.call(
            self.services.viewer_sessions.create, dataset.id, state, DEFAULT_CONFIG
        )
        self.write_json(
            {"token": session.token, "viewer_url": f"/v/{session.token}/", "state": session.state}, 201
        )


class SessionHandler(BaseHandler):
    """GET the state the server holds; PUT a new state, pushed to every open viewer."""

    async def get(self, token: str) -> None:
        session = await self.services.call(self.services.viewer_sessions.get, token)
        self.write_json({"token": token, "dataset_id": session.dataset_id,
                         "generation": session.generation, "state": session.state})

    async def put(self, token: str) -> None:
        body = self.json_body()
        if not isinstance(body, dict) or not isinstance(body.get("state"), dict):
            raise BadRequest('expected {"state": {...}}')
        generation = await self.services.call(
            self.services.viewer_sessions.set_state, token, body["state"], expected=body.get("generation")
        )
        self.services.session_watch.changed(token)
        self.write_json({"token": token, "generation": generation})
