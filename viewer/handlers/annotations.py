"""Annotation layers and annotations: thin handlers, one service call each (``annotations.annotation_store``)."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from tornado.iostream import StreamClosedError

from annotations.annotation_export import ExportFormat, export_layer
from annotations.annotation_import import ImportFormat, import_annotations
from annotations.annotation_source import SourceFile
from annotations.annotation_store import (
    MAX_BATCH,
    AnnotationPage,
    AnnotationQuery,
    AnnotationRecord,
    CreatedRecord,
    DeletedRecord,
    LayerChanges,
    LayerIn,
    LayerRecord,
    Moment,
    VersionRecord,
)
from annotations.errors import BatchTooLarge
from annotations.gradual import release
from annotations.layer_specs import AnnotationIn
from annotations.views import View
from viewer import bodies
from viewer.apidoc import ANY_JSON, BINARY, op
from viewer.errors import BadRequest
from viewer.handlers.api import origin_of
from viewer.handlers.base import BaseHandler

ANNOTATION_LIST = TypeAdapter(list[AnnotationIn])
BULK_VALUES = 4_000_000  # JSON values in one bulk body: 100,000 annotations with labels and properties


class LayersOut(BaseModel):
    layers: list[LayerRecord]


class AnnotationsBody(BaseModel):
    """Annotations to add, all or none (at most 100,000)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"annotations": [{"type": "point", "point": [1200, 800, 640], "label": "synapse"}]}]})

    annotations: list[AnnotationIn]


class AsOfQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: Moment | None = Field(None, description="the annotation as it was then (ISO 8601 with a time zone)")


class HistoryOut(BaseModel):
    versions: list[VersionRecord]


class ExportQuery(BaseModel):
    """An export's format, and which annotations: by author, label, update time [since, until), as of a time."""

    model_config = ConfigDict(extra="forbid")

    format: ExportFormat = Field(description="csv, ng-json (Neuroglancer annotation JSON), static precomputed "
                                             "annotation folders in a zip or tar archive (with mifa.json beside "
                                             "them), or mifa (the layer's MIFA annotation metadata as JSON)")
    author: str | None = Field(None, max_length=64)
    label: str | None = Field(None, max_length=64)
    since: Moment | None = None
    until: Moment | None = None
    as_of: Moment | None = None

    @property
    def view(self) -> View:
        return View(as_of=self.as_of, author=self.author, label=self.label, since=self.since, until=self.until)


class ImportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: ImportFormat = Field(description="csv or ng-json (Neuroglancer annotation JSON); the body is the file")


EXPORT_TYPES = {"text/csv": {"type": "string"}, "application/json": ANY_JSON, "application/zip": BINARY,
                "application/x-tar": BINARY}
IMPORT_TYPES = {"text/csv": {"type": "string"}, "application/json": ANY_JSON}


class AnnotationLayersHandler(BaseHandler):
    @op(summary="The dataset's annotation layers", response=LayersOut)
    async def get(self, dataset_ref: str) -> None:
        layers = await self.services.call(self.services.annotations.layers, self.actor, self.dataset_access)
        self.write_json(LayersOut(layers=layers))

    @op(summary="Create an annotation layer (annotators and curators of the dataset)", body=LayerIn,
        response=LayerRecord, status=201)
    async def post(self, dataset_ref: str) -> None:
        body: LayerIn = await self.parse_body()
        record = await self.services.call(self.services.annotations.create_layer, self.actor, self.dataset_access,
                                          body)
        self.write_json(record, 201)


class AnnotationLayerHandler(BaseHandler):
    @op(summary="An annotation layer: its types, labels, properties, relationships and bounds", response=LayerRecord)
    async def get(self, dataset_ref: str, layer_id: str) -> None:
        record = await self.services.call(self.services.annotations.layer, self.actor, self.dataset_access,
                                          int(layer_id))
        self.write_json(record)

    @op(summary="Rename or describe a layer, or add types, labels, properties or relationships (its maker, curators)",
        body=LayerChanges, response=LayerRecord)
    async def patch(self, dataset_ref: str, layer_id: str) -> None:
        body: LayerChanges = await self.parse_body()
        record = await self.services.call(self.services.annotations.update_layer, self.actor, self.dataset_access,
                                          int(layer_id), body)
        self.write_json(record)

    @op(summary="Delete a layer with its annotations and their history (curators)", response=None, status=204)
    async def delete(self, dataset_ref: str, layer_id: str) -> None:
        await self.services.call(self.services.annotations.delete_layer, self.actor, self.dataset_access,
                                 int(layer_id))
        self.set_status(204)
        self.finish()


