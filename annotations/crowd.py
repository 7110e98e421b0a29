"""Citizen Science: projects, versioned workflows, tasks, volunteers, assignment, submissions and consensus.

Assignment is atomic across server processes: a task is handed out by one conditional update
(``handed_out < redundancy``) in the same transaction as the assignment row, whose (task, volunteer) key is unique,
so no task is ever out with more volunteers than its redundancy (the documented slack is 0: ``handed_out`` counts
open and submitted assignments; an assignment not submitted within ``ASSIGNMENT_MINUTES`` expires and frees its
place). A volunteer never gets a task they were given before, nor a retired or paused one; higher priority first,
then a fixed random order. Gold-standard tasks are mixed in at ``GOLD_EARLY`` of a volunteer's first
``GOLD_EARLY_COUNT`` submissions in the project and at ``GOLD_LATE`` after (as Zooniverse does), and answered with
feedback.

A submission is written, with its counts, in one transaction; only then is it acknowledged. Consensus for a task is
computed when the task retires (and on request) into the project's consensus layer, an annotation layer of the
dataset with the support and agreement of each mark as properties. No Tornado here.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from annotations import consensus as cs
from annotations.access import Action, Actor, DatasetAccess, require
from annotations.annotation_store import AnnotationStore, LayerIn
from annotations.crowd_specs import (
    MAX_TASKS,
    Feedback,
    GoldTaskIn,
    HourCount,
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
    WorkflowIn,
    WorkflowRecord,
    check_marks,
)
from annotations.db import writing
from annotations.errors import (
    AnnotationNotFound,
    InvalidProject,
    NameTaken,
    ProjectNotFound,
    SubmittingTooFast,
    TaskNotFound,
    TaskUnavailable,
)
from annotations.layer_specs import AnnotationIn
from annotations.models import (
    AnnotationLayer,
    Assignment,
    CrowdProject,
    CrowdTask,
    Dataset,
    Image,
    Participation,
    RateEvent,
    Submission,
    Volunteer,
    WorkflowVersion,
    utcnow,
)

ASSIGNMENT_MINUTES = 30
GOLD_EARLY, GOLD_LATE, GOLD_EARLY_COUNT = 0.4, 0.1, 20
SLACK = 0  # assignments beyond the redundancy: none (see the module's docstring)
RATE_WINDOW_SECONDS = 60
CONSENSUS_ACTOR = Actor(account_id=None, name="consensus", role="admin", via="token")
CONSENSUS_TYPES = {"point": "point", "outline": "polyline", "box": "axis_aligned_bounding_box"}
AGREEMENT_BINS = 10
EXPIRE_BATCH = 100
MIN_SUPPORT = 2  # volunteers a consensus mark needs at least, whatever the threshold
LOCKED_WAIT_SECONDS = 5.0  # PostgreSQL: how long a hand-out waits for candidates that others hold
COUNTS_SECONDS = 2.0  # how long a process reuses a project's task counts in volunteers' progress
VIEW_SECONDS = 10.0  # how long a process reuses the records a task view is made from
BROWSERS_KEPT = 100_000  # anonymous volunteers' ids a process keeps (then it starts again)


@dataclass(frozen=True)
class RateLimits:
    """Submissions a volunteer, and an address, may make per minute (0: no limit)."""

    per_volunteer: int = 30
    per_address: int = 600


def browser_hash(browser_id: str) -> str:
    return hashlib.sha256(browser_id.encode()).hexdigest()


def volunteer_hash(salt: str, volunteer_id: int) -> str:
    """A volunteer's name in a project's exports: stable within the project, meaningless outside it."""
    return hashlib.sha256(f"{salt}:{volunteer_id}".encode()).hexdigest()[:16]


class Crowd:
    """The Citizen Science service; every method takes the acting ``Actor`` and the dataset's access facts."""

    def __init__(self, sessions: sessionmaker[Session], annotations: AnnotationStore,
                 limits: RateLimits | None = None) -> None:
        self.sessions = sessions
        self.annotations = annotations
        self.limits = limits or RateLimits()
        # Per process: the task counts by status of each project (display only: progress figures; exact for
        # curators, and dropped when this process changes them), and the records task views are made from (a
        # project's image never changes), kept by the handlers.
        self._counts: dict[int, tuple[float, dict[str, int]]] = {}
        self.views: dict[tuple[int, str], tuple[float, Any]] = {}
        self._browsers: dict[str, int] = {}  # an anonymous browser's hash -> its volunteer id
        self._sqlite_writer = threading.Lock()  # this process's threads take turns for SQLite's write lock

    def _writing(self) -> contextlib.AbstractContextManager[Session]:
        """One write transaction (``annotations.db.writing``), this process's threads taking turns on SQLite."""
        return writing(self.sessions, self._sqlite_writer)

    # Projects (curators)

    def create_project(self, actor: Actor, access: DatasetAccess, body: ProjectIn) -> ProjectRecord:
        require(actor, Action.CURATE, access)
        with self.sessions() as session:
            image = self._reference_image(session, access, body.image)
        layer = self.annotations.create_layer(CONSENSUS_ACTOR, access, self._consensus_layer(body.name, body.workflow))
        try:
            with self._writing() as session:
                project = CrowdProject(dataset_id=access.id, name=body.name, title=body.title,
                                       description=body.description, image_id=image.id, status="active",
                                       weighted=body.weighted, threshold=float(body.threshold),
                                       consensus_layer_id=layer.id, salt=secrets.token_hex(16),
                                       created_by=actor.account_id)
                session.add(project)
                session.flush()
                self._add_workflow(session, project, image, body.workflow, actor, 1)
                return self._record(session, project)
        except IntegrityError:
            self.annotations.delete_layer(CONSENSUS_ACTOR, access, layer.id)
            raise NameTaken(f"there is already a project named {body.name!r}") from None

    def projects(self, actor: Actor, access: DatasetAccess) -> list[ProjectRecord]:
        require(actor, Action.READ, access)
        with self.sessions() as session:
            rows = session.scalars(select(CrowdProject).where(CrowdProject.dataset_id == access.id)
                                   .order_by(CrowdProject.id))
            return [self._record(session, row) for row in rows]

    def project(self, actor: Actor, access: DatasetAccess, name: str) -> ProjectRecord:
        require(actor, Action.READ, access)
        with self.sessions() as session:
            return self._record(session, self._project(session, access, name))

    def change_project(self, actor: Actor, access: DatasetAccess, name: str, changes: ProjectChanges
                       ) -> ProjectRecord:
        """Text, status and consensus settings change in place; a workflow change is a new version."""
        require(actor, Action.CURATE, access)
        with self._writing() as session:
            project = self._project(session, access, name)
            for field in ("title", "description", "status", "weighted"):
                value = getattr(changes, field)
                if value is not None:
                    setattr(project, field, value)
            if changes.threshold is not None:
                project.threshold = float(changes.threshold)
            if changes.workflow is not None:
                current = self._workflow(session, project.id)
                image = self._image(session, project)
                if current.tool != changes.workflow.tool:
                    layer = session.get(AnnotationLayer, project.consensus_layer_id)
                    if layer is not None and layer.generation > 0:
                        raise InvalidProject("the consensus layer already holds marks of tool "
                                             f"{current.tool!r}: make a new project for another tool")
                self._add_workflow(session, project, image, changes.workflow, actor, current.version + 1)
            return self._record(session, project)

    def _add_workflow(self, session: Session, project: CrowdProject, image: Image, workflow: WorkflowIn,
                      actor: Actor, version: int) -> WorkflowVersion:
        shape = xyz(image.shape)
        for step in workflow.tutorial:
            if step.picture is not None and any(
                    high > side for high, side in zip(step.picture.upper, shape, strict=True)):
                raise InvalidProject(f"a tutorial picture's region reaches outside the image ({shape})")
        voxel = xyz(image.voxel_size_nm)
        radius = float(workflow.radius_nm) if workflow.radius_nm is not None else 8 * voxel[0]
        row = WorkflowVersion(project_id=project.id, version=version, instructions=workflow.instructions,
                              tutorial=[step.model_dump() for step in workflow.tutorial], tool=workflow.tool,
                              labels=list(workflow.labels), task_shape=list(workflow.task_shape),
                              redundancy=workflow.redundancy, radius_nm=radius, created_by=actor.account_id)
        session.add(row)
        session.flush()
        return row

    @staticmethod
    def _consensus_layer(name: str, workflow: WorkflowIn) -> LayerIn:
        return LayerIn.model_validate({
            "name": f"{name}-consensus"[:64],
            "description": f"Consensus of the volunteers of project {name!r}: support (volunteers who marked it) "
                           "and agreement (support over the volunteers who did its task).",
            "types": [CONSENSUS_TYPES[workflow.tool]],
            "labels": [{"id": label} for label in workflow.labels],
            "properties": [{"id": "support", "type": "uint16", "description": "volunteers who marked it"},
                           {"id": "agreement", "type": "float32", "description": "support over volunteers who saw it"},
                           {"id": "task", "type": "uint32", "description": "the task it was made in"}],
        })

    @staticmethod
    def _reference_image(session: Session, access: DatasetAccess, name: str) -> Image:
        images = list(session.scalars(select(Image).where(Image.dataset_id == access.id).order_by(Image.id)))
        image = next((i for i in images if i.name == name), None)
        if image is None:
            raise InvalidProject(f"dataset {access.name!r} has no image {name!r}")
        if image.kind != "image":
            raise InvalidProject(f"{name!r} is a segmentation: volunteers annotate an image")
        dataset = session.get(Dataset, access.id)
        assert dataset is not None
        pictures = [i for i in images if i.kind == "image"]
        reference = next((i for i in images if i.name == dataset.reference_image), None) or next(
            (i for i in pictures if i.modality == "EM"), pictures[0])
        if image.id != reference.id:
            raise InvalidProject(f"volunteers annotate the dataset's reference image ({reference.name!r}), whose "
                                 "space the consensus layer is drawn in")
        return image

    # Tasks (curators)

    def generate_tasks(self, actor: Actor, access: DatasetAccess, name: str, body: TasksIn) -> int:
        """Tile a region (default: the whole image) with the current workflow's task shape; regions at the edge
        are clipped to the image. Returns how many tasks were made."""
        require(actor, Action.CURATE, access)
        with self._writing() as session:
            project = self._project(session, access, name)
            shape = xyz(self._image(session, project).shape)
            lower = body.lower or [0, 0, 0]
            upper = body.upper or list(shape)
            check_region(lower, upper, shape)
            step = self._workflow(session, project.id).task_shape
            counts = [-(-(high - low) // s) for low, high, s in zip(lower, upper, step, strict=True)]
            total = counts[0] * counts[1] * counts[2]
            if total > MAX_TASKS:
                raise InvalidProject(f"that makes {total} tasks; at most {MAX_TASKS} at once (a larger task shape "
                                     "or a smaller region)")
            rng = random.Random()
            rows = []
            for k in range(counts[2]):
                for j in range(counts[1]):
                    for i in range(counts[0]):
                        low = [lower[0] + i * step[0], lower[1] + j * step[1], lower[2] + k * step[2]]
                        high = [min(a + s, u) for a, s, u in zip(low, step, upper, strict=True)]
                        rows.append({"project_id": project.id, "lower": low, "upper": high, "status": "active",
                                     "priority": body.priority, "sort_key": rng.random(), "gold": False,
                                     "handed_out": 0, "submissions": 0, "created_at": utcnow()})
            session.execute(CrowdTask.__table__.insert(), rows)
        self._forget_counts(project.id)
        return total

    def add_gold(self, actor: Actor, access: DatasetAccess, name: str, body: GoldTaskIn) -> TaskRecord:
        require(actor, Action.CURATE, access)
        with self._writing() as session:
            project = self._project(session, access, name)
            shape = xyz(self._image(session, project).shape)
            check_region(body.lower, body.upper, shape)
            workflow = self._workflow(session, project.id)
            answer = check_marks(body.answer, workflow.tool, workflow.labels, body.lower, body.upper)
            task = CrowdTask(project_id=project.id, lower=body.lower, upper=body.upper, status="active", priority=0,
                             sort_key=random.random(), gold=True, answer=answer, handed_out=0, submissions=0)
            session.add(task)
            session.flush()
            return task_record(task)

    def tasks(self, actor: Actor, access: DatasetAccess, name: str, status: str | None = None,
              gold: bool | None = None, offset: int = 0, limit: int = 100) -> TaskPage:
        require(actor, Action.CURATE, access)
        with self.sessions() as session:
            project = self._project(session, access, name)
            where = [CrowdTask.project_id == project.id]
            if status is not None:
                where.append(CrowdTask.status == status)
            if gold is not None:
                where.append(CrowdTask.gold == gold)
            total = session.scalar(select(func.count()).select_from(CrowdTask).where(*where)) or 0
            rows = session.scalars(select(CrowdTask).where(*where).order_by(CrowdTask.id).offset(offset).limit(limit))
            return TaskPage(tasks=[task_record(row) for row in rows], total=total)

    def change_task(self, actor: Actor, access: DatasetAccess, name: str, task_id: int, changes: TaskChanges
                    ) -> TaskRecord:
        """Re-prioritise, pause, retire or un-retire a task."""
        require(actor, Action.CURATE, access)
        with self._writing() as session:
            project = self._project(session, access, name)
            task = self._task(session, project.id, task_id)
            if changes.priority is not None:
                task.priority = changes.priority
            if changes.status is not None and changes.status != task.status:
                task.status = changes.status
                task.retired_at = utcnow() if changes.status == "retired" else None
            record = task_record(task)
        self._forget_counts(project.id)
        return record

    # Volunteers

    def volunteer(self, actor: Actor, browser_id: str | None) -> int:
        """The volunteer id of an account, or of an anonymous browser (its cookie's id); made on first use."""
        if actor.account_id is not None:
            where, values = Volunteer.account_id == actor.account_id, {"account_id": actor.account_id}
        elif browser_id:
            digest = browser_hash(browser_id)
            known = self._browsers.get(digest)
            if known is not None:
                return known
            where, values = Volunteer.browser_hash == digest, {"browser_hash": digest}
        else:
            raise InvalidProject("an anonymous volunteer needs the browser identity cookie (enable cookies)")
        for _ in range(2):
            with self.sessions() as session:
                found = session.scalar(select(Volunteer.id).where(where))
                if found is not None:
                    return self._remember(browser_id, found)
            try:
                with self.sessions.begin() as session:
                    row = Volunteer(**values)
                    session.add(row)
                    session.flush()
                    made = row.id
                return self._remember(browser_id, made)
            except IntegrityError:
                continue  # made by a concurrent request of the same volunteer
        raise RuntimeError("volunteer could not be made")

    def _remember(self, browser_id: str | None, volunteer_id: int) -> int:
        """An anonymous browser's volunteer id, kept by the process (the row is never changed or removed)."""
        if browser_id:
            if len(self._browsers) >= BROWSERS_KEPT:
                self._browsers.clear()
            self._browsers[browser_hash(browser_id)] = volunteer_id
        return volunteer_id

    def task_image(self, actor: Actor, access: DatasetAccess, name: str) -> str:
        """The name of the image a project's tasks show (set when the project is made, never changed)."""
        require(actor, Action.READ, access)
        with self.sessions() as session:
            image = session.scalar(select(Image.name).join(CrowdProject, CrowdProject.image_id == Image.id)
                                   .where(CrowdProject.dataset_id == access.id, CrowdProject.name == name))
        if image is None:
            raise ProjectNotFound(f"dataset {access.name!r} has no project {name!r}")
        return image

    def progress(self, actor: Actor, access: DatasetAccess, name: str, volunteer_id: int) -> ProgressRecord:
        require(actor, Action.READ, access)
        with self.sessions() as session:
            project = self._project(session, access, name)
            return self._progress(session, project.id, volunteer_id)

    def tutorial_done(self, actor: Actor, access: DatasetAccess, name: str, volunteer_id: int) -> ProgressRecord:
        require(actor, Action.READ, access)
        with self._writing() as session:
            project = self._project(session, access, name)
            participation = self._participation(session, project.id, volunteer_id)
            participation.tutorial_done_at = participation.tutorial_done_at or utcnow()
            session.flush()
            return self._progress(session, project.id, volunteer_id)

    def next_task(self, actor: Actor, access: DatasetAccess, name: str, volunteer_id: int,
                  rng: random.Random | None = None) -> TaskOffer | None:
        """The volunteer's open task, else a new one (None: nothing left for them)."""
        require(actor, Action.READ, access)
        with self._writing() as session:
            project = self._project(session, access, name)
            return self._next(session, project, volunteer_id, rng or random.Random())

    def next_task_and_progress(self, actor: Actor, access: DatasetAccess, name: str, volunteer_id: int,
                               rng: random.Random | None = None) -> tuple[TaskOffer | None, ProgressRecord]:
        """``next_task`` and then the volunteer's progress, in the same transaction (what a task page asks). The
        volunteer's open task, the usual answer (a submission hands out the next one), needs no write."""
        require(actor, Action.READ, access)
        with self.sessions() as session:
            project = self._project(session, access, name)
            offer = self._open_offer(session, project, volunteer_id, utcnow()) if project.status == "active" else None
            if offer is not None:
                return offer, self._progress(session, project.id, volunteer_id)
        with self._writing() as session:
            project = self._project(session, access, name)
            offer = self._next(session, project, volunteer_id, rng or random.Random())
            return offer, self._progress(session, project.id, volunteer_id)

    def submit(self, actor: Actor, access: DatasetAccess, name: str, task_id: int, volunteer_id: int,
               body: SubmissionIn, address: str | None = None, rng: random.Random | None = None) -> SubmittedRecord:
        """Record a submission (all or nothing), then hand out the next task in the same answer."""
        require(actor, Action.READ, access)
        now = utcnow()
        with self._writing() as session:
            project = self._project(session, access, name)
            self._check_rate(session, volunteer_id, address, now)
            task = self._task(session, project.id, task_id)
            # Locked (PostgreSQL): the same answer sent twice at once is stored once, the second told it was.
            assignment = session.scalar(select(Assignment).where(Assignment.task_id == task.id,
                                                                 Assignment.volunteer_id == volunteer_id)
                                        .with_for_update())
            if assignment is None:
                raise TaskUnavailable(f"task {task_id} was not given to you: ask for your next task")
            if assignment.status == "submitted":
                raise TaskUnavailable(f"you have already answered task {task_id}")
            if project.status != "active":
                raise TaskUnavailable(f"project {project.name!r} is {project.status}: submissions are closed")
            if task.status != "active":
                raise TaskUnavailable(f"task {task_id} is {task.status}: thank you, it needs no more answers")
            workflow = session.get(WorkflowVersion, assignment.workflow_version_id)
            assert workflow is not None
            marks = check_marks(body.marks, workflow.tool, workflow.labels, task.lower, task.upper)
            late = assignment.status == "expired"  # it takes a place again if one is free
            if late and not task.gold and not self._take_place(session, task.id, workflow.redundancy):
                raise TaskUnavailable(f"task {task_id} was given to someone else after {ASSIGNMENT_MINUTES} "
                                          "minutes without an answer")
            assignment.status = "submitted"
            feedback = None
            gold_f1 = None
            if task.gold:
                feedback = gold_feedback(workflow, task, marks, xyz(self._image(session, project).voxel_size_nm))
                gold_f1 = feedback.f1
            submission = Submission(assignment_id=assignment.id, project_id=project.id, task_id=task.id,
                                    volunteer_id=volunteer_id, workflow_version_id=workflow.id,
                                    nothing_here=body.nothing_here, marks=marks, gold_f1=gold_f1,
                                    started_at=body.started_at or assignment.assigned_at, created_at=now)
            session.add(submission)
            retired = False
            submitted = session.execute(update(CrowdTask).where(CrowdTask.id == task.id)
                                        .values(submissions=CrowdTask.submissions + 1)
                                        .returning(CrowdTask.submissions)).scalar_one()
            set_committed_value(task, "submissions", submitted)
            if not task.gold and task.submissions >= workflow.redundancy:
                task.status, task.retired_at, retired = "retired", now, True
            participation = self._participation(session, project.id, volunteer_id)
            participation.submitted += 1
            participation.last_seen_at = now
            if gold_f1 is not None:
                participation.gold_seen += 1
                participation.gold_f1 = [*participation.gold_f1, gold_f1]
                participation.quality = cs.volunteer_quality(participation.gold_f1, participation.consensus_f1)
            session.flush()
            submission_id = submission.id
            if retired:
                self._forget_counts(project.id)
            offer = self._next(session, project, volunteer_id, rng or random.Random())
            progress = self._progress(session, project.id, volunteer_id)
        if retired:
            with contextlib.suppress(Exception):  # recomputed on request if this fails; the submission is kept
                self.consensus_for_task(access, project.id, task_id)
        return SubmittedRecord(submission=submission_id, task=task_id, retired=retired, feedback=feedback,
                               next=offer, progress=progress)

    def _check_rate(self, session: Session, volunteer_id: int, address: str | None, now: datetime) -> None:
        since = now - timedelta(seconds=RATE_WINDOW_SECONDS)
        subjects = []
        if self.limits.per_volunteer:
            subjects.append((f"volunteer:{volunteer_id}", self.limits.per_volunteer, "you"))
        if address and self.limits.per_address:
            subjects.append((f"address:{hashlib.sha256(address.encode()).hexdigest()[:32]}",
                             self.limits.per_address, "your network address"))
        for subject, limit, who in subjects:
            times = session.scalars(select(RateEvent.at).where(RateEvent.subject == subject, RateEvent.at > since)
                                    .order_by(RateEvent.at).limit(limit)).all()
            if len(times) >= limit:
                oldest = as_utc(times[0])
                retry = max(1.0, (oldest + timedelta(seconds=RATE_WINDOW_SECONDS) - now).total_seconds())
                raise SubmittingTooFast(f"{who} sent {limit} submissions in the last minute; wait a little",
                                        retry_after=retry)
            session.add(RateEvent(subject=subject, at=now))
        if random.random() < 0.01:  # old events go now and then
            session.execute(delete(RateEvent).where(RateEvent.at < now - timedelta(hours=1)))

    def _open_offer(self, session: Session, project: CrowdProject, volunteer_id: int, now: datetime
                    ) -> TaskOffer | None:
        """The volunteer's open assignment in the project, if any, as an offer (one query)."""
        found = session.execute(
            select(Assignment, CrowdTask.lower, CrowdTask.upper, WorkflowVersion)
            .join(CrowdTask, CrowdTask.id == Assignment.task_id)
            .join(WorkflowVersion, WorkflowVersion.id == Assignment.workflow_version_id)
            .where(Assignment.volunteer_id == volunteer_id, Assignment.project_id == project.id,
                   Assignment.status == "open", Assignment.expires_at > now, CrowdTask.status == "active")
            .order_by(Assignment.id.desc()).limit(1)).first()
        if found is None:
            return None
        assignment, lower, upper, workflow = found
        return _offer(assignment, lower, upper, workflow)

    def _next(self, session: Session, project: CrowdProject, volunteer_id: int, rng: random.Random
              ) -> TaskOffer | None:
        if project.status != "active":
            return None
        now = utcnow()
        offer = self._open_offer(session, project, volunteer_id, now)
        if offer is not None:
            return offer
        workflow = self._workflow(session, project.id)
        self._expire(session, project.id, now)
        participation = self._participation(session, project.id, volunteer_id)
        gold_rate = GOLD_EARLY if participation.submitted < GOLD_EARLY_COUNT else GOLD_LATE
        order = [True, False] if rng.random() < gold_rate else [False, True]
        for gold in order:
            while True:
                candidates = self._candidates(session, project.id, volunteer_id, gold, workflow.redundancy)
                if not candidates:
                    break
                for task_id in candidates:
                    region = self._take_place(session, task_id, workflow.redundancy, gold)
                    if region is not None:
                        assignment = Assignment(project_id=project.id, task_id=task_id, volunteer_id=volunteer_id,
                                                workflow_version_id=workflow.id, status="open", assigned_at=now,
                                                expires_at=now + timedelta(minutes=ASSIGNMENT_MINUTES))
                        session.add(assignment)
                        session.flush()
                        return _offer(assignment, *region, workflow)
                # every candidate filled up meanwhile (another process): look again
        return None

    @staticmethod
    def _candidates(session: Session, project_id: int, volunteer_id: int, gold: bool, redundancy: int
                    ) -> list[int]:
        """Tasks this volunteer may be given, best first. PostgreSQL: one, locked (``FOR UPDATE SKIP LOCKED``), so
        concurrent hand-outs take different tasks; when every candidate is locked by one of them, it looks again
        until they end (they take a place or not), rather than answer "nothing left" while a task may have room."""
        seen = exists().where(Assignment.task_id == CrowdTask.id, Assignment.volunteer_id == volunteer_id)
        query = (select(CrowdTask.id)
                 .where(CrowdTask.project_id == project_id, CrowdTask.gold == gold, CrowdTask.status == "active",
                        ~seen)
                 # Both descending: the pick index read backwards, stopping at the first task that fits (an
                 # ascending sort_key made every hand-out sort all the project's active tasks).
                 .order_by(CrowdTask.priority.desc(), CrowdTask.sort_key.desc()).limit(1))
        if not gold:
            query = query.where(CrowdTask.handed_out < redundancy + SLACK)
        if session.connection().dialect.name != "postgresql":
            return list(session.scalars(query.limit(8)))  # SQLite: this transaction holds the write lock
        deadline = time.monotonic() + LOCKED_WAIT_SECONDS
        pause = 0.002
        while True:
            found = list(session.scalars(query.with_for_update(skip_locked=True, of=CrowdTask)))
            # Read committed: each statement sees what has been committed when it starts.
            if found or session.scalar(query) is None or time.monotonic() > deadline:
                return found
            time.sleep(pause)  # another hand-out holds the candidates: it commits within milliseconds
            pause = min(pause * 2, 0.05)

    @staticmethod
    def _take_place(session: Session, task_id: int, redundancy: int, gold: bool = False
                    ) -> tuple[list[Any], list[Any]] | None:
        """One more assignment of the task if it has a free place (a gold task always has one): the only way
        ``handed_out`` grows. Returns the task's region (lower, upper), or None when it had no place."""
        query = update(CrowdTask).where(CrowdTask.id == task_id, CrowdTask.status == "active")
        if not gold:
            query = query.where(CrowdTask.handed_out < redundancy + SLACK)
        row = session.execute(query.values(handed_out=CrowdTask.handed_out + 1)
                              .returning(CrowdTask.lower, CrowdTask.upper)
                              .execution_options(synchronize_session=False)).first()
        return None if row is None else (row[0], row[1])

    @staticmethod
    def _expire(session: Session, project_id: int, now: datetime) -> None:
        """Open assignments past their time free their task's place (a bounded batch per call)."""
        stale = session.scalars(select(Assignment).where(
            Assignment.project_id == project_id, Assignment.status == "open", Assignment.expires_at <= now)
            .limit(EXPIRE_BATCH)).all()
        for assignment in stale:
            done = session.execute(update(Assignment).where(Assignment.id == assignment.id,
                                                            Assignment.status == "open").values(status="expired"))
            if done.rowcount:
                session.execute(update(CrowdTask).where(CrowdTask.id == assignment.task_id)
                                .values(handed_out=CrowdTask.handed_out - 1))

    # Consensus

    def consensus_for_task(self, access: DatasetAccess, project_id: int, task_id: int) -> int:
        """Compute one task's consensus into the consensus layer (replacing what it had there); returns how many
        consensus marks it has. Each volunteer's agreement with it updates their quality."""
        with self.sessions() as session:
            project = session.get(CrowdProject, project_id)
            task = session.get(CrowdTask, task_id)
            if project is None or task is None or task.project_id != project_id:
                raise TaskNotFound(f"no task {task_id}")
            image = self._image(session, project)
            rows = session.execute(select(Submission.volunteer_id, Submission.marks, WorkflowVersion.tool,
                                          WorkflowVersion.radius_nm)
                                   .join(WorkflowVersion, WorkflowVersion.id == Submission.workflow_version_id)
                                   .where(Submission.task_id == task_id)).all()
            weights = {}
            if project.weighted:
                weights = dict(session.execute(select(Participation.volunteer_id, Participation.quality)
                                               .where(Participation.project_id == project_id)).all())
            workflow = self._workflow(session, project_id)
            old = list((task.consensus or {}).get("ids", []))
            layer_id, threshold = project.consensus_layer_id, project.threshold
        voxel = xyz(image.voxel_size_nm)
        seen_by = {row.volunteer_id: float(weights.get(row.volunteer_id, 1.0)) for row in rows}
        marks = [(row.volunteer_id, mark) for row in rows if row.tool == workflow.tool for mark in row.marks]
        found = compute_consensus(workflow.tool, marks, seen_by, voxel, workflow.radius_nm, threshold, task)
        items = [consensus_annotation(workflow.tool, mark, task_id) for mark in found]
        if layer_id is None:
            return len(found)
        for annotation_id in old:
            with contextlib.suppress(AnnotationNotFound):
                self.annotations.delete(CONSENSUS_ACTOR, access, layer_id, annotation_id)
        created = self.annotations.create_many(CONSENSUS_ACTOR, access, layer_id, items, max_batch=None)
        agreement_f1 = volunteer_agreement(workflow.tool, marks, found, seen_by, voxel, workflow.radius_nm, task)
        with self._writing() as session:
            task = session.get(CrowdTask, task_id)
            assert task is not None
            task.consensus = {"ids": created.ids, "agreement": [float(mark.agreement) for mark in found]}
            for volunteer_id, f1 in sorted(agreement_f1.items()):  # one lock order for concurrent consensus
                participation = self._participation(session, project_id, volunteer_id)
                participation.consensus_f1 = [*participation.consensus_f1, f1][-200:]
                participation.quality = cs.volunteer_quality(participation.gold_f1, participation.consensus_f1)
        return len(found)

    def recompute(self, actor: Actor, access: DatasetAccess, name: str) -> int:
        """Consensus of every retired task again (after a change of weighting or threshold); returns the marks."""
        require(actor, Action.CURATE, access)
        with self.sessions() as session:
            project = self._project(session, access, name)
            ids = list(session.scalars(select(CrowdTask.id).where(CrowdTask.project_id == project.id,
                                                                  CrowdTask.gold.is_(False),
                                                                  CrowdTask.status == "retired")))
        return sum(self.consensus_for_task(access, project.id, task_id) for task_id in ids)

    # Dashboard and exports

    def stats(self, actor: Actor, access: DatasetAccess, name: str, hours: int = 48) -> Stats:
        require(actor, Action.CURATE, access)
        now = utcnow()
        with self.sessions() as session:
            project = self._project(session, access, name)
            counts = self._task_counts(session, project.id, fresh=True)
            gold = session.scalar(select(func.count()).select_from(CrowdTask).where(
                CrowdTask.project_id == project.id, CrowdTask.gold.is_(True))) or 0
            submissions = session.scalar(select(func.count()).select_from(Submission).where(
                Submission.project_id == project.id)) or 0
            volunteers = session.scalar(select(func.count()).select_from(Participation).where(
                Participation.project_id == project.id, Participation.submitted > 0)) or 0

            def active(since: datetime) -> int:
                return session.scalar(select(func.count(func.distinct(Submission.volunteer_id))).where(
                    Submission.project_id == project.id, Submission.created_at >= since)) or 0

            start = (now - timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)
            times = session.scalars(select(Submission.created_at).where(
                Submission.project_id == project.id, Submission.created_at >= start)).all()
            agreements = [value for consensus in session.scalars(select(CrowdTask.consensus).where(
                CrowdTask.project_id == project.id, CrowdTask.consensus.is_not(None)))
                for value in (consensus or {}).get("agreement", [])]
            per_hour = Counter(int((as_utc(t) - start).total_seconds() // 3600) for t in times)
            histogram, edges = np.histogram(agreements, bins=AGREEMENT_BINS, range=(0.0, 1.0))
            return Stats(tasks=sum(counts.values()), retired=counts.get("retired", 0), active=counts.get("active", 0),
                         paused=counts.get("paused", 0), gold=gold, submissions=submissions, volunteers=volunteers,
                         active_volunteers_24h=active(now - timedelta(hours=24)),
                         active_volunteers_1h=active(now - timedelta(hours=1)),
                         per_hour=[HourCount(hour=start + timedelta(hours=h), submissions=per_hour.get(h, 0))
                                   for h in range(hours)],
                         agreement_bins=[float(edge) for edge in edges], agreement_counts=[int(c) for c in histogram],
                         consensus_marks=len(agreements))

    def export_rows(self, actor: Actor, access: DatasetAccess, name: str) -> Iterable[dict[str, Any]]:
        """Every submission with what an export needs; volunteers only as salted hashes."""
        require(actor, Action.CURATE, access)
        with self.sessions() as session:
            project = self._project(session, access, name)
            image = self._image(session, project)
            dataset = session.get(Dataset, project.dataset_id)
            assert dataset is not None
            rows = session.execute(
                select(Submission, CrowdTask.lower, CrowdTask.upper, CrowdTask.gold, WorkflowVersion.version,
                       WorkflowVersion.labels, Volunteer.account_id)
                .join(CrowdTask, CrowdTask.id == Submission.task_id)
                .join(WorkflowVersion, WorkflowVersion.id == Submission.workflow_version_id)
                .join(Volunteer, Volunteer.id == Submission.volunteer_id)
                .where(Submission.project_id == project.id).order_by(Submission.id)).all()
            base = {"project": project.name, "project_id": project.id, "dataset": dataset.name, "image": image.name,
                    "voxel_size_nm": list(xyz(image.voxel_size_nm)), "title": project.title}
            out = []
            for submission, lower, upper, gold, version, labels, account_id in rows:
                out.append({**base, "id": submission.id,
                            "volunteer": volunteer_hash(project.salt, submission.volunteer_id),
                            "signed_in": account_id is not None, "workflow_version": version, "labels": labels,
                            "created_at": as_utc(submission.created_at), "started_at": as_utc(submission.started_at),
                            "task_id": submission.task_id, "gold": gold, "lower": lower, "upper": upper,
                            "nothing_here": submission.nothing_here, "marks": submission.marks})
            return out

    def consensus_rows(self, actor: Actor, access: DatasetAccess, name: str) -> tuple[list[float], list[Any]]:
        """The consensus layer's marks (nm), with the image's voxel size to give voxels too."""
        require(actor, Action.CURATE, access)
        with self.sessions() as session:
            project = self._project(session, access, name)
            voxel = list(xyz(self._image(session, project).voxel_size_nm))
            layer_id = project.consensus_layer_id
        if layer_id is None:
            return voxel, []
        from annotations.annotation_store import AnnotationQuery

        records, after = [], 0
        while True:
            page = self.annotations.query(CONSENSUS_ACTOR, access, layer_id,
                                          AnnotationQuery(after=after, limit=10_000))
            records.extend(page.annotations)
            if page.next_after is None:
                return voxel, records
            after = page.next_after

    # Look-ups

    @staticmethod
    def _project(session: Session, access: DatasetAccess, name: str) -> CrowdProject:
        project = session.scalar(select(CrowdProject).where(CrowdProject.dataset_id == access.id,
                                                            CrowdProject.name == name))
        if project is None:
            raise ProjectNotFound(f"dataset {access.name!r} has no project {name!r}")
        return project

    @staticmethod
    def _task(session: Session, project_id: int, task_id: int) -> CrowdTask:
        task = session.get(CrowdTask, task_id)
        if task is None or task.project_id != project_id:
            raise TaskNotFound(f"the project has no task {task_id}")
        return task

    @staticmethod
    def _workflow(session: Session, project_id: int) -> WorkflowVersion:
        row = session.scalar(select(WorkflowVersion).where(WorkflowVersion.project_id == project_id)
                             .order_by(WorkflowVersion.version.desc()).limit(1))
        assert row is not None
        return row

    @staticmethod
    def _image(session: Session, project: CrowdProject) -> Image:
        image = session.get(Image, project.image_id)
        assert image is not None
        return image

    @staticmethod
    def _participation(session: Session, project_id: int, volunteer_id: int) -> Participation:
        row = session.get(Participation, (project_id, volunteer_id))
        if row is None:
            row = Participation(project_id=project_id, volunteer_id=volunteer_id, submitted=0, gold_seen=0,
                                gold_f1=[], consensus_f1=[], quality=0.5, created_at=utcnow(),
                                last_seen_at=utcnow())
            session.add(row)
            session.flush()
        return row

    def _task_counts(self, session: Session, project_id: int, fresh: bool = False) -> dict[str, int]:
        """The project's tasks (not gold) by status; up to ``COUNTS_SECONDS`` old unless ``fresh``."""
        now = time.monotonic()
        cached = self._counts.get(project_id)
        if not fresh and cached is not None and cached[0] > now:
            return cached[1]
        counts = dict(session.execute(select(CrowdTask.status, func.count()).where(
            CrowdTask.project_id == project_id, CrowdTask.gold.is_(False)).group_by(CrowdTask.status)).all())
        self._counts[project_id] = (now + COUNTS_SECONDS, counts)
        return counts

    def _forget_counts(self, project_id: int) -> None:
        self._counts.pop(project_id, None)

    def _progress(self, session: Session, project_id: int, volunteer_id: int) -> ProgressRecord:
        row = session.get(Participation, (project_id, volunteer_id))
        counts = self._task_counts(session, project_id)
        return ProgressRecord(submitted=row.submitted if row else 0, gold_seen=row.gold_seen if row else 0,
                              tutorial_done=bool(row and row.tutorial_done_at), retired=counts.get("retired", 0),
                              tasks=sum(counts.values()))

    def _record(self, session: Session, project: CrowdProject) -> ProjectRecord:
        dataset = session.get(Dataset, project.dataset_id)
        image = self._image(session, project)
        assert dataset is not None
        counts = self._task_counts(session, project.id, fresh=True)
        return ProjectRecord(id=project.id, name=project.name, title=project.title, description=project.description,
                             dataset=dataset.name, dataset_id=dataset.id, image=image.name, status=project.status,
                             weighted=project.weighted, threshold=project.threshold,
                             consensus_layer_id=project.consensus_layer_id,
                             workflow=workflow_record(self._workflow(session, project.id)),
                             tasks=sum(counts.values()), retired=counts.get("retired", 0),
                             created_at=as_utc(project.created_at))


def xyz(values: Sequence[Any]) -> tuple[Any, Any, Any]:
    """(z, y, x) as the catalog stores it → (x, y, z)."""
    return values[2], values[1], values[0]


def check_region(lower: Sequence[int], upper: Sequence[int], shape: Sequence[int]) -> None:
    """InvalidProject unless [lower, upper) is a non-empty box within an image of ``shape`` (x y z voxels)."""
    if any(low < 0 or high > side or high <= low for low, high, side in zip(lower, upper, shape, strict=True)):
        raise InvalidProject(f"the region must lie within the image (x y z sizes {tuple(shape)}), lower < upper")


def as_utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _offer(assignment: Assignment, lower: list[Any], upper: list[Any], workflow: WorkflowVersion) -> TaskOffer:
    return TaskOffer(task=assignment.task_id, assignment=assignment.id, lower=lower, upper=upper,
                     slice=(lower[2] + upper[2] - 1) // 2, workflow=workflow_record(workflow),
                     expires_at=as_utc(assignment.expires_at))


def task_record(task: CrowdTask) -> TaskRecord:
    return TaskRecord(id=task.id, lower=task.lower, upper=task.upper, status=task.status, priority=task.priority,
                      gold=task.gold, handed_out=task.handed_out, submissions=task.submissions)


def workflow_record(row: WorkflowVersion) -> WorkflowRecord:
    return WorkflowRecord.model_validate({
        "id": row.id, "version": row.version, "instructions": row.instructions, "tutorial": row.tutorial,
        "tool": row.tool, "labels": row.labels, "task_shape": row.task_shape, "redundancy": row.redundancy,
        "radius_nm": row.radius_nm, "created_at": as_utc(row.created_at)})


def _nm(point: Sequence[float], voxel: Sequence[float]) -> tuple[float, float, float]:
    return (float(point[0]) * voxel[0], float(point[1]) * voxel[1], float(point[2]) * voxel[2])


def _slice_grid(task_lower: Sequence[int], task_upper: Sequence[int], voxel: Sequence[float]) -> cs.SliceGrid:
    """The task region's pixel grid in nm (pixel centres at voxel + 0.5)."""
    return cs.SliceGrid(origin=((task_lower[0] + 0.5) * voxel[0], (task_lower[1] + 0.5) * voxel[1]),
                        pixel_nm=(voxel[0], voxel[1]),
                        shape=(task_upper[1] - task_lower[1], task_upper[0] - task_lower[0]))


def _marks_for(tool: str, marks: Sequence[tuple[int, dict[str, Any]]], voxel: Sequence[float]) -> list[Any]:
    found: list[Any] = []
    for volunteer, mark in marks:
        if tool == "point":
            found.append(cs.PointMark(volunteer, _nm(mark["point"], voxel), mark["label"]))
        elif tool == "box":
            found.append(cs.BoxMark(volunteer, _nm(mark["lower"], voxel), _nm(mark["upper"], voxel), mark["label"]))
        else:
            found.append(cs.OutlineMark(volunteer, tuple((x * voxel[0], y * voxel[1]) for x, y in mark["points"]),
                                        mark["z"] * voxel[2], mark["label"]))
    return found


def compute_consensus(tool: str, marks: Sequence[tuple[int, dict[str, Any]]], seen_by: dict[int, float],
                      voxel: Sequence[float], radius_nm: float, threshold: float, task: CrowdTask) -> list[Any]:
    given = _marks_for(tool, marks, voxel)
    least = min(MIN_SUPPORT, len(seen_by))  # a project of redundancy 1 takes its one volunteer's marks
    if tool == "point":
        return cs.point_consensus(given, seen_by, radius_nm, threshold, min_support=least)
    if tool == "box":
        return cs.box_consensus(given, seen_by, threshold=threshold, min_support=least)
    return cs.outline_consensus(given, seen_by, _slice_grid(task.lower, task.upper, voxel), threshold,
                                min_support=least)


def consensus_annotation(tool: str, mark: Any, task_id: int) -> AnnotationIn:
    properties = {"support": min(int(mark.support), 65535), "agreement": float(mark.agreement), "task": task_id}
    if tool == "point":
        geometry: dict[str, Any] = {"type": "point", "point": list(mark.position)}
    elif tool == "box":
        geometry = {"type": "axis_aligned_bounding_box", "point_a": list(mark.lower), "point_b": list(mark.upper)}
    else:
        points = [[float(x), float(y), float(mark.z)] for x, y in mark.points]
        geometry = {"type": "polyline", "points": [*points, points[0]]}
    return AnnotationIn.model_validate({**geometry, "label": mark.label, "properties": properties})


def volunteer_agreement(tool: str, marks: Sequence[tuple[int, dict[str, Any]]], found: Sequence[Any],
                        seen_by: dict[int, float], voxel: Sequence[float], radius_nm: float, task: CrowdTask
                        ) -> dict[int, float]:
    """Each volunteer's F1 against the consensus of a task they did."""
    if tool == "point":
        expert: list[Any] = [cs.PointMark(0, mark.position, mark.label) for mark in found]
    elif tool == "box":
        expert = [cs.BoxMark(0, mark.lower, mark.upper, mark.label) for mark in found]
    else:
        expert = [cs.OutlineMark(0, mark.points, mark.z, mark.label) for mark in found]
    return {volunteer: float(score(tool, _marks_for(tool, [m for m in marks if m[0] == volunteer], voxel), expert,
                                   radius_nm, task, voxel).f1)
            for volunteer in seen_by}


def score(tool: str, own: Sequence[Any], expert: Sequence[Any], radius_nm: float, task: CrowdTask,
          voxel: Sequence[float]) -> cs.Score:
    """``own`` marks against ``expert`` ones with the tool's measure (outlines on the task region's pixel grid)."""
    if tool == "point":
        return cs.score_points(own, expert, radius_nm)
    if tool == "box":
        return cs.score_boxes(own, expert)
    return cs.score_outlines(own, expert, _slice_grid(task.lower, task.upper, voxel))


def gold_feedback(workflow: WorkflowVersion, task: CrowdTask, marks: list[dict[str, Any]], voxel: Sequence[float]
                  ) -> Feedback:
    """How a gold-standard answer compares with the expert's."""
    own = _marks_for(workflow.tool, [(1, mark) for mark in marks], voxel)
    expert = _marks_for(workflow.tool, [(0, mark) for mark in task.answer or []], voxel)
    result = score(workflow.tool, own, expert, workflow.radius_nm, task, voxel)
    expected = len(task.answer or [])
    if expected == 0:
        message = "Correct: there was nothing to mark here." if not marks else \
            "There was nothing to mark here; look again at the tutorial's examples."
    elif result.f1 >= 0.8:
        message = f"Well done: you found {result.tp} of the {expected} an expert marked."
    else:
        message = f"An expert marked {expected} here; you matched {result.tp}. Their marks are shown."
    return Feedback(precision=float(result.precision), recall=float(result.recall), f1=float(result.f1),
                    expected=list(task.answer or []), message=message)

