"""Correlative endpoints: transforms, landmark fits, thin-plate-spline volumes and overlay controls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from annotations.transforms import TransformRecord
from tiling.errors import InvalidTransform
from viewer.bodies import Text
from viewer.correlation import global_to_nm, to_moving, transform_json
from viewer.errors import BadRequest
from viewer.handlers.api import origin_of
from viewer.handlers.base import BaseHandler
from viewer.handlers.data import META_MAX_AGE, PrecomputedChunkHandler
from viewer.state import (
    apply_display,
    landmark_points,
    with_landmark_layers,
)

MAX_LANDMARKS = 2000


class TextFile(BaseModel):
    name: Text(255, min_length=1)  # type: ignore[valid-type]
    content: Text(4_000_000)  # type: ignore[valid-type]


class TransformBody(BaseModel):
    """PUT a transform: a matrix, or a transform file (MoBIE, eC-CLEM, BigWarp, point lists, matrix)."""

    matrix: list[list[float]] | None = Field(None, max_length=4)
    file: TextFile | None = None
    reference_file: TextFile | None = None  # the reference image's list, for paired coordinate lists
    unit: Text(32) | None = None  # type: ignore[valid-type]
    fit: Text(16) | None = None  # type: ignore[valid-type]  # landmark-only files; default: what the file did
    reference: Text(64) | None = None  # type: ignore[valid-type]
    note: Text(2000) = ""  # type: ignore[valid-type]


Point = list[float]


class LandmarksBody(BaseModel):
    moving: list[Point] = Field(max_length=MAX_LANDMARKS)
    reference: list[Point] = Field(max_length=MAX_LANDMARKS)
    names: list[Text(64)] | None = Field(None, max_length=MAX_LANDMARKS)  # type: ignore[valid-type]
    fit: Text(16) = "affine"  # type: ignore[valid-type]
    units: Text(32) = "nm"  # type: ignore[valid-type]
    dimensions: int | None = Field(None, ge=2, le=3)
    reference_image: Text(64) | None = None  # type: ignore[valid-type]
    save: bool = True
    note: Text(2000) = ""  # type: ignore[valid-type]


class DisplayBody(BaseModel):
    layers: dict[Text(200), dict[Text(64), Any]] = Field({}, max_length=64)  # type: ignore[valid-type]
    layout: Text(32) | None = None  # type: ignore[valid-type]
    select: Text(200) | None = None  # type: ignore[valid-type]


class RegisterBody(BaseModel):
    image: Text(64)  # type: ignore[valid-type]
    fit: Text(16) = "affine"  # type: ignore[valid-type]
    save: bool = True


class LandmarkLayersBody(BaseModel):
    image: Text(64)  # type: ignore[valid-type]


def session_edit(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``change`` with bad settings and malformed stored states (any JSON can be PUT) answered 400."""

    def guarded(state: dict[str, Any]) -> dict[str, Any]:
        try:
            return change(state)
        except ValueError as error:
            raise BadRequest(str(error)) from None
        except (TypeError, KeyError, AttributeError, IndexError, RecursionError):
            raise BadRequest("the session's state is malformed (change it with PUT /api/sessions/{token})") from None

    return guarded


class CorrelationHandler(BaseHandler):
    async def previous(self, dataset_ref: str | int, image_name: str) -> TransformRecord | None:
        _, record = await self.services.call(self.services.correlation.current, dataset_ref, image_name)
        return record

    async def saved(self, dataset_ref: str | int, image_name: str, previous: TransformRecord | None) -> None:
        """After a transform is stored: every open viewer of the dataset moves the layer live."""
        services = self.services
        tokens = await services.call(
            services.correlation.refresh_sessions, services.viewer_sessions, dataset_ref,
            moved=(image_name, previous), default_origin=origin_of(self),
        )  # fmt: skip
        for token in tokens:
            services.session_watch.changed(token)


class TransformHandler(CorrelationHandler):
    """GET the current transform (``?format=json|mobie|neuroglancer``, ``?history=1``); PUT a new one."""

    async def get(self, dataset_ref: str, image_name: str) -> None:
        form = self.get_query_argument("format", "json")
        if self.get_query_argument("history", "0") == "1":
            dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
            image = dataset.image(image_name)
            history = await self.services.call(self.services.transforms.history, image.id)
            self.write_json({"image": image_name, "history": [transform_json(record) for record in history]})
            return
        document = await self.services.call(
            self.services.correlation.export, dataset_ref, image_name, form, origin_of(self)
        )
        self.write_json(document)

    async def put(self, dataset_ref: str, image_name: str) -> None:
        body: TransformBody = await self.parse_body(TransformBody)
        correlation = self.services.correlation
        previous = await self.previous(dataset_ref, image_name)
        if (body.matrix is None) == (body.file is None):
            raise BadRequest('give either "matrix" or "file" ({"name", "content"})')
        if body.matrix is not None:
            record: TransformRecord = await self.services.call(
                correlation.set_matrix, dataset_ref, image_name, body.matrix, unit=body.unit or "nm",
                reference=body.reference, author=self.owner.name or "", note=body.note,
            )  # fmt: skip
            document = {"saved": True, "transform": transform_json(record), "landmarks": []}
        else:
            assert body.file is not None
            registration = await self.services.call(
                correlation.import_file, dataset_ref, image_name, body.file.name, body.file.content,
                reference_text=body.reference_file.content if body.reference_file else None,
                fit=body.fit, unit=body.unit, reference=body.reference, author=self.owner.name or "",
            )  # fmt: skip
            document = registration.to_json()
        await self.saved(dataset_ref, image_name, previous)
        self.write_json(document)


