"""Pixel endpoints: precomputed (info and chunks) and the Zarr passthrough of stored keys."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from annotations.catalog import ImageRecord
from tiling.derived import derived_dir
from tiling.errors import KeyNotFound, MeshesNotFound, NotSegmentation
from tiling.meshes import read_surface
from tiling.precomputed import PrecomputedImage
from tiling.stores import parse_range_header
from viewer.apidoc import ANY_JSON, BINARY, CHUNK_TYPES, STORED_TYPES, op
from viewer.handlers.base import BaseHandler

CHUNK_MAX_AGE = 86400  # registered images are immutable
META_MAX_AGE = 60


class ImageDataHandler(BaseHandler):
    cors = True

    async def image(self, dataset_ref: str, image_name: str) -> tuple[ImageRecord, PrecomputedImage]:
        return await self.services.images.resolve(dataset_ref, image_name)

    def derived(self, record: ImageRecord) -> Path:
        """The folder of what Lamella derives from a label image (its segment table); other images have none."""
        if record.kind != "segmentation":
            raise NotSegmentation(f"image {record.name!r} is not a segmentation")
        return derived_dir(record.uri, record.managed, self.services.settings.images_dir, record.id)

    def cache_for(self, seconds: int) -> None:
        """Public data may sit in shared caches; a private dataset's only in this browser's."""
        private = self.dataset_access is not None and not self.dataset_access.public()
        self.set_header("Cache-Control", f"{'private' if private else 'public'}, max-age={seconds}")

    def check_not_modified(self, etag: str) -> bool:
        self.set_header("ETag", etag)
        if self.check_etag_header():
            self.set_status(304)
            self.finish()
            return True
        return False


class PrecomputedInfoHandler(ImageDataHandler):
    @op(summary="Neuroglancer precomputed info: one scale per stored OME-Zarr level", response=ANY_JSON,
        also={304: "not modified"})
    async def get(self, dataset_ref: str, image_name: str) -> None:
        record, image = await self.image(dataset_ref, image_name)
        info = image.info()
        if record.kind == "segmentation" and self.services.segments.exists(self.derived(record)):
            info = {**info, "segment_properties": "segment_properties"}  # precomputed volume.md: a relative path
        meshes = await self.services.images.meshes(record)
        if meshes is not None:
            info = {**info, "mesh": f"mesh/{meshes.build}"}
        self.cache_for(META_MAX_AGE)
        self.write_json(info)


class MeshInfoHandler(ImageDataHandler):
    @op(summary="The info of a label image's multi-resolution meshes (neuroglancer_multilod_draco, sharded), "
        "under the name of one build", response=ANY_JSON, also={304: "not modified"})
    async def get(self, dataset_ref: str, image_name: str, build: str) -> None:
        record, _ = await self.image(dataset_ref, image_name)
        meshes = await self.services.images.mesh_build(record, build)
        self.cache_for(CHUNK_MAX_AGE)  # a build never changes; a new one has a new name
        self.write_json(meshes.info)


class SurfaceQuery(BaseModel):
    """Which level of detail, in which file format."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"lod": 0, "format": "ply"}]})

    lod: int = Field(0, ge=0, le=32, description="level of detail: 0 is the finest; a segment's coarsest when it "
                                                 "has fewer")
    format: Literal["ply", "obj"] = Field("ply", description="binary PLY or Wavefront OBJ, in nanometres")


SURFACE_TYPES = {"application/x-ply": BINARY, "model/obj": {"type": "string"}}


class SurfaceHandler(ImageDataHandler):
    @op(summary="One segment's surface as a file for Blender, ParaView or MeshLab (PLY or OBJ, nanometres)",
        query=SurfaceQuery, response=BINARY, content=SURFACE_TYPES)
    async def get(self, dataset_ref: str, image_name: str, segment: str) -> None:
        query: SurfaceQuery = self.query()
        record, _ = await self.image(dataset_ref, image_name)
        meshes = await self.services.images.meshes(record)
        if meshes is None:
            raise MeshesNotFound(f"image {record.name!r} has no meshes")
        surface = await asyncio.to_thread(read_surface, meshes, int(segment), query.lod)
        body = await asyncio.to_thread(surface.ply if query.format == "ply" else surface.obj)
        self.set_header("Content-Type", "application/x-ply" if query.format == "ply" else "model/obj")
        self.set_header("Content-Disposition",
                        f'attachment; filename="{record.name}-{segment}-lod{query.lod}.{query.format}"')
        self.cache_for(META_MAX_AGE)  # a rebuild may change it
        self.finish(body)


