"""What a Citizen Science project declares and what volunteers send: the request and answer shapes, and the checking
of a submission's marks against its task. Pure code: no database, no web framework.

Marks are in the project image's level-0 voxel coordinates, x y z, continuous (voxel ``i`` spans ``[i, i + 1)``),
as the embedded viewer gives them; consensus and the consensus layer use physical nanometres.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from annotations.errors import InvalidSubmission
from annotations.names import NoNulSchema

Tool = Literal["point", "outline", "box"]
TOOLS: tuple[str, ...] = ("point", "outline", "box")
ProjectStatus = Literal["active", "paused", "finished"]
TaskStatus = Literal["active", "paused", "retired"]
LABEL = r"^[A-Za-z0-9_\-]{1,64}$"
PROJECT_NAME = r"^[a-z][a-z0-9_\-]{0,63}$"
MAX_MARKS = 500  # in one submission
MAX_OUTLINE_POINTS = 2000
MAX_TASKS = 100_000  # one generation
MAX_SIDE = 4096  # voxels, a task region's side
Number = StrictFloat  # takes integers too (as floats), never booleans
Text = Annotated[StrictStr, NoNulSchema()]


class PictureRegion(BaseModel):
    """A region of the project's image (level-0 voxels, x y z, upper exclusive): a tutorial step's picture is
    its middle slice."""

    model_config = ConfigDict(extra="forbid", strict=True)

    lower: list[StrictInt] = Field(min_length=3, max_length=3)
    upper: list[StrictInt] = Field(min_length=3, max_length=3)

    @model_validator(mode="after")
    def _check(self) -> PictureRegion:
        check_box(self.lower, self.upper, "picture")
        return self


class TutorialStep(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: Text = Field(max_length=4000)
    picture: PictureRegion | None = None


class WorkflowIn(BaseModel):
    """A workflow version: what volunteers are asked, with which tool and labels, on regions of which shape."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "instructions": "Click the centre of every mitochondrion.", "tool": "point", "labels": ["mitochondrion"],
        "task_shape": [512, 512, 16], "redundancy": 5,
        "tutorial": [{"text": "Mitochondria are dark ovals with inner folds.",
                      "picture": {"lower": [0, 0, 10], "upper": [256, 256, 11]}}]}]})

    instructions: Text = Field("", max_length=20_000)
    tutorial: list[TutorialStep] = Field(default_factory=list, max_length=20)
    tool: Tool
    labels: list[Annotated[StrictStr, Field(pattern=LABEL)]] = Field(min_length=1, max_length=50)
    task_shape: list[Annotated[StrictInt, Field(ge=1, le=MAX_SIDE)]] = Field(min_length=3, max_length=3,
                                                                               description="voxels, x y z")
    redundancy: StrictInt = Field(5, ge=1, le=100, description="a task retires after this many submissions")
    radius_nm: Number | None = Field(None, ge=1, le=1e6, description="points this near are one object "
                                                                      "(default: 8 voxels in x)")

    @model_validator(mode="after")
    def _check(self) -> WorkflowIn:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct")
        if any(not 1 <= side <= MAX_SIDE for side in self.task_shape):
            raise ValueError(f"task_shape sides must be 1 to {MAX_SIDE} voxels")
        return self


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [{
        "name": "mitochondria", "title": "Find the mitochondria", "image": "em",
        "workflow": {"instructions": "Click the centre of every mitochondrion.", "tool": "point",
                     "labels": ["mitochondrion"], "task_shape": [512, 512, 16], "redundancy": 5}}]})

    name: StrictStr = Field(pattern=PROJECT_NAME)
    title: Text = Field(min_length=1, max_length=500)
    description: Text = Field("", max_length=20_000)
    image: StrictStr = Field(max_length=64, description="the image volunteers annotate (the dataset's reference)")
    workflow: WorkflowIn
    weighted: StrictBool = Field(False, description="weight votes by volunteer quality")
    threshold: Number = Field(0.5, ge=0, le=1,
                              description="the agreement a consensus mark needs (0: two volunteers suffice)")


