"""Citizen Science hand-out and submissions under concurrency, over HTTP against real server processes.

* Eight server processes on one database (PostgreSQL and SQLite) and sixty simulated volunteers starting at once
  on a project of six tasks with a redundancy of three: no task is ever out with more volunteers than its
  redundancy, no volunteer gets a task twice, a submission sent twice at once is stored once (one 201, one 409),
  every acknowledged submission is in the database exactly once, every place is taken in the end (nobody is told
  "nothing left" for good while a task has room), and the counts the database keeps (``handed_out``,
  ``submissions``, retirement, each volunteer's ``submitted``) agree with its rows.
* A server killed with SIGKILL while twelve volunteers submit as fast as they can loses no acknowledged
  submission: after a restart on the same database every submission answered 201 is there, in the export too;
  a submission in flight at the kill is there whole or not at all; the counts agree with the rows.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, text

from annotations.accounts import Accounts
from annotations.catalog import Catalog
from annotations.db import make_engine, make_sessions, migrate
from tests.conftest import Server, fresh_database, kill_while_writing, small_u8, start_server, stop_server
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource
from viewer.registration import add_existing

DATASET = "crowd"
LABELS = ["mitochondrion", "synapse"]
SHAPE_XYZ = (100, 80, 33)  # small_u8(), whose array is z y x


@dataclass
class Site:
    """A data directory and database with one small uint8 image as the dataset's reference, and an admin."""

    root: Path
    url: str
    token: str
    server: Server | None = None

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, *extra: str, env: dict[str, str] | None = None) -> Server:
        self.server = start_server(self.root, "--database-url", self.url, *extra, env=env)
        return self.server

    def project(self, name: str, task_shape: list[int], redundancy: int) -> tuple[int, int]:
        """A point-tool project tiled into tasks; returns (its id, how many tasks)."""
        assert self.server is not None
        base = f"{self.server.url}/api/datasets/{DATASET}/projects"
        made = requests.post(base, headers=self.admin, timeout=60, json={
            "name": name, "title": f"Concurrency {name}", "image": "em",
            "workflow": {"tool": "point", "labels": LABELS, "task_shape": task_shape, "redundancy": redundancy,
                         "instructions": "Click every mitochondrion."}})
        assert made.status_code == 201, made.text
        tiled = requests.post(f"{base}/{name}/tasks", headers=self.admin, json={}, timeout=60)
        assert tiled.status_code == 201, tiled.text
        return made.json()["id"], tiled.json()["created"]


