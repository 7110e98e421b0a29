"""Citizen Science: projects and tasks (curators), task hand-out and submissions (volunteers), the dashboard's
figures and the exports. Thin handlers over ``annotations.crowd``.

A volunteer is an account when signed in, else an anonymous browser: a random id in a signed, HttpOnly cookie.
Volunteers' writes need the XSRF header always (that cookie is an ambient credential too).
"""

from __future__ import annotations

import csv
import io
import secrets
import time
import weakref
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from annotations.crowd import VIEW_SECONDS
from annotations.crowd_export import ExportMark, ExportSubmission, zooniverse_classifications
from annotations.crowd_specs import (
    GoldTaskIn,
    ProgressRecord,
    ProjectChanges,
    ProjectIn,
    ProjectRecord,
    Stats,
    SubmissionIn,
    SubmittedRecord,
    TaskChanges,
    TaskOffer,
    TaskPage,
    TaskRecord,
    TasksIn,
)
from annotations.errors import InvalidProject
from tiling.pictures import slice_picture
from tiling.precomputed import PrecomputedImage
from tiling.regions import Region, check_chunk, region_info
from viewer.apidoc import ANY_JSON, BINARY, CHUNK_TYPES, op
from viewer.handlers.api import origin_of
from viewer.handlers.base import BaseHandler
from viewer.handlers.data import META_MAX_AGE, ImageDataHandler, PrecomputedChunkHandler
from viewer.state import task_state

VOLUNTEER_COOKIE = "lamella_volunteer"
VOLUNTEER_DAYS = 365


class ProjectsOut(BaseModel):
    projects: list[ProjectRecord]


class CreatedTasksOut(BaseModel):
    created: int


class TaskQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["active", "paused", "retired"] | None = None
    gold: bool | None = None
    offset: int = Field(0, ge=0, le=10_000_000)
    limit: int = Field(100, ge=1, le=10_000)


class OfferOut(BaseModel):
    """The volunteer's task (None: none left for them) with the viewer state that shows it, and their progress."""

    task: TaskOffer | None
    state: dict[str, Any] | None
    progress: ProgressRecord


class SubmittedOut(SubmittedRecord):
    state: dict[str, Any] | None


class ConsensusOut(BaseModel):
    marks: int


class ExportQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["zooniverse", "consensus"] = Field(
        description="zooniverse: every submission as Zooniverse's classification export (panoptes-aggregation reads "
                    "it); consensus: the consensus marks with support and agreement")


class CrowdHandler(BaseHandler):
    async def volunteer(self) -> int:
        """This request's volunteer: the account, or the browser's cookie identity (made here when missing)."""
        browser = None
        if not self.actor.signed_in:
            raw = self.get_signed_cookie(VOLUNTEER_COOKIE, max_age_days=VOLUNTEER_DAYS + 31)
            browser = raw.decode("ascii", "replace") if raw else None
            if not browser:
                browser = secrets.token_urlsafe(18)
                self.set_signed_cookie(VOLUNTEER_COOKIE, browser, expires_days=VOLUNTEER_DAYS, httponly=True,
                                       samesite="Lax", secure=self.request.protocol == "https", path="/")
        return await self.services.call(self.services.crowd.volunteer, self.actor, browser)

    async def state_for(self, offer: TaskOffer | None, project: str) -> dict[str, Any] | None:
        """The viewer state of a volunteer's task. The dataset and image records it is made from are kept by the
        process for ``VIEW_SECONDS`` (a project's image never changes; a view needs only their ids, names, voxel
        size and window), so handing out a task costs no catalog look-up."""
        if offer is None:
            return None
        assert self.dataset_access is not None
        crowd = self.services.crowd
        key = (self.dataset_access.id, project)
        now = time.monotonic()
        cached = crowd.views.get(key)
        if cached is None or cached[0] < now:
            name = await self.services.call(crowd.task_image, self.actor, self.dataset_access, project)
            dataset = await self.services.call(self.services.catalog.get_dataset, self.dataset_access.id)
            image = dataset.image(name)
            assert image is not None
            cached = crowd.views[key] = (now + VIEW_SECONDS, (dataset, image))
        dataset, image = cached[1]
        return task_state(origin_of(self), dataset, image, offer)