class ProjectChanges(BaseModel):
    """A curator's change: text, status, consensus settings, or a new workflow version."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"status": "paused"}, {"weighted": True, "threshold": 0.6}]})

    title: Text | None = Field(None, min_length=1, max_length=500)
    description: Text | None = Field(None, max_length=20_000)
    status: ProjectStatus | None = None
    weighted: StrictBool | None = None
    threshold: Number | None = Field(None, ge=0, le=1)
    workflow: WorkflowIn | None = None


class TasksIn(BaseModel):
    """Tasks made by tiling a region of the image (default: all of it) with the workflow's task shape."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"lower": [0, 0, 0], "upper": [1024, 1024, 64], "priority": 1}]})

    lower: list[StrictInt] | None = Field(None, min_length=3, max_length=3)
    upper: list[StrictInt] | None = Field(None, min_length=3, max_length=3)
    priority: StrictInt = Field(0, ge=-1000, le=1000)


class MarkIn(BaseModel):
    """One mark: ``point`` [x, y, z]; ``box`` ``lower`` and ``upper``; ``outline`` ``points`` [[x, y], …] on slice
    ``z``. Image voxels."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Tool
    label: StrictStr = Field(max_length=64)
    point: list[Number] | None = Field(None, min_length=3, max_length=3)
    lower: list[Number] | None = Field(None, min_length=3, max_length=3)
    upper: list[Number] | None = Field(None, min_length=3, max_length=3)
    points: list[Annotated[list[Number], Field(min_length=2, max_length=2)]] | None = Field(
        None, max_length=MAX_OUTLINE_POINTS)
    z: Number | None = None

    @model_validator(mode="after")
    def _shape(self) -> MarkIn:
        wanted = {"point": {"point"}, "box": {"lower", "upper"}, "outline": {"points", "z"}}[self.type]
        given = {name for name in ("point", "lower", "upper", "points", "z") if getattr(self, name) is not None}
        if given != wanted:
            raise ValueError(f"a {self.type} mark has {', '.join(sorted(wanted))} (and label), not "
                             f"{', '.join(sorted(given)) or 'nothing'}")
        return self


class GoldTaskIn(BaseModel):
    """A gold-standard task: a region and the expert's answer (no marks: "nothing here" is the answer)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"lower": [0, 0, 0], "upper": [512, 512, 16],
         "answer": [{"type": "point", "point": [100.5, 200.5, 8.5], "label": "mitochondrion"}]}]})

    lower: list[StrictInt] = Field(min_length=3, max_length=3)
    upper: list[StrictInt] = Field(min_length=3, max_length=3)
    answer: list[MarkIn] = Field(max_length=MAX_MARKS)


class TaskChanges(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"priority": 10}, {"status": "retired"}]})

    priority: StrictInt | None = Field(None, ge=-1000, le=1000)
    status: TaskStatus | None = None


class SubmissionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [
        {"marks": [{"type": "point", "point": [120.5, 88.5, 8.5], "label": "mitochondrion"}]},
        {"nothing_here": True}]})

    marks: list[MarkIn] = Field(default_factory=list, max_length=MAX_MARKS)
    nothing_here: StrictBool = False
    # Not strict: JSON has no datetime, so the model's strictness would refuse every ISO 8601 string.
    started_at: datetime | None = Field(None, strict=False, description="when the volunteer opened the task (ISO 8601)")

    @model_validator(mode="after")
    def _either(self) -> SubmissionIn:
        if self.nothing_here and self.marks:
            raise ValueError("a 'nothing here' submission has no marks")
        if not self.nothing_here and not self.marks:
            raise ValueError("mark something, or say nothing_here")
        return self


def check_box(lower: list[int], upper: list[int], what: str) -> None:
    if any(low < 0 for low in lower) or any(high <= low for low, high in zip(lower, upper, strict=True)):
        raise ValueError(f"{what} needs 0 <= lower < upper on every axis")