class AnnotationsHandler(BaseHandler):
    @op(summary="A page of the layer's annotations, by author, label, update time, as of a time and bounding box",
        query=AnnotationQuery, response=AnnotationPage)
    async def get(self, dataset_ref: str, layer_id: str) -> None:
        query: AnnotationQuery = self.query()
        page = await self.services.call(self.services.annotations.query, self.actor, self.dataset_access,
                                        int(layer_id), query)
        self.write_json(page)

    @op(summary="Add annotations, all or none (annotators; at most 100,000 in one request)", body=AnnotationsBody,
        response=CreatedRecord, status=201)
    async def post(self, dataset_ref: str, layer_id: str) -> None:
        with bodies.collection_paused():
            value = await asyncio.to_thread(bodies.parse_list, self.body, "annotations",
                                            max_values=BULK_VALUES)
            if not (isinstance(value, dict) and set(value) == {"annotations"}
                    and isinstance(value["annotations"], list)):
                raise BadRequest('the body must be {"annotations": [ … ]} (at most 100,000 annotations)')
            if len(value["annotations"]) > MAX_BATCH:
                raise BatchTooLarge(f"at most {MAX_BATCH} annotations in one request, not {len(value['annotations'])}")
            items = await asyncio.to_thread(bodies.validate_items, ANNOTATION_LIST, value["annotations"],
                                            "annotations")
            try:
                created = await self.services.call(self.services.annotations.create_many, self.actor,
                                                   self.dataset_access, int(layer_id), items)
            finally:  # freed a slice at a time in a worker, not at once on the event loop
                await asyncio.to_thread(release, value["annotations"], items)
        self.write_json(created, 201)


class AnnotationExportHandler(BaseHandler):
    @op(summary="Export a layer as CSV, Neuroglancer annotation JSON, static precomputed annotation folders (zip, "
                "tar; with the MIFA record beside them), or its MIFA annotation metadata, streamed",
        query=ExportQuery, response=BINARY, content=EXPORT_TYPES)
    async def get(self, dataset_ref: str, layer_id: str) -> None:
        query: ExportQuery = self.query()
        services = self.services
        export = await services.call(export_layer, services.annotations.sessions, self.actor, self.dataset_access,
                                     int(layer_id), query.format, query.view, services.settings.annotation_cell_limit,
                                     origin_of(self))
        try:
            self.set_header("Content-Type", export.content_type)
            self.set_header("Content-Disposition", f'attachment; filename="{export.filename}"')
            self.set_header("Cache-Control", "no-store")
            # Chunk by chunk from the database threads; each flush waits for the client (memory stays flat).
            while self.request.method != "HEAD" and (chunk := await services.call(next, export, None)) is not None:
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return  # the client went away
        finally:
            await services.call(export.close)
        self.finish()


class AnnotationImportHandler(BaseHandler):
    @op(summary="Import a CSV or Neuroglancer annotation JSON file into a layer: checked whole, then all or none "
                "(annotators)", query=ImportQuery, response=CreatedRecord, status=201, raw_body=IMPORT_TYPES)
    async def post(self, dataset_ref: str, layer_id: str) -> None:
        query: ImportQuery = self.query()
        with bodies.collection_paused():
            created = await self.services.call(import_annotations, self.services.annotations, self.actor,
                                               self.dataset_access, int(layer_id), self.body, query.format)
        self.write_json(created, 201)


