"""Correlative endpoints: transforms, landmark fits, thin-plate-spline volumes and overlay controls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tornado.iostream import StreamClosedError

from annotations.archives import tar_stream, zip_stream
from annotations.transforms import TransformRecord
from tiling.errors import InvalidTransform
from viewer.apidoc import ANY_JSON, BINARY, CHUNK_TYPES, op
from viewer.bodies import Flag, Integer, Number, Text
from viewer.correlation import global_to_nm, to_moving, transform_json
from viewer.errors import BadRequest
from viewer.handlers.api import origin_of
from viewer.handlers.base import BaseHandler
from viewer.handlers.data import META_MAX_AGE, PrecomputedChunkHandler
from viewer.scene_export import plan_dataset_scene
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
    """A transform: a matrix (into the reference image's space, translation in ``unit``), or a transform
    file (MoBIE, eC-CLEM, BigWarp, point lists, matrix)."""

    model_config = {"json_schema_extra": {"examples": [
        {"matrix": [[1, 0, 0, 120], [0, 1, 0, -40], [0, 0, 1, 0], [0, 0, 0, 1]], "unit": "nm"},
        {"file": {"name": "landmarks.csv", "content": "Pt-0,true,0,0,0,10,10,0"}, "fit": "affine", "unit": "um"},
    ]}}

    matrix: list[list[Number]] | None = Field(None, max_length=4)
    file: TextFile | None = None
    reference_file: TextFile | None = None  # the reference image's list, for paired coordinate lists
    unit: Text(32) | None = None  # type: ignore[valid-type]
    fit: Text(16) | None = None  # type: ignore[valid-type]  # landmark-only files; default: what the file did
    reference: Text(64) | None = None  # type: ignore[valid-type]
    note: Text(2000) = ""  # type: ignore[valid-type]


Point = list[Number]


class LandmarksBody(BaseModel):
    """Paired points (moving image, reference image) to fit; ``save`` stores the fit (curators)."""

    model_config = {"json_schema_extra": {"examples": [{
        "moving": [[0, 0, 0], [1000, 0, 0], [0, 1000, 0], [0, 0, 1000]],
        "reference": [[10, 5, 0], [1010, 5, 0], [10, 1005, 0], [10, 5, 1000]],
        "fit": "rigid", "units": "nm", "save": False,
    }]}}

    moving: list[Point] = Field(max_length=MAX_LANDMARKS)
    reference: list[Point] = Field(max_length=MAX_LANDMARKS)
    names: list[Text(64)] | None = Field(None, max_length=MAX_LANDMARKS)  # type: ignore[valid-type]
    fit: Text(16) = "affine"  # type: ignore[valid-type]
    units: Text(32) = "nm"  # type: ignore[valid-type]
    dimensions: Integer(2, 3) | None = None  # type: ignore[valid-type]
    reference_image: Text(64) | None = None  # type: ignore[valid-type]
    save: Flag = True
    note: Text(2000) = ""  # type: ignore[valid-type]


class DisplayBody(BaseModel):
    """Per-layer colour, window, opacity and visibility; the layout; the selected layer."""

    model_config = {"json_schema_extra": {"examples": [{"layers": {"em": {"window": [20, 230]}}, "layout": "xy"}]}}

    layers: dict[Text(200), dict[Text(64), Any]] = Field({}, max_length=64)  # type: ignore[valid-type]
    layout: Text(32) | None = None  # type: ignore[valid-type]
    select: Text(200) | None = None  # type: ignore[valid-type]


class RegisterBody(BaseModel):
    """Fit the landmark pairs placed in the session for ``image``; ``save`` stores it (curators)."""

    model_config = {"json_schema_extra": {"examples": [{"image": "fluorescence", "fit": "affine", "save": False}]}}

    image: Text(64)  # type: ignore[valid-type]
    fit: Text(16) = "affine"  # type: ignore[valid-type]
    save: Flag = True


class LandmarkLayersBody(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"image": "fluorescence"}]}}

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


class TransformQuery(BaseModel):
    format: Literal["json", "mobie", "neuroglancer"] = "json"
    history: Literal["0", "1"] = "0"


class RegistrationOut(BaseModel):
    saved: bool
    transform: dict[str, Any]
    rms_nm: float | None = None
    landmarks: list[dict[str, Any]]


class SessionChangeOut(BaseModel):
    token: str
    generation: str
    state: dict[str, Any]


class TransformHandler(CorrelationHandler):
    @op(summary="The image's current transform into the reference space (JSON, MoBIE view or Neuroglancer "
                "state), or its history", query=TransformQuery, response=ANY_JSON)
    async def get(self, dataset_ref: str, image_name: str) -> None:
        query: TransformQuery = self.query()
        form = query.format
        if query.history == "1":
            dataset = await self.services.call(self.services.catalog.get_dataset, dataset_ref)
            image = dataset.image(image_name)
            history = await self.services.call(self.services.transforms.history, image.id)
            self.write_json({"image": image_name, "history": [transform_json(record) for record in history]})
            return
        document = await self.services.call(
            self.services.correlation.export, dataset_ref, image_name, form, origin_of(self)
        )
        self.write_json(document)

    @op(summary="Store a new current transform (curators); open viewers move the layer", body=TransformBody,
        response=RegistrationOut)
    async def put(self, dataset_ref: str, image_name: str) -> None:
        body: TransformBody = await self.parse_body()
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
    @op(summary="Fit landmark pairs and report each pair's residual; with save (curators), store the fit",
        body=LandmarksBody, response=RegistrationOut, status=201, also={200: "fitted, not saved"})
    async def post(self, dataset_ref: str, image_name: str) -> None:
        body: LandmarksBody = await self.parse_body()
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
    @op(summary="Precomputed info of the image resampled on the reference grid through a stored spline",
        response=ANY_JSON)
    async def get(self, dataset_ref: str, image_name: str, transform_id: str) -> None:  # type: ignore[override]
        warped = await self.warped(dataset_ref, image_name, transform_id)
        self.cache_for(META_MAX_AGE)
        self.write_json(warped.info())



class WarpedChunkHandler(WarpedImageHandler):
    @op(summary="One chunk of the image resampled through a stored thin-plate spline", response=BINARY,
        content=CHUNK_TYPES, also={304: "not modified"})
    async def get(  # type: ignore[override]
        self, dataset_ref: str, image_name: str, transform_id: str, scale_key: str, chunk_name: str
    ) -> None:
        warped = await self.warped(dataset_ref, image_name, transform_id)
        await self.send_chunk(warped, scale_key, chunk_name)  # the URL names the transform: immutable



class SessionDisplayHandler(BaseHandler):
    @op(summary="Overlay controls: per-layer colour, window, opacity, visibility; the layout", body=DisplayBody,
        response=SessionChangeOut)
    async def post(self, token: str) -> None:
        body: DisplayBody = await self.parse_body()
        change = session_edit(lambda state: apply_display(state, body.layers, body.layout, body.select))
        generation, state = await self.services.call(self.services.viewer_sessions.update_state, token, change)
        self.services.session_watch.changed(token)
        self.write_json(SessionChangeOut(token=token, generation=generation, state=state))


class SessionLandmarkLayersHandler(BaseHandler):
    @op(summary="Add point layers for pairing landmarks between the reference and an image",
        body=LandmarkLayersBody, response=SessionChangeOut)
    async def post(self, token: str) -> None:
        body: LandmarkLayersBody = await self.parse_body()
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
        self.write_json(SessionChangeOut(token=token, generation=generation, state=state))


class SessionRegisterHandler(CorrelationHandler):
    @op(summary="Fit the landmark pairs placed in the session; with save (curators), store the fit",
        body=RegisterBody, response=RegistrationOut, status=201, also={200: "fitted, not saved"})
    async def post(self, token: str) -> None:
        body: RegisterBody = await self.parse_body()
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


class SceneQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["zip", "tar"] = Field("zip", description="zip (stored, zarr.json first) or tar")


SCENE_TYPES = {"application/zip": BINARY, "application/x-tar": BINARY}


class SceneHandler(BaseHandler):
    @op(summary="The dataset as an OME-Zarr 0.6 scene: every image with its metadata at 0.6 and its chunks as "
                "stored, each placed in the reference space by its current transform; a zip or tar, streamed",
        query=SceneQuery, response=BINARY, content=SCENE_TYPES)
    async def get(self, dataset_ref: str) -> None:
        query: SceneQuery = self.query()
        services = self.services
        dataset, files = await services.call(plan_dataset_scene, services.correlation, dataset_ref)
        members = ((file.path, file.read()) for file in files)  # one stored file in memory at a time
        stream = zip_stream(members) if query.format == "zip" else tar_stream(members)
        self.set_header("Content-Type", "application/zip" if query.format == "zip" else "application/x-tar")
        self.set_header("Content-Disposition", f'attachment; filename="{dataset.name}.ome.zarr.{query.format}"')
        self.set_header("Cache-Control", "no-store")
        if self.request.method == "HEAD":
            # A GET streams in chunks of unknown total length: HEAD says the same headers (RFC 9110 §9.3.2), not
            # the Content-Length 0 and ETag of an empty body that finishing unflushed would add.
            if self.request.version == "HTTP/1.1":
                self.set_header("Transfer-Encoding", "chunked")
            await self.flush()
            self.finish()
            return
        try:
            while (chunk := await services.call(next, stream, None)) is not None:
                self.write(chunk)
                await self.flush()  # waits for the client: memory stays flat
        except StreamClosedError:
            return  # the client went away
        finally:
            stream.close()
        self.finish()