def check_marks(marks: list[MarkIn], tool: str, labels: list[str], lower: list[int], upper: list[int]
                ) -> list[dict[str, Any]]:
    """The marks as stored (plain lists), once each is of the workflow's tool and labels and inside the region;
    else InvalidSubmission naming the first fault."""
    stored = []
    for index, mark in enumerate(marks):
        where = f"mark {index}"
        if mark.type != tool:
            raise InvalidSubmission(f"{where}: this workflow's tool is {tool!r}, not {mark.type!r}")
        if mark.label not in labels:
            raise InvalidSubmission(f"{where}: label {mark.label!r} is not one of {', '.join(labels)}")
        if mark.type == "point":
            assert mark.point is not None
            _inside(mark.point, lower, upper, where)
            stored.append({"type": "point", "label": mark.label, "point": [float(v) for v in mark.point]})
        elif mark.type == "box":
            assert mark.lower is not None and mark.upper is not None
            low = [float(min(a, b)) for a, b in zip(mark.lower, mark.upper, strict=True)]
            high = [float(max(a, b)) for a, b in zip(mark.lower, mark.upper, strict=True)]
            _inside(low, lower, upper, where)
            _inside(high, lower, upper, where)
            if any(h - a <= 0 for a, h in zip(low, high, strict=True)):
                raise InvalidSubmission(f"{where}: a box needs some extent on every axis")
            stored.append({"type": "box", "label": mark.label, "lower": low, "upper": high})
        else:
            assert mark.points is not None and mark.z is not None
            if len(mark.points) < 3:
                raise InvalidSubmission(f"{where}: an outline needs at least 3 points")
            for x, y in mark.points:
                _inside([x, y, mark.z], lower, upper, where)
            stored.append({"type": "outline", "label": mark.label, "z": float(mark.z),
                           "points": [[float(x), float(y)] for x, y in mark.points]})
    return stored


def _inside(point: list[Any], lower: list[int], upper: list[int], where: str) -> None:
    for axis, value, low, high in zip("xyz", point, lower, upper, strict=True):
        if not math.isfinite(value) or not low <= value <= high:
            raise InvalidSubmission(f"{where}: {axis} = {value} is outside the task region [{low}, {high}]")


class WorkflowRecord(BaseModel):
    id: int
    version: int
    instructions: str
    tutorial: list[TutorialStep]
    tool: str
    labels: list[str]
    task_shape: list[int]
    redundancy: int
    radius_nm: float
    created_at: datetime


class ProjectRecord(BaseModel):
    id: int
    name: str
    title: str
    description: str
    dataset: str
    dataset_id: int
    image: str
    status: str
    weighted: bool
    threshold: float
    consensus_layer_id: int | None
    workflow: WorkflowRecord
    tasks: int
    retired: int
    created_at: datetime


class TaskRecord(BaseModel):
    id: int
    lower: list[int]
    upper: list[int]
    status: str
    priority: int
    gold: bool
    handed_out: int
    submissions: int


class ProgressRecord(BaseModel):
    """A volunteer's progress in a project."""

    submitted: int
    gold_seen: int
    tutorial_done: bool
    retired: int
    tasks: int


class TaskOffer(BaseModel):
    """The task handed to a volunteer: its region, the workflow version it is to be done with, and where the
    embedded viewer opens."""

    task: int
    assignment: int
    lower: list[int]
    upper: list[int]
    slice: int  # the region's middle slice (the outline tool's slice)
    workflow: WorkflowRecord
    expires_at: datetime


class Feedback(BaseModel):
    """After a gold-standard task: how the answer compared with the expert's."""

    precision: float
    recall: float
    f1: float
    expected: list[dict[str, Any]]
    message: str


class SubmittedRecord(BaseModel):
    submission: int
    task: int
    retired: bool
    feedback: Feedback | None
    next: TaskOffer | None
    progress: ProgressRecord


class TaskPage(BaseModel):
    tasks: list[TaskRecord]
    total: int


class HourCount(BaseModel):
    hour: datetime  # its start (UTC)
    submissions: int


class Stats(BaseModel):
    """The dashboard's figures: progress, volunteers, submissions over time, the agreement histogram."""

    tasks: int
    retired: int
    active: int
    paused: int
    gold: int
    submissions: int
    volunteers: int
    active_volunteers_24h: int
    active_volunteers_1h: int
    per_hour: list[HourCount]
    agreement_bins: list[float]
    agreement_counts: list[int]
    consensus_marks: int