class AnnotationHandler(BaseHandler):
    @op(summary="One annotation, now or as of a time", query=AsOfQuery, response=AnnotationRecord)
    async def get(self, dataset_ref: str, layer_id: str, annotation_id: str) -> None:
        query: AsOfQuery = self.query()
        record = await self.services.call(self.services.annotations.get, self.actor, self.dataset_access,
                                          int(layer_id), int(annotation_id), query.as_of)
        self.write_json(record)

    @op(summary="Replace an annotation by a new version (its creator, or a curator)", body=AnnotationIn,
        response=AnnotationRecord)
    async def put(self, dataset_ref: str, layer_id: str, annotation_id: str) -> None:
        body: AnnotationIn = await self.parse_body()
        record = await self.services.call(self.services.annotations.update, self.actor, self.dataset_access,
                                          int(layer_id), int(annotation_id), body)
        self.write_json(record)

    @op(summary="Delete an annotation (its creator, or a curator); its history stays", response=DeletedRecord)
    async def delete(self, dataset_ref: str, layer_id: str, annotation_id: str) -> None:
        record = await self.services.call(self.services.annotations.delete, self.actor, self.dataset_access,
                                          int(layer_id), int(annotation_id))
        self.write_json(record)


class AnnotationHistoryHandler(BaseHandler):
    @op(summary="Every version of an annotation with its author and time, oldest first (a delete is one)",
        response=HistoryOut)
    async def get(self, dataset_ref: str, layer_id: str, annotation_id: str) -> None:
        versions = await self.services.call(self.services.annotations.history, self.actor, self.dataset_access,
                                            int(layer_id), int(annotation_id))
        self.write_json(HistoryOut(versions=versions))


class AnnotationSourceHandler(BaseHandler):
    """A precomputed annotation source file: cacheable, revalidated by an ETag bound to the layer's generation
    and the view (the view is in the path, so each view is its own cache entry)."""

    cors = True  # as the pixels: public datasets are readable from any origin; private ones drop it

    def send(self, file: SourceFile) -> None:
        private = self.dataset_access is not None and not self.dataset_access.public()
        self.set_header("Cache-Control", f"{'private' if private else 'public'}, no-cache")
        self.set_header("ETag", file.etag)
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return
        self.set_header("Content-Type", file.content_type)
        self.finish(file.body)


class AnnotationSourceInfoHandler(AnnotationSourceHandler):
    @op(summary="A layer's annotations of one type as a Neuroglancer precomputed annotation source: its info",
        response=ANY_JSON, also={304: "not modified"})
    async def get(self, dataset_ref: str, layer_id: str, kind: str, view: str) -> None:
        self.send(await self.services.call(self.services.annotation_source.info, self.actor, self.dataset_access,
                                           int(layer_id), kind, view))


class AnnotationSourceCellHandler(AnnotationSourceHandler):
    @op(summary="One spatial-index cell of a precomputed annotation source (a random subsample within its limit)",
        response=BINARY, content="application/octet-stream", also={304: "not modified"})
    async def get(self, dataset_ref: str, layer_id: str, kind: str, view: str, level: str, cell: str) -> None:
        self.send(await self.services.call(self.services.annotation_source.cell, self.actor, self.dataset_access,
                                           int(layer_id), kind, view, int(level), cell,
                                           self.request.headers.get("If-None-Match")))


class AnnotationSourceByIdHandler(AnnotationSourceHandler):
    @op(summary="One annotation of a precomputed annotation source, with its related segment ids",
        response=BINARY, content="application/octet-stream", also={304: "not modified"})
    async def get(self, dataset_ref: str, layer_id: str, kind: str, view: str, annotation_id: str) -> None:
        self.send(await self.services.call(self.services.annotation_source.by_id, self.actor, self.dataset_access,
                                           int(layer_id), kind, view, int(annotation_id)))


class AnnotationSourceRelatedHandler(AnnotationSourceHandler):
    @op(summary="The annotations of a precomputed annotation source related to one segment id",
        response=BINARY, content="application/octet-stream", also={304: "not modified"})
    async def get(self, dataset_ref: str, layer_id: str, kind: str, view: str, relationship: str,
                  segment: str) -> None:
        self.send(await self.services.call(self.services.annotation_source.related, self.actor,
                                           self.dataset_access, int(layer_id), kind, view, relationship,
                                           int(segment)))
