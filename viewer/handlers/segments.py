"""A label image's segment table: as Neuroglancer segment properties, and paged, filtered JSON or CSV."""

from __future__ import annotations

import asyncio
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tornado.iostream import StreamClosedError

from tiling.segment_store import SegmentQuery, SegmentTable
from viewer.apidoc import ANY_JSON, op
from viewer.handlers.data import META_MAX_AGE, ImageDataHandler
from viewer.openapi import REF

MAX_LIMIT = 1000
NUMBER = r"-?[0-9]{1,20}(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,2})?"  # always finite as a float
BOX = rf"^{NUMBER}(,{NUMBER}){{5}}$"
CSV_BATCH = 5000  # rows per write of a CSV export: each flush waits for the client


class SegmentOut(BaseModel):
    id: str  # decimal: ids may pass 2**53
    name: str | None
    class_: str | None = Field(alias="class")
    voxels: int
    volume_um3: float
    bbox_min_nm: list[float]  # x, y, z: the lowest voxel corner
    bbox_max_nm: list[float]  # x, y, z: the highest voxel corner (exclusive)
    centroid_nm: list[float]  # x, y, z: the mean voxel centre


class SegmentsOut(BaseModel):
    total: int  # segments that match the filters
    offset: int
    limit: int
    next_offset: int | None  # the offset of the next page, if there is one
    voxel_size_nm: list[float]  # x, y, z
    segments: list[SegmentOut]


class SegmentsQuery(BaseModel):
    """Filters (all optional, combined with and), an order and a page; ``format=csv`` exports every match."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"min_voxels": 1000, "sort": "voxels", "order": "desc", "limit": 20},
        {"name": "mito", "bbox": "0,0,0,2000,2000,1000", "format": "csv"},
    ]})

    min_voxels: int | None = Field(None, ge=0, le=2**63)
    max_voxels: int | None = Field(None, ge=0, le=2**63)
    min_volume_um3: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_volume_um3: float | None = Field(None, ge=0, allow_inf_nan=False)
    name: str | None = Field(None, min_length=1, max_length=200,
                             description="case-insensitive substring of the segment's name or class")
    id: int | None = Field(None, ge=1, le=2**64 - 1, description="just this segment (the other filters then "
                                                                "do not apply)")
    bbox: str | None = Field(None, pattern=BOX, examples=["0,0,0,2000,2000,1000"],
                             description="x0,y0,z0,x1,y1,z1 in nm, two opposite corners: segments whose bounding "
                                         "box intersects this box")
    sort: Literal["id", "voxels", "volume_um3", "name", "class"] = "id"
    order: Literal["asc", "desc"] = "asc"
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=2**40)
    format: Literal["json", "csv"] = "json"

    def selection(self) -> SegmentQuery:
        box = None
        if self.bbox is not None:
            numbers = [float(part) for part in self.bbox.split(",")]
            corners = numbers[:3], numbers[3:]
            box = (tuple(map(min, *corners)), tuple(map(max, *corners)))
        return SegmentQuery(min_voxels=self.min_voxels, max_voxels=self.max_voxels,
                            min_volume_um3=self.min_volume_um3, max_volume_um3=self.max_volume_um3, name=self.name,
                            segment=self.id, box=box, sort=self.sort, descending=self.order == "desc")  # type: ignore[arg-type]


SEGMENTS_TYPES = {"application/json": {"$ref": REF.format(model=SegmentsOut.__name__)}, "text/csv": {"type": "string"}}


class SegmentHandler(ImageDataHandler):
    async def table(self, dataset_ref: str, image_name: str) -> tuple[SegmentTable, str]:
        record, _ = await self.image(dataset_ref, image_name)
        return await asyncio.to_thread(self.services.segments.get, self.derived(record))


class SegmentPropertiesHandler(SegmentHandler):
    @op(summary="Neuroglancer segment properties of a label image (inline: name, class tags, voxels, volume)",
        response=ANY_JSON, also={304: "not modified"})
    async def get(self, dataset_ref: str, image_name: str) -> None:
        table, etag = await self.table(dataset_ref, image_name)
        self.cache_for(META_MAX_AGE)
        if self.check_not_modified(etag):
            return
        body = await asyncio.to_thread(table.segment_properties)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(body)


class SegmentsHandler(SegmentHandler):
    cors = False  # a JSON API answer, not a data source

    @op(summary="A label image's segments (voxels, volume, bounding box and centroid in nm, name, class): "
                "filtered, sorted and paged, or every match as CSV", query=SegmentsQuery, response=SegmentsOut,
        content=SEGMENTS_TYPES)
    async def get(self, dataset_ref: str, image_name: str) -> None:
        query: SegmentsQuery = self.query()
        table, _ = await self.table(dataset_ref, image_name)
        selected = await asyncio.to_thread(table.select, query.selection())
        if query.format == "csv":
            await self.send_csv(table, selected, image_name)
            return
        page = selected[query.offset:query.offset + query.limit]
        end = query.offset + len(page)
        answer = SegmentsOut(
            total=len(selected), offset=query.offset, limit=query.limit,
            next_offset=end if end < len(selected) else None, voxel_size_nm=list(table.voxel_size_nm),
            segments=[SegmentOut.model_validate(table.record(int(i))) for i in page],
        )
        self.write_json(answer.model_dump(mode="json", by_alias=True))  # "class", a keyword in Python

    async def send_csv(self, table: SegmentTable, selected: np.ndarray, image_name: str) -> None:
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{image_name}-segments.csv"')
        self.set_header("Cache-Control", "no-store")
        if self.request.method == "HEAD":
            self.finish()
            return
        self.write(table.CSV_HEADER)
        try:
            for start in range(0, len(selected), CSV_BATCH):
                self.write(await asyncio.to_thread(table.csv_lines, selected[start:start + CSV_BATCH]))
                await self.flush()
        except StreamClosedError:
            return  # the client went away
        self.finish()