class ProjectsHandler(CrowdHandler):
    @op(summary="The dataset's Citizen Science projects", response=ProjectsOut)
    async def get(self, dataset_ref: str) -> None:
        projects = await self.services.call(self.services.crowd.projects, self.actor, self.dataset_access)
        self.write_json(ProjectsOut(projects=projects))

    @op(summary="Start a project on the dataset's reference image (curators)", body=ProjectIn, response=ProjectRecord,
        status=201)
    async def post(self, dataset_ref: str) -> None:
        body: ProjectIn = await self.parse_body()
        record = await self.services.call(self.services.crowd.create_project, self.actor, self.dataset_access, body)
        self.write_json(record, 201)


class ProjectHandler(CrowdHandler):
    @op(summary="A project: its current workflow version and progress", response=ProjectRecord)
    async def get(self, dataset_ref: str, project: str) -> None:
        record = await self.services.call(self.services.crowd.project, self.actor, self.dataset_access, project)
        self.write_json(record)

    @op(summary="Change a project's text, status or consensus settings; a new workflow makes a new version "
                "(curators)", body=ProjectChanges, response=ProjectRecord)
    async def patch(self, dataset_ref: str, project: str) -> None:
        body: ProjectChanges = await self.parse_body()
        record = await self.services.call(self.services.crowd.change_project, self.actor, self.dataset_access,
                                          project, body)
        self.write_json(record)


class TasksHandler(CrowdHandler):
    @op(summary="The project's tasks (curators)", query=TaskQuery, response=TaskPage)
    async def get(self, dataset_ref: str, project: str) -> None:
        query: TaskQuery = self.query()
        page = await self.services.call(self.services.crowd.tasks, self.actor, self.dataset_access, project,
                                        query.status, query.gold, query.offset, query.limit)
        self.write_json(page)

    @op(summary="Make tasks by tiling the image, or a region of it, with the workflow's task shape (curators)",
        body=TasksIn, response=CreatedTasksOut, status=201)
    async def post(self, dataset_ref: str, project: str) -> None:
        body: TasksIn = await self.parse_body()
        created = await self.services.call(self.services.crowd.generate_tasks, self.actor, self.dataset_access,
                                           project, body)
        self.write_json(CreatedTasksOut(created=created), 201)


class GoldTasksHandler(CrowdHandler):
    @op(summary="Add a gold-standard task with the expert's answer (curators)", body=GoldTaskIn,
        response=TaskRecord, status=201)
    async def post(self, dataset_ref: str, project: str) -> None:
        body: GoldTaskIn = await self.parse_body()
        record = await self.services.call(self.services.crowd.add_gold, self.actor, self.dataset_access, project,
                                          body)
        self.write_json(record, 201)


class TaskHandler(CrowdHandler):
    @op(summary="Re-prioritise, pause, retire or un-retire a task (curators)", body=TaskChanges, response=TaskRecord)
    async def patch(self, dataset_ref: str, project: str, task_id: str) -> None:
        body: TaskChanges = await self.parse_body()
        record = await self.services.call(self.services.crowd.change_task, self.actor, self.dataset_access, project,
                                          int(task_id), body)
        self.write_json(record)


class VolunteerHandler(CrowdHandler):
    @op(summary="This volunteer's progress in the project", response=ProgressRecord)
    async def get(self, dataset_ref: str, project: str) -> None:
        volunteer = await self.volunteer()
        progress = await self.services.call(self.services.crowd.progress, self.actor, self.dataset_access, project,
                                            volunteer)
        self.write_json(progress)

    @op(summary="Record that this volunteer has been through the tutorial", response=ProgressRecord)
    async def post(self, dataset_ref: str, project: str) -> None:
        volunteer = await self.volunteer()
        progress = await self.services.call(self.services.crowd.tutorial_done, self.actor, self.dataset_access,
                                            project, volunteer)
        self.write_json(progress)