class LandmarksHandler(CorrelationHandler):
    """POST landmark pairs: fit, report each pair's residual, and (unless ``save`` is false) store."""

    async def post(self, dataset_ref: str, image_name: str) -> None:
        body: LandmarksBody = await self.parse_body(LandmarksBody)
        if body.save:
            await self.escalate("save")
        previous = await self.previous(dataset_ref, image_name)
        registration = await self.services.call(
            self.services.correlation.fit_landmarks, dataset_ref, image_name, body.moving, body.reference,
            fit=body.fit, units=body.units, dimensions=body.dimensions, names=body.names,
            reference=body.reference_image, author=self.owner.name or "", note=body.note, save=body.save,
        )  # fmt: skip
        if registration.record is not None:
            await self.saved(dataset_ref, image_name, previous)
        self.write_json(registration.to_json(), 201 if registration.record is not None else 200)


class WarpedImageHandler(PrecomputedChunkHandler):
    """A moving image resampled on the reference grid through a stored thin-plate spline."""

    async def warped(self, dataset_ref: str, image_name: str, transform_id: str) -> Any:
        services = self.services
        image, moving = await services.images.resolve(dataset_ref, image_name)
        transform = await services.images.transform(int(transform_id))
        # A segmentation follows the transform of the image it labels.
        if transform.image_id not in (image.id, image.labels_of) or transform.kind != "tps":
            raise InvalidTransform(f"transform {transform_id} is not a thin-plate spline of {image_name!r}")
        _, reference = await services.images.resolve_id(dataset_ref, transform.reference_image_id)
        return await services.images.warped(image, moving, reference, transform)


class WarpedInfoHandler(WarpedImageHandler):
    async def get(self, dataset_ref: str, image_name: str, transform_id: str) -> None:  # type: ignore[override]
        warped = await self.warped(dataset_ref, image_name, transform_id)
        self.cache_for(META_MAX_AGE)
        self.write_json(warped.info())

    head = get


class WarpedChunkHandler(WarpedImageHandler):
    async def get(  # type: ignore[override]
        self, dataset_ref: str, image_name: str, transform_id: str, scale_key: str, chunk_name: str
    ) -> None:
        warped = await self.warped(dataset_ref, image_name, transform_id)
        await self.send_chunk(warped, scale_key, chunk_name)  # the URL names the transform: immutable

    head = get


class SessionDisplayHandler(BaseHandler):
    """POST overlay controls: per-layer colour, window, opacity, visibility, and the layout."""

    async def post(self, token: str) -> None:
        body: DisplayBody = await self.parse_body(DisplayBody)
        change = session_edit(lambda state: apply_display(state, body.layers, body.layout, body.select))
        generation, state = await self.services.call(self.services.viewer_sessions.update_state, token, change)
        self.services.session_watch.changed(token)
        self.write_json({"token": token, "generation": generation, "state": state})


class SessionLandmarkLayersHandler(BaseHandler):
    """POST {"image"}: add point layers for pairing landmarks between the reference and ``image``."""

    async def post(self, token: str) -> None:
        body: LandmarkLayersBody = await self.parse_body(LandmarkLayersBody)
        session = await self.services.call(self.services.viewer_sessions.get, token)
        if session.dataset_id is None:
            raise BadRequest("this viewer session shows no dataset")
        _, image, reference = await self.services.call(
            self.services.correlation.lookup, session.dataset_id, body.image
        )
        generation, state = await self.services.call(
            self.services.viewer_sessions.update_state,
            token,
            session_edit(lambda current: with_landmark_layers(current, reference.name, image.name)),
        )
        self.services.session_watch.changed(token)
        self.write_json({"token": token, "generation": generation, "state": state})


class SessionRegisterHandler(CorrelationHandler):
    """POST {"image", "fit"}: fit the points placed in the session's landmark layers, report, save."""

    async def post(self, token: str) -> None:
        body: RegisterBody = await self.parse_body(RegisterBody)
        if body.save:
            await self.escalate("save")
        services = self.services
        session = await services.call(services.viewer_sessions.get, token)
        if session.dataset_id is None:
            raise BadRequest("this viewer session shows no dataset")
        dataset, image, reference = await services.call(services.correlation.lookup, session.dataset_id, body.image)
        read_points = session_edit(lambda state: {
            "reference": landmark_points(state, reference.name), "moving": landmark_points(state, image.name)
        })
        points = read_points(session.state)
        reference_points, moving_points = points["reference"], points["moving"]
        if len(reference_points) != len(moving_points):
            raise InvalidTransform(
                f"{len(reference_points)} points on {reference.name!r} but {len(moving_points)} on {image.name!r}; "
                "place them in pairs, in the same order"
            )
        if not reference_points:
            raise InvalidTransform("no landmarks placed yet")
        reference_nm = global_to_nm(np.asarray(reference_points), reference)
        # Points on the moving layer were placed where it is shown now: undo its current transform.
        shown_nm = global_to_nm(np.asarray(moving_points), reference)
        previous = await self.previous(dataset.id, image.name)
        moving_nm = await asyncio.to_thread(to_moving, previous, shown_nm)
        registration = await services.call(
            services.correlation.fit_landmarks, dataset.id, image.name, moving_nm, reference_nm,
            fit=body.fit, units="nm", method="landmarks (viewer)", author=self.owner.name or "", save=body.save,
            note=f"placed in viewer session {token[:6]}…",
        )  # fmt: skip
        if registration.record is not None:
            await self.saved(dataset.id, image.name, previous)
        self.write_json(registration.to_json(), 201 if registration.record is not None else 200)