class MeshShardHandler(ImageDataHandler):
    @op(summary="One shard file of a label image's meshes (manifests and Draco fragments), with a single "
        "byte range", response=BINARY, content=STORED_TYPES,
        also={206: "the range asked for", 304: "not modified"})
    async def get(self, dataset_ref: str, image_name: str, build: str, shard: str) -> None:
        record, _ = await self.image(dataset_ref, image_name)
        meshes = await self.services.images.mesh_build(record, build)
        byte_range = parse_range_header(self.request.headers.get("Range"))
        value = await meshes.store.read(shard, byte_range)
        self.set_header("Accept-Ranges", "bytes")
        self.cache_for(CHUNK_MAX_AGE)
        if self.check_not_modified(value.etag):
            return
        self.set_header("Content-Type", "application/octet-stream")
        if byte_range is not None:
            self.set_status(206)
            self.set_header("Content-Range", value.content_range)
        self.finish(value.data)


class PrecomputedChunkHandler(ImageDataHandler):
    @op(summary="One precomputed chunk (JPEG for uint8 images, compressed_segmentation for labels, else raw)",
        response=BINARY, content=CHUNK_TYPES, also={304: "not modified"})
    async def get(self, dataset_ref: str, image_name: str, scale_key: str, chunk_name: str) -> None:
        _, image = await self.image(dataset_ref, image_name)
        await self.send_chunk(image, scale_key, chunk_name)

    async def send_chunk(self, image: PrecomputedImage, scale_key: str, chunk_name: str,
                         grid: tuple[int, int, int] | None = None) -> None:
        """One encoded chunk with caching headers (immutable: the URL names what it shows); ``grid``: a finer
        chunk grid than the stored one (a region's)."""
        gzip_ok = "gzip" in self.request.headers.get("Accept-Encoding", "")
        chunk = await image.chunk(scale_key, chunk_name, gzip_ok=gzip_ok, grid=grid)
        self.cache_for(CHUNK_MAX_AGE)
        vary = self._headers.get("Vary")
        self.set_header("Vary", f"{vary}, Accept-Encoding" if vary else "Accept-Encoding")
        if self.check_not_modified(chunk.etag):
            return
        self.set_header("Content-Type", chunk.content_type)
        if chunk.content_encoding:
            self.set_header("Content-Encoding", chunk.content_encoding)
        self.finish(chunk.body)



class ZarrStoreHandler(ImageDataHandler):
    @op(summary="A stored OME-Zarr key as it is (metadata, chunk or shard), with a single byte range",
        response=BINARY, content=STORED_TYPES, also={206: "the range asked for", 304: "not modified"})
    async def get(self, dataset_ref: str, image_name: str, key: str) -> None:
        _, image = await self.image(dataset_ref, image_name)
        store = image.volume.store
        accel = self.services.settings.accel_redirect
        content_type = "application/json" if _is_metadata(key) else "application/octet-stream"
        if accel is not None and (path := store.local_path(key)) is not None:
            if not path.is_file():
                raise KeyNotFound(f"no stored key {key!r}")
            # nginx serves the bytes (ranges, sendfile); we decided the path is allowed.
            self.set_header("X-Accel-Redirect", accel.rstrip("/") + quote(str(path)))
            self.set_header("Content-Type", content_type)
            self.cache_for(CHUNK_MAX_AGE)
            self.finish()
            return
        byte_range = parse_range_header(self.request.headers.get("Range"))
        value = await store.read(key, byte_range)
        self.set_header("Accept-Ranges", "bytes")
        self.cache_for(CHUNK_MAX_AGE)
        if self.check_not_modified(value.etag):
            return
        self.set_header("Content-Type", content_type)
        if byte_range is not None:
            self.set_status(206)
            self.set_header("Content-Range", value.content_range)
        self.finish(value.data)



class StoredAccessHandler(ImageDataHandler):
    """For a reverse proxy's ``auth_request``: 204 once the actor may read the image's stored keys.

    Behind ``--accel-redirect`` it also names the image's folder (``X-Lamella-Root``) and the
    ``Cache-Control`` its keys get, so the proxy can serve them from disk itself (docs/deploy-nginx.md).
    """

    cors = False

    @op(summary="For a reverse proxy's auth_request: may the actor read this image's stored keys", status=204)
    async def get(self, dataset_ref: str, image_name: str) -> None:
        _, image = await self.image(dataset_ref, image_name)
        root = getattr(image.volume.store, "root", None) if self.services.settings.accel_redirect else None
        if root is not None:
            self.set_header("X-Lamella-Root", quote(str(root)))
        self.cache_for(CHUNK_MAX_AGE)  # what the keys get, not this decision: that must not be kept
        self.set_header("X-Lamella-Cache-Control", self._headers["Cache-Control"])
        self.set_header("Cache-Control", "no-store")
        self.set_status(204)
        self.finish()



def _is_metadata(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in ("zarr.json", ".zarray", ".zattrs", ".zgroup")