class NextTaskHandler(CrowdHandler):
    @op(summary="This volunteer's task: the open one, else a new one (never one they were given before)",
        response=OfferOut)
    async def post(self, dataset_ref: str, project: str) -> None:
        crowd = self.services.crowd
        volunteer = await self.volunteer()
        offer, progress = await self.services.call(crowd.next_task_and_progress, self.actor, self.dataset_access,
                                                   project, volunteer)
        self.write_json(OfferOut(task=offer, state=await self.state_for(offer, project), progress=progress))


class SubmissionHandler(CrowdHandler):
    @op(summary="Submit an answer to this volunteer's task and receive the next task in the same answer",
        body=SubmissionIn, response=SubmittedOut, status=201)
    async def post(self, dataset_ref: str, project: str, task_id: str) -> None:
        body: SubmissionIn = await self.parse_body()
        crowd = self.services.crowd
        volunteer = await self.volunteer()
        result = await self.services.call(crowd.submit, self.actor, self.dataset_access, project, int(task_id),
                                          volunteer, body, self.request.remote_ip)
        state = await self.state_for(result.next, project)
        self.write_json(SubmittedOut(**result.model_dump(), state=state), 201)


class StatsHandler(CrowdHandler):
    @op(summary="The dashboard's figures: progress, volunteers, submissions per hour, agreement histogram "
                "(curators)", response=Stats)
    async def get(self, dataset_ref: str, project: str) -> None:
        stats = await self.services.call(self.services.crowd.stats, self.actor, self.dataset_access, project)
        self.set_header("Cache-Control", "no-store")
        self.write_json(stats)


class ConsensusHandler(CrowdHandler):
    @op(summary="Compute the consensus of every retired task again (curators)", response=ConsensusOut)
    async def post(self, dataset_ref: str, project: str) -> None:
        marks = await self.services.call(self.services.crowd.recompute, self.actor, self.dataset_access, project)
        self.write_json(ConsensusOut(marks=marks))


class CrowdExportHandler(CrowdHandler):
    @op(summary="Export the raw submissions (Zooniverse's classification CSV) or the consensus (CSV); volunteers "
                "only as salted hashes (curators)", query=ExportQuery, response=BINARY,
        content={"text/csv": {"type": "string"}})
    async def get(self, dataset_ref: str, project: str) -> None:
        query: ExportQuery = self.query()
        crowd = self.services.crowd
        out = io.StringIO()
        if query.format == "zooniverse":
            rows = await self.services.call(crowd.export_rows, self.actor, self.dataset_access, project)
            await self.services.call(zooniverse_classifications, (export_submission(row) for row in rows), out)
            filename = f"{project}-classifications.csv"
        else:
            voxel, records = await self.services.call(crowd.consensus_rows, self.actor, self.dataset_access, project)
            consensus_csv(voxel, records, out)
            filename = f"{project}-consensus.csv"
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.set_header("Cache-Control", "no-store")
        self.finish(out.getvalue().encode())


class TutorialPictureHandler(CrowdHandler):
    @op(summary="A tutorial step's example picture: the middle slice of its region of the image", response=BINARY,
        content=("image/jpeg",))
    async def get(self, dataset_ref: str, project: str, step: str) -> None:
        record = await self.services.call(self.services.crowd.project, self.actor, self.dataset_access, project)
        steps = record.workflow.tutorial
        index = int(step)
        if index >= len(steps) or steps[index].picture is None:
            raise InvalidProject(f"tutorial step {index} has no picture")
        picture = steps[index].picture
        assert picture is not None
        image_record, image = await self.services.images.resolve(record.dataset, record.image)
        body = await slice_picture(image.volume, picture.lower, picture.upper, image_record.window)
        self.set_header("Content-Type", "image/jpeg")
        self.set_header("Cache-Control", "private, max-age=300")
        self.finish(body)


REGION_INFOS = 4096  # cropped infos kept per opened image