@pytest.fixture(params=["postgresql", "sqlite"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    with fresh_database(request.param, tmp_path) as url:
        engine = make_engine(url)
        try:
            migrate(engine)
            sessions = make_sessions(engine)
            store = tmp_path / "stores" / "em.ome.zarr"
            write_pyramid(ArraySource(small_u8()), store, voxel_size=(8.0, 8.0, 8.0),
                          options=PyramidOptions(chunk=32, name="em"))
            add_existing(Catalog(sessions), str(store), DATASET, name="em")
            accounts = Accounts(sessions)
            accounts.create("admin", "admin")
            token, _ = accounts.create_token("admin", label="tests")
        finally:
            engine.dispose()
        running = Site(tmp_path, url, token)
        try:
            yield running
        finally:
            if running.server is not None and running.server.process.poll() is None:
                stop_server(running.server)


class Volunteer:
    """An anonymous browser: its own cookies (the volunteer identity the server gives, the XSRF token)."""

    def __init__(self, url: str, project: str) -> None:
        self.base = f"{url}/api/datasets/{DATASET}/projects/{project}"
        self.http = requests.Session()
        page = self.http.get(f"{url}/datasets/{DATASET}", timeout=60)  # sets _xsrf, as the page does
        assert page.status_code == 200, page.status_code
        self.http.headers["X-XSRFToken"] = self.http.cookies["_xsrf"]

    def twin(self) -> Volunteer:
        """The same browser on a second connection (a double click sending the same answer twice)."""
        other = object.__new__(Volunteer)
        other.base = self.base
        other.http = requests.Session()
        other.http.cookies.update(self.http.cookies)
        other.http.headers["X-XSRFToken"] = self.http.headers["X-XSRFToken"]
        return other

    def next(self) -> dict[str, Any] | None:
        answer = self.http.post(f"{self.base}/next", timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()["task"]

    def submit(self, task: dict[str, Any], marks: list[dict[str, Any]]) -> requests.Response:
        body = {"marks": marks} if marks else {"nothing_here": True}
        return self.http.post(f"{self.base}/tasks/{task['task']}/submission", json=body, timeout=120)

    def close(self) -> None:
        self.http.close()


def random_marks(rng: random.Random, task: dict[str, Any], count: int) -> list[dict[str, Any]]:
    lower, upper = task["lower"], task["upper"]
    return [{"type": "point", "label": rng.choice(LABELS),
             "point": [round(rng.uniform(lower[0], upper[0]), 2), round(rng.uniform(lower[1], upper[1]), 2),
                       task["slice"] + 0.5]} for _ in range(count)]


# --------------------------------------------------------------------------- the database's own account


def check_database(url: str, project_id: int, redundancy: int) -> dict[str, Any]:
    """Every invariant the counts and rows must keep; returns the rows the callers compare with what they saw."""
    engine = make_engine(url)
    try:
        with engine.connect() as db:
            def rows(sql: str) -> list[Any]:
                return list(db.execute(text(sql), {"p": project_id}))

            tasks = {r.id: r for r in rows("SELECT id, status, handed_out, submissions, gold FROM crowd_tasks "
                                           "WHERE project_id = :p")}
            assignments = rows("SELECT id, task_id, volunteer_id, status FROM crowd_assignments "
                               "WHERE project_id = :p")
            submissions = rows("SELECT id, assignment_id, task_id, volunteer_id, marks FROM crowd_submissions "
                               "WHERE project_id = :p")
            participations = {r.volunteer_id: r.submitted for r in rows(
                "SELECT volunteer_id, submitted FROM crowd_participations WHERE project_id = :p")}
    finally:
        engine.dispose()
    by_id = {a.id: a for a in assignments}
    pairs = Counter((a.task_id, a.volunteer_id) for a in assignments)
    assert max(pairs.values(), default=1) == 1, "a volunteer was given the same task twice"
    holding = Counter(a.task_id for a in assignments if a.status in ("open", "submitted"))
    stored = Counter(s.task_id for s in submissions)
    for task_id, task in tasks.items():
        assert holding[task_id] <= redundancy, f"task {task_id} is out with {holding[task_id]} volunteers"
        assert task.handed_out == holding[task_id], (task_id, task.handed_out, holding[task_id])
        assert task.submissions == stored[task_id], (task_id, task.submissions, stored[task_id])
        assert stored[task_id] <= redundancy, f"task {task_id} has {stored[task_id]} submissions"
        assert len({s.volunteer_id for s in submissions if s.task_id == task_id}) == stored[task_id]
        if task.status == "retired":
            assert stored[task_id] == redundancy, (task_id, stored[task_id])
        else:
            assert task.status == "active" and stored[task_id] < redundancy, (task_id, task.status)
    for submission in submissions:  # whole: its assignment is marked submitted, for the same task and volunteer
        assignment = by_id[submission.assignment_id]
        assert assignment.status == "submitted", (submission.id, assignment.status)
        assert (assignment.task_id, assignment.volunteer_id) == (submission.task_id, submission.volunteer_id)
    assert sum(a.status == "submitted" for a in assignments) == len(submissions)
    per_volunteer = Counter(s.volunteer_id for s in submissions)
    assert {v: n for v, n in participations.items() if n} == dict(per_volunteer)
    return {"tasks": tasks, "assignments": assignments, "submissions": {s.id: Stored(
        s.task_id, s.volunteer_id, json.loads(s.marks) if isinstance(s.marks, str) else s.marks) for s in submissions}}


@dataclass(frozen=True)
class Stored:
    task_id: int
    volunteer_id: int
    marks: list[Any]


# --------------------------------------------------------------------------- 8 processes, 60 volunteers


VOLUNTEERS = 60
TASK_SHAPE = [34, 40, 33]  # 3 x 2 x 1 = 6 tasks of the 100 x 80 x 33 image
REDUNDANCY = 3


@dataclass
class Seen:
    """What one simulated volunteer was told."""

    offers: list[tuple[int, int]] = field(default_factory=list)  # (task, assignment) each time one was offered
    acknowledged: dict[int, tuple[int, int]] = field(default_factory=dict)  # submission id -> (task, mark count)
    conflicts: int = 0  # 409s: the second of a double submission
    abandoned: int | None = None  # a task taken and never answered
    told_none: int = 0
    errors: list[str] = field(default_factory=list)


def submit_twice(volunteer: Volunteer, task: dict[str, Any], marks: list[dict[str, Any]]) -> list[requests.Response]:
    """The same answer sent at once on two connections of the same browser."""
    twin = volunteer.twin()
    try:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(lambda v: v.submit(task, marks), [volunteer, twin]))
    finally:
        twin.close()


def rooms(db: Engine, project_id: int, redundancy: int) -> set[int]:
    """The project's tasks with a free place now."""
    with db.connect() as connection:
        return set(connection.scalars(text(
            "SELECT id FROM crowd_tasks WHERE project_id = :p AND status = 'active' AND handed_out < :r"),
            {"p": project_id, "r": redundancy}))


def volunteer_loop(url: str, project: str, project_id: int, db: Engine, index: int, start: threading.Barrier,
                   seen: Seen) -> None:
    rng = random.Random(index)
    volunteer = Volunteer(url, project)
    try:
        start.wait(60)
        task = volunteer.next()
        if task is None:
            seen.told_none += 1
        while task is not None:
            offer = (task["task"], task["assignment"])
            if seen.offers and seen.offers[-1] == offer:
                seen.errors.append(f"offered task {offer[0]} again after answering it")
                return
            seen.offers.append(offer)
            if index % 10 == 9:  # takes a task and leaves: its place stays taken (until it expires)
                seen.abandoned = task["task"]
                return
            marks = random_marks(rng, task, rng.randint(0, 6))
            if index % 6 == 5:  # sends the same answer twice at once
                answers = submit_twice(volunteer, task, marks)
                codes = sorted(answer.status_code for answer in answers)
                if codes != [201, 409]:
                    seen.errors.append(f"a double submission was answered {codes}: "
                                       f"{[a.text[:200] for a in answers]}")
                    return
                seen.conflicts += 1
                answer = next(a for a in answers if a.status_code == 201)
            else:
                answer = volunteer.submit(task, marks)
                if answer.status_code != 201:
                    seen.errors.append(f"submission answered {answer.status_code}: {answer.text[:300]}")
                    return
            body = answer.json()
            seen.acknowledged[body["submission"]] = (task["task"], len(marks))
            task = body["next"]
            if task is None:  # nothing left in the answer: ask once more, as the page does
                task = volunteer.next()
                seen.told_none += task is None
        # Told "nothing left": places are only ever taken here (none expires), so a task with room now, that this
        # volunteer never had, had room when they were told that.
        missed = rooms(db, project_id, REDUNDANCY) - {t for t, _ in seen.offers}
        if missed:
            seen.errors.append(f"told there was nothing left while tasks {sorted(missed)} had room")
    except Exception as error:  # reported by the test
        seen.errors.append(f"{type(error).__name__}: {error}")
    finally:
        volunteer.close()


def test_eight_processes_never_exceed_the_redundancy(site: Site) -> None:
    server = site.start("--processes", "8")
    project_id, count = site.project("rush", TASK_SHAPE, REDUNDANCY)
    assert count == 6
    seen = [Seen() for _ in range(VOLUNTEERS)]
    start = threading.Barrier(VOLUNTEERS)
    db = make_engine(site.url)
    threads = [threading.Thread(target=volunteer_loop, args=(server.url, "rush", project_id, db, i, start, s),
                                daemon=True) for i, s in enumerate(seen)]
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
            assert not thread.is_alive()
    finally:
        db.dispose()
    seconds = time.monotonic() - started
    assert [e for s in seen for e in s.errors] == []

    # A late volunteer finds the tasks full (every place taken by someone above), and is told so.
    late = Volunteer(server.url, "rush")
    assert late.next() is None
    late.close()
    stop_server(server)

    found = check_database(site.url, project_id, REDUNDANCY)
    acknowledged = {i: a for s in seen for i, a in s.acknowledged.items()}
    stored = found["submissions"]
    assert sorted(acknowledged) == sorted(stored), "an acknowledged submission is missing, or one is unasked for"
    for submission_id, (task_id, marks) in acknowledged.items():
        assert (stored[submission_id].task_id, len(stored[submission_id].marks)) == (task_id, marks)
    # Every place was taken: the abandoned assignments hold theirs, every other one was answered.
    abandoned = Counter(s.abandoned for s in seen if s.abandoned is not None)
    for task_id, task in found["tasks"].items():
        assert task.handed_out == REDUNDANCY, (task_id, task.handed_out)
        assert task.submissions == REDUNDANCY - abandoned[task_id]
    offers = [o for s in seen for o in s.offers]
    assert len(offers) == len({a for _, a in offers}) == 6 * REDUNDANCY
    # Each volunteer's offers name distinct tasks.
    assert all(len({t for t, _ in s.offers}) == len(s.offers) for s in seen)
    doubles = sum(s.conflicts for s in seen)
    print(f"\n{VOLUNTEERS} volunteers on 8 processes: {len(acknowledged)} submissions, {doubles} double "
          f"submissions refused once each, {sum(abandoned.values())} tasks abandoned, "
          f"{sum(1 for s in seen if not s.offers)} volunteers found nothing left; {seconds:.1f} s")


# --------------------------------------------------------------------------- SIGKILL mid-stream


WRITERS = 12
RUN_SECONDS = 3.0  # of submitting before the kill
KILL_TASK_SHAPE = [10, 10, 11]  # 10 x 8 x 3 = 240 tasks
KILL_REDUNDANCY = 5


@dataclass
class Writer:
    acknowledged: dict[int, tuple[int, int]] = field(default_factory=dict)  # submission id -> (task, marks)
    in_flight: tuple[int, int] | None = None  # (task, marks) of the submission sent when the server died
    volunteer: Volunteer | None = None
    errors: list[str] = field(default_factory=list)


def submit_until_refused(url: str, project: str, index: int, writer: Writer, stop: threading.Event) -> None:
    rng = random.Random(1000 + index)
    volunteer = writer.volunteer = Volunteer(url, project)
    try:
        task = volunteer.next()
        while task is not None and not stop.is_set():
            marks = random_marks(rng, task, rng.randint(1, 12))
            writer.in_flight = (task["task"], len(marks))
            answer = volunteer.submit(task, marks)
            if answer.status_code != 201:
                writer.errors.append(f"submission answered {answer.status_code}: {answer.text[:300]}")
                return
            body = answer.json()
            writer.acknowledged[body["submission"]] = writer.in_flight
            writer.in_flight = None
            task = body["next"]
    except requests.ConnectionError:
        return  # the server died: what was in flight may or may not have been stored
    except Exception as error:  # reported by the test
        writer.errors.append(f"{type(error).__name__}: {error}")


def test_a_killed_server_loses_no_acknowledged_submission(site: Site) -> None:
    env = {"LAMELLA_VOLUNTEER_SUBMISSIONS_PER_MINUTE": "0", "LAMELLA_ADDRESS_SUBMISSIONS_PER_MINUTE": "0"}
    server = site.start(env=env)
    first_url = server.url
    project_id, count = site.project("crash", KILL_TASK_SHAPE, KILL_REDUNDANCY)
    assert count == 240
    writers = [Writer() for _ in range(WRITERS)]
    kill_while_writing(server, functools.partial(submit_until_refused, server.url, "crash"), writers, RUN_SECONDS, 120)
    assert [e for w in writers for e in w.errors] == []
    acknowledged = {i: a for w in writers for i, a in w.acknowledged.items()}
    in_flight = [w.in_flight for w in writers if w.in_flight is not None]
    assert len(acknowledged) >= 2 * WRITERS and in_flight, (len(acknowledged), len(in_flight))

    found = check_database(site.url, project_id, KILL_REDUNDANCY)  # before the restart: as the kill left it
    stored = found["submissions"]
    missing = sorted(set(acknowledged) - set(stored))
    assert missing == [], f"acknowledged submissions lost: {missing}"
    for submission_id, (task_id, marks) in acknowledged.items():
        assert (stored[submission_id].task_id, len(stored[submission_id].marks)) == (task_id, marks)
    extra = sorted((s.task_id, len(s.marks)) for i, s in stored.items() if i not in acknowledged)
    assert all(Counter(extra)[e] <= Counter(in_flight)[e] for e in extra), (extra, in_flight)

    server = site.start(env=env)
    try:
        found = check_database(site.url, project_id, KILL_REDUNDANCY)  # the restart changes nothing
        assert sorted(found["submissions"]) == sorted(stored)
        export = requests.get(f"{server.url}/api/datasets/{DATASET}/projects/crash/export",
                              params={"format": "zooniverse"}, headers=site.admin, timeout=120)
        assert export.status_code == 200, export.text
        exported = {int(row["classification_id"]): int(row["subject_ids"])
                    for row in csv.DictReader(io.StringIO(export.text))}
        assert exported == {i: s.task_id for i, s in stored.items()}
        # The survivors go on where they were: their open task, or a new one; and an answer is taken.
        volunteer = next(w for w in writers if w.acknowledged).volunteer
        assert volunteer is not None
        volunteer.base = volunteer.base.replace(first_url, server.url)  # a new port
        task = volunteer.next()
        assert task is not None
        answer = volunteer.submit(task, [])
        assert answer.status_code == 201, answer.text
        check_database(site.url, project_id, KILL_REDUNDANCY)
    finally:
        stop_server(server)
    held = Counter(a.status for a in found["assignments"])
    print(f"\n{len(acknowledged)} submissions acknowledged before the kill, {len(in_flight)} in flight, "
          f"{len(extra)} of those stored; assignments {dict(held)}")


def test_marks_stay_inside_the_task() -> None:
    rng = random.Random(3)
    task = {"task": 1, "lower": [10, 20, 0], "upper": [44, 60, 33], "slice": 16}
    for mark in random_marks(rng, task, 50):
        x, y, z = mark["point"]
        assert 10 <= x <= 44 and 20 <= y <= 60 and z == 16.5