def cropped_info(image: PrecomputedImage, text: str) -> dict[str, Any]:
    """``region_info`` of an opened image, kept per image (its info never changes): every chunk request of a task
    view checks its chunk against it, and cropping copies the whole info."""
    kept = _region_infos.get(image)
    if kept is None:
        kept = _region_infos[image] = {}
    info = kept.get(text)
    if info is None:
        if len(kept) >= REGION_INFOS:
            kept.clear()
        info = kept[text] = region_info(image.info(), Region.parse(text))
    return info


_region_infos: weakref.WeakKeyDictionary[PrecomputedImage, dict[str, dict[str, Any]]] = weakref.WeakKeyDictionary()


class RegionInfoHandler(ImageDataHandler):
    @op(summary="A region of the image as a precomputed source of its own (whole chunks of each scale that meet "
                "it): what a task view loads", response=ANY_JSON)
    async def get(self, dataset_ref: str, image_name: str, region: str) -> None:
        record, image = await self.image(dataset_ref, image_name)
        box = Region.parse(region)
        box.check_within(list(reversed(record.shape)))
        self.cache_for(META_MAX_AGE)
        self.write_json(cropped_info(image, region))


class RegionChunkHandler(PrecomputedChunkHandler):
    @op(summary="One chunk of a region's precomputed source (the image's chunk grid in x and y, at most 8 slices "
                "deep), if it meets the region",
        response=BINARY, content=CHUNK_TYPES, also={304: "not modified"})
    async def get(self, dataset_ref: str, image_name: str, region: str, scale_key: str,  # type: ignore[override]
                  chunk_name: str) -> None:
        record, image = await self.image(dataset_ref, image_name)
        box = Region.parse(region)
        box.check_within(list(reversed(record.shape)))
        grid = check_chunk(cropped_info(image, region), scale_key, chunk_name)
        await self.send_chunk(image, scale_key, chunk_name, grid)


def export_submission(row: dict[str, Any]) -> ExportSubmission:
    marks = []
    for mark in row["marks"]:
        if mark["type"] == "point":
            marks.append(ExportMark(tool="point", label=mark["label"], voxels=list(mark["point"])))
        elif mark["type"] == "box":
            marks.append(ExportMark(tool="box", label=mark["label"], voxels=[*mark["lower"], *mark["upper"]]))
        else:
            marks.append(ExportMark(tool="outline", label=mark["label"],
                                    voxels=[v for point in mark["points"] for v in point], z=mark["z"]))
    return ExportSubmission(
        id=row["id"], volunteer=row["volunteer"], signed_in=row["signed_in"], project=row["project"],
        workflow_id=row["project_id"], workflow_name=row["title"], workflow_version=row["workflow_version"],
        created_at=row["created_at"], task_id=row["task_id"], gold=row["gold"], dataset=row["dataset"],
        image=row["image"], region_lower=row["lower"], region_upper=row["upper"], voxel_size_nm=row["voxel_size_nm"],
        labels=row["labels"], nothing_here=row["nothing_here"], marks=marks, started_at=row["started_at"])


CONSENSUS_COLUMNS = ["id", "task", "type", "label", "support", "agreement", "x_nm", "y_nm", "z_nm", "x", "y", "z",
                     "geometry_nm"]


def consensus_csv(voxel: list[float], records: list[Any], out: io.StringIO) -> None:
    """One row per consensus mark: its anchor (a point, a box's centre, an outline's first point) in nm and voxels,
    and the whole geometry (nm) as JSON."""
    import json

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CONSENSUS_COLUMNS)
    for record in records:
        if record.point is not None:
            anchor, geometry = record.point, {"point": record.point}
        elif record.point_a is not None:
            anchor = [(a + b) / 2 for a, b in zip(record.point_a, record.point_b, strict=True)]
            geometry = {"lower": record.point_a, "upper": record.point_b}
        else:
            anchor, geometry = record.points[0], {"points": record.points}
        writer.writerow([record.id, record.properties.get("task"), record.type, record.label,
                         record.properties.get("support"), round(float(record.properties.get("agreement", 0)), 4),
                         *(round(float(v), 3) for v in anchor),
                         *(round(float(v) / s, 3) for v, s in zip(anchor, voxel, strict=True)),
                         json.dumps(geometry)])
