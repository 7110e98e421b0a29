"""Citizen Science over HTTP: projects, tasks, volunteers, submissions and their refusals, consensus, exports."""

from __future__ import annotations

import base64
import csv
import io
import json
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import requests
from sqlalchemy import select, update

from annotations.access import Access, Actor
from annotations.annotation_store import AnnotationStore
from annotations.crowd import GOLD_EARLY, GOLD_LATE, Crowd, RateLimits
from annotations.crowd_specs import GoldTaskIn, ProjectChanges, ProjectIn, SubmissionIn, TasksIn
from annotations.db import make_engine, make_sessions, sqlite_url
from annotations.errors import TaskUnavailable
from annotations.models import Assignment, CrowdTask, Submission, utcnow
from tests.conftest import Sample, Server, clone_data_dir, start_server, stop_server

PER_MINUTE = 8  # the module server's per-volunteer submission limit
WORKFLOW = {"instructions": "Click the centre of each mitochondrion.", "tool": "point",
            "labels": ["mitochondrion", "vesicle"], "task_shape": [128, 128, 8], "redundancy": 3,
            "tutorial": [{"text": "Mitochondria are dark ovals.", "picture": {"lower": [0, 0, 100],
                                                                               "upper": [256, 256, 101]}}]}


@pytest.fixture(scope="module")
def crowd_server(data_dir: tuple[Path, Sample], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = clone_data_dir(data_dir[0], tmp_path_factory.mktemp("crowd-data"))
    running = start_server(root, env={"LAMELLA_VOLUNTEER_SUBMISSIONS_PER_MINUTE": str(PER_MINUTE)})
    running.admin_token = data_dir[1].admin_token
    running.data_dir = root
    yield running
    stop_server(running)


class Volunteer:
    """An anonymous browser: its cookies (the volunteer identity, _xsrf) and the XSRF header."""

    def __init__(self, server: Server, project: str, dataset: str = "demo") -> None:
        self.http = requests.Session()
        self.base = f"{server.url}/api/datasets/{dataset}/projects/{project}"
        self.http.get(f"{server.url}/datasets/{dataset}", timeout=30)
        self.headers = {"X-XSRFToken": self.http.cookies["_xsrf"]}

    def next(self) -> requests.Response:
        return self.http.post(f"{self.base}/next", headers=self.headers, timeout=30)

    def submit(self, task: int, body: dict) -> requests.Response:  # type: ignore[type-arg]
        return self.http.post(f"{self.base}/tasks/{task}/submission", json=body, headers=self.headers, timeout=30)


def make_project(server: Server, name: str, **workflow: object) -> dict:  # type: ignore[type-arg]
    body = {"name": name, "title": f"Project {name}", "image": "em", "workflow": {**WORKFLOW, **workflow}}
    response = requests.post(f"{server.url}/api/datasets/demo/projects", json=body, headers=server.admin, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def tile(server: Server, name: str, lower: list[int], upper: list[int]) -> int:
    response = requests.post(f"{server.url}/api/datasets/demo/projects/{name}/tasks", headers=server.admin,
                             json={"lower": lower, "upper": upper}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["created"]


def point_in(task: dict, dx: float = 10.5, dy: float = 20.5, label: str = "mitochondrion") -> dict:  # type: ignore[type-arg]
    lower = task["lower"]
    return {"type": "point", "point": [lower[0] + dx, lower[1] + dy, task["slice"] + 0.5], "label": label}


def stats(server: Server, name: str) -> dict:  # type: ignore[type-arg]
    return requests.get(f"{server.url}/api/datasets/demo/projects/{name}/stats", headers=server.admin,
                        timeout=30).json()


def test_only_curators_make_projects_and_bad_ones_are_refused(crowd_server: Server) -> None:
    url = f"{crowd_server.url}/api/datasets/demo/projects"
    body = {"name": "refused", "title": "x", "image": "em", "workflow": WORKFLOW}
    assert requests.post(url, json=body, timeout=30).status_code in (401, 403)
    for change, code in ((lambda b: b | {"image": "organelles"}, "invalid_project"),  # a segmentation
                         (lambda b: b | {"image": "nope"}, "invalid_project"),
                         (lambda b: b | {"name": "Bad Name"}, "bad_request"),
                         (lambda b: b | {"workflow": {**WORKFLOW, "tool": "lasso"}}, "bad_request"),
                         (lambda b: b | {"workflow": {**WORKFLOW, "labels": ["a", "a"]}}, "bad_request"),
                         (lambda b: b | {"workflow": {**WORKFLOW, "task_shape": [0, 8, 8]}}, "bad_request"),
                         (lambda b: b | {"workflow": {**WORKFLOW, "tutorial": [
                             {"text": "t", "picture": {"lower": [0, 0, 0], "upper": [9999, 8, 1]}}]}},
                          "invalid_project")):
        response = requests.post(url, json=change(body), headers=crowd_server.admin, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == code, response.text
    make_project(crowd_server, "once")
    again = requests.post(url, json={**body, "name": "once"}, headers=crowd_server.admin, timeout=30)
    assert again.status_code == 409
    names = [p["name"] for p in requests.get(url, timeout=30).json()["projects"]]
    assert "once" in names and "refused" not in names
    # Tasks: a region outside the image, or too many tasks at once, make none.
    tasks = f"{url}/once/tasks"
    assert requests.post(tasks, json={"lower": [0, 0, 0], "upper": [9999, 8, 8]}, headers=crowd_server.admin,
                         timeout=30).status_code == 400
    assert requests.post(tasks, json={}, headers=crowd_server.admin, timeout=30).json()["created"] == 4 * 4 * 32
    gold = f"{url}/once/gold"
    outside = {"lower": [0, 0, 0], "upper": [64, 64, 8],
               "answer": [{"type": "point", "point": [100, 1, 1], "label": "mitochondrion"}]}
    assert requests.post(gold, json=outside, headers=crowd_server.admin, timeout=30).json()["code"] == \
        "invalid_submission"


def test_volunteers_never_get_a_task_twice_and_bad_submissions_count_nothing(crowd_server: Server) -> None:
    make_project(crowd_server, "marks", redundancy=2)
    created = tile(crowd_server, "marks", [0, 0, 96], [256, 256, 104])
    assert created == 4
    alice = Volunteer(crowd_server, "marks")
    first = alice.next().json()
    task = first["task"]
    assert task is not None and first["state"]["layers"][1]["tool"] == "annotatePoint"
    assert alice.next().json()["task"]["task"] == task["task"], "the open task again, not a new one"
    refusals = [
        ({"marks": [{"type": "box", "lower": [1, 1, 97], "upper": [5, 5, 98], "label": "mitochondrion"}]},
         400, "this workflow's tool is 'point'"),
        ({"marks": [point_in(task, label="nucleus")]}, 400, "label 'nucleus' is not one of"),
        ({"marks": [point_in(task, dx=500)]}, 400, "outside the task region"),
        ({"marks": [{"type": "point", "point": [1, 2], "label": "mitochondrion"}]}, 400, ""),
        ({"marks": [{"type": "point", "point": [1, 2, float("nan")], "label": "mitochondrion"}]}, 400, ""),
        ({"marks": []}, 400, "nothing_here"),
        ({"marks": [point_in(task)], "nothing_here": True}, 400, "no marks"),
        ({"marks": [point_in(task)], "extra": 1}, 400, ""),
    ]
    for body, status, message in refusals:
        response = alice.http.post(f"{alice.base}/tasks/{task['task']}/submission", data=json.dumps(body),
                                   headers={**alice.headers, "Content-Type": "application/json"}, timeout=30)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["message"]
    assert alice.submit(987654, {"marks": [point_in(task)]}).json()["code"] == "task_not_found"
    others = [t for t in range(task["task"] - 4, task["task"] + 5) if t != task["task"]]
    assert alice.submit(others[0], {"marks": [point_in(task)]}).status_code in (404, 409)
    assert stats(crowd_server, "marks")["submissions"] == 0, "a refused submission counted"
    # No XSRF header: refused, even for an anonymous volunteer (the identity cookie is ambient).
    bare = alice.http.post(f"{alice.base}/tasks/{task['task']}/submission", json={"marks": [point_in(task)]},
                           timeout=30)
    assert bare.status_code == 403
    done = alice.submit(task["task"], {"marks": [point_in(task), point_in(task, 40.5, 50.5, "vesicle")]})
    assert done.status_code == 201, done.text
    answer = done.json()
    assert answer["next"]["task"] != task["task"] and answer["progress"]["submitted"] == 1
    again = alice.submit(task["task"], {"marks": [point_in(task)]})
    assert again.status_code == 409 and "already answered" in again.json()["message"]
    seen = {task["task"]}
    offer = answer["next"]
    while offer is not None:
        assert offer["task"] not in seen
        seen.add(offer["task"])
        offer = alice.submit(offer["task"], {"nothing_here": True}).json()["next"]
    assert len(seen) == 4 and alice.next().json()["task"] is None
    assert stats(crowd_server, "marks")["submissions"] == 4


def test_redundant_submissions_retire_a_task_into_the_consensus_layer(crowd_server: Server) -> None:
    project = make_project(crowd_server, "retire", redundancy=3)
    tile(crowd_server, "retire", [128, 128, 120], [256, 256, 128])  # one task
    crowd = [Volunteer(crowd_server, "retire") for _ in range(4)]
    rng = np.random.default_rng(3)
    for index, volunteer in enumerate(crowd[:3]):
        task = volunteer.next().json()["task"]
        marks = [point_in(task, 30 + rng.normal(0, 1), 30 + rng.normal(0, 1)),
                 point_in(task, 90 + rng.normal(0, 1), 70 + rng.normal(0, 1))]
        if index == 2:
            marks.append(point_in(task, 5.5, 120.5))  # a stray click of one volunteer
        response = volunteer.submit(task["task"], {"marks": marks})
        assert response.status_code == 201, response.text
        assert response.json()["retired"] == (index == 2)
    assert crowd[3].next().json()["task"] is None, "a retired task was handed out"
    layer = requests.get(f"{crowd_server.url}/api/datasets/demo/annotation-layers/{project['consensus_layer_id']}"
                         "/annotations", headers=crowd_server.admin, timeout=30).json()["annotations"]
    assert len(layer) == 2, layer
    voxel = 8.0
    for annotation in layer:
        assert annotation["properties"]["support"] == 3 and annotation["properties"]["agreement"] == 1.0
        x = annotation["point"][0] / voxel - 128
        assert min(abs(x - 30.5), abs(x - 90.5)) < 2
    figures = stats(crowd_server, "retire")
    assert figures["retired"] == 1 and figures["consensus_marks"] == 2 and figures["agreement_counts"][-1] == 2
    exported = requests.get(f"{crowd_server.url}/api/datasets/demo/projects/retire/export?format=consensus",
                            headers=crowd_server.admin, timeout=30)
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 2 and {row["support"] for row in rows} == {"3"}
    # The raw export: Zooniverse's columns, volunteers hashed, no address.
    raw = requests.get(f"{crowd_server.url}/api/datasets/demo/projects/retire/export?format=zooniverse",
                       headers=crowd_server.admin, timeout=30)
    rows = list(csv.DictReader(io.StringIO(raw.text)))
    assert len(rows) == 3 and all(row["user_ip"] == "" for row in rows)
    assert len({row["user_name"] for row in rows}) == 3
    cookie = crowd[0].http.cookies["lamella_volunteer"]  # Tornado's signed form: 2|1:0|…|<length>:<base64 id>|sig
    browser_id = base64.b64decode(cookie.split("|")[4].split(":")[1]).decode()
    assert len(browser_id) >= 20 and browser_id not in raw.text
    assert requests.get(f"{crowd_server.url}/api/datasets/demo/projects/retire/export?format=zooniverse",
                        timeout=30).status_code in (401, 403)


def test_curators_pause_retire_and_reprioritise_tasks(crowd_server: Server) -> None:
    make_project(crowd_server, "curate", redundancy=5)
    tile(crowd_server, "curate", [0, 0, 200], [384, 128, 208])  # three tasks
    tasks = requests.get(f"{crowd_server.url}/api/datasets/demo/projects/curate/tasks", headers=crowd_server.admin,
                         timeout=30).json()["tasks"]
    first, second, third = (t["id"] for t in tasks)
    url = f"{crowd_server.url}/api/datasets/demo/projects/curate/tasks"
    assert requests.patch(f"{url}/{third}", json={"priority": 10}, headers=crowd_server.admin,
                          timeout=30).json()["priority"] == 10
    assert requests.patch(f"{url}/{first}", json={"status": "paused"}, headers=crowd_server.admin,
                          timeout=30).json()["status"] == "paused"
    volunteer = Volunteer(crowd_server, "curate")
    task = volunteer.next().json()["task"]
    assert task["task"] == third, "higher priority first"
    requests.patch(f"{url}/{third}", json={"status": "retired"}, headers=crowd_server.admin, timeout=30)
    refused = volunteer.submit(third, {"marks": [point_in(task)]})
    assert refused.status_code == 409 and "retired" in refused.json()["message"]
    assert volunteer.next().json()["task"]["task"] == second, "paused and retired tasks are not handed out"
    requests.patch(f"{url}/{third}", json={"status": "active"}, headers=crowd_server.admin, timeout=30)
    assert volunteer.submit(third, {"marks": [point_in(task)]}).status_code == 201, "un-retired: open again"
    project = f"{crowd_server.url}/api/datasets/demo/projects/curate"
    requests.patch(project, json={"status": "paused"}, headers=crowd_server.admin, timeout=30)
    assert volunteer.next().json()["task"] is None
    requests.patch(project, json={"status": "active"}, headers=crowd_server.admin, timeout=30)
    anonymous = requests.patch(f"{url}/{second}", json={"priority": 1}, timeout=30)
    assert anonymous.status_code in (401, 403)


def test_a_changed_workflow_is_a_new_version_and_submissions_keep_theirs(crowd_server: Server) -> None:
    make_project(crowd_server, "versions", redundancy=4)
    tile(crowd_server, "versions", [0, 128, 10], [256, 256, 18])  # two tasks
    volunteer = Volunteer(crowd_server, "versions")
    task = volunteer.next().json()["task"]
    assert task["workflow"]["version"] == 1
    changed = requests.patch(f"{crowd_server.url}/api/datasets/demo/projects/versions",
                             json={"workflow": {**WORKFLOW, "labels": ["mitochondrion", "vesicle", "lysosome"],
                                                "redundancy": 4}},
                             headers=crowd_server.admin, timeout=30).json()
    assert changed["workflow"]["version"] == 2
    old_label = volunteer.submit(task["task"], {"marks": [point_in(task, label="lysosome")]})
    assert old_label.status_code == 400, "the task was given with version 1, which has no lysosome"
    answer = volunteer.submit(task["task"], {"marks": [point_in(task)]}).json()
    assert answer["next"]["workflow"]["version"] == 2
    raw = requests.get(f"{crowd_server.url}/api/datasets/demo/projects/versions/export?format=zooniverse",
                       headers=crowd_server.admin, timeout=30).text
    [row] = list(csv.DictReader(io.StringIO(raw)))
    assert row["workflow_version"].split(".")[0] == "1"


def test_submissions_beyond_the_rate_limit_are_refused_with_retry_after(crowd_server: Server) -> None:
    make_project(crowd_server, "fast", redundancy=1, task_shape=[32, 32, 1])
    tile(crowd_server, "fast", [0, 0, 0], [128, 128, 1])  # 16 tasks
    volunteer = Volunteer(crowd_server, "fast")
    offer = volunteer.next().json()["task"]
    for _ in range(PER_MINUTE):
        response = volunteer.submit(offer["task"], {"nothing_here": True})
        assert response.status_code == 201, response.text
        offer = response.json()["next"]
    refused = volunteer.submit(offer["task"], {"nothing_here": True})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert stats(crowd_server, "fast")["submissions"] == PER_MINUTE
    assert Volunteer(crowd_server, "fast").submit(offer["task"], {"nothing_here": True}).status_code == 409


def test_a_task_view_loads_only_its_region(crowd_server: Server, sample: Sample) -> None:
    """The region source is standard precomputed (tensorstore reads it) and serves only chunks meeting the region."""
    import tensorstore as ts

    make_project(crowd_server, "region")
    tile(crowd_server, "region", [64, 192, 30], [192, 320, 38])
    offer = Volunteer(crowd_server, "region").next().json()
    source = offer["state"]["layers"][0]["source"].removeprefix("precomputed://")
    info = requests.get(f"{source}/info", timeout=30).json()
    full = requests.get(f"{crowd_server.url}/api/datasets/demo/images/em/precomputed/info", timeout=30).json()
    assert info["scales"][0]["size"][0] < full["scales"][0]["size"][0]
    region = ts.open({"driver": "neuroglancer_precomputed", "kvstore": source + "/", "scale_index": 0},
                     read=True).result()
    whole = ts.open({"driver": "neuroglancer_precomputed",
                     "kvstore": f"{crowd_server.url}/api/datasets/demo/images/em/precomputed/",
                     "scale_index": 0}, read=True).result()
    lower, upper = offer["task"]["lower"], offer["task"]["upper"]
    box = ts.d["x", "y", "z"][lower[0]:upper[0], lower[1]:upper[1], lower[2]:upper[2]]
    assert np.array_equal(region[box].read().result(), whole[box].read().result())
    outside = requests.get(f"{source}/0/448-512_0-64_0-64", timeout=30)
    assert outside.status_code == 400 and "outside the region" in outside.json()["message"]
    bad = requests.get(f"{crowd_server.url}/api/datasets/demo/images/em/region/0_0_0_9999_1_1/precomputed/info",
                       timeout=30)
    assert bad.status_code == 400
    picture = requests.get(f"{crowd_server.url}/api/datasets/demo/projects/region/tutorial/0", timeout=30)
    assert picture.headers["Content-Type"] == "image/jpeg" and len(picture.content) > 1000


@pytest.fixture
def service(data_dir: tuple[Path, Sample], tmp_path: Path) -> Iterator[tuple[Crowd, Actor, object]]:
    root = clone_data_dir(data_dir[0], tmp_path / "data")
    engine = make_engine(sqlite_url(root))
    sessions = make_sessions(engine)
    admin = Actor(account_id=1, name="admin", role="admin", via="token")
    access = Access(sessions).dataset_access(admin, "demo")
    yield Crowd(sessions, AnnotationStore(sessions), RateLimits(per_volunteer=0, per_address=0)), admin, access
    engine.dispose()


def test_gold_standard_tasks_come_often_at_first_then_rarely_with_feedback(service) -> None:  # type: ignore[no-untyped-def]
    crowd, admin, access = service
    crowd.create_project(admin, access, ProjectIn.model_validate(
        {"name": "gold", "title": "Gold", "image": "em", "workflow": {**WORKFLOW, "redundancy": 100,
                                                                      "task_shape": [16, 16, 1]}}))
    crowd.generate_tasks(admin, access, "gold", TasksIn.model_validate({"lower": [0, 0, 0], "upper": [256, 256, 1]}))
    for index in range(120):
        corner = [16 * (index % 16), 16 * (index // 16), 2]
        answer = [] if index % 2 else [{"type": "point", "point": [corner[0] + 8, corner[1] + 8, 2.5],
                                        "label": "mitochondrion"}]
        crowd.add_gold(admin, access, "gold", GoldTaskIn.model_validate(
            {"lower": corner, "upper": [corner[0] + 16, corner[1] + 16, 3], "answer": answer}))
    rng = random.Random(11)
    early, late, feedback = [], [], []
    for person in range(12):
        volunteer = crowd.volunteer(Actor(), f"browser-{person}")
        for turn in range(40):
            offer = crowd.next_task(Actor(), access, "gold", volunteer, rng)
            assert offer is not None
            with crowd.sessions() as session:
                gold = session.get(CrowdTask, offer.task).gold
            (early if turn < 20 else late).append(gold)
            body = {"nothing_here": True}
            if gold:
                body = {"marks": [{"type": "point", "point": [offer.lower[0] + 8.2, offer.lower[1] + 7.9, 2.5],
                                   "label": "mitochondrion"}]}
            answer = crowd.submit(Actor(), access, "gold", offer.task, volunteer, SubmissionIn.model_validate(body))
            assert (answer.feedback is not None) == gold
            if gold:
                feedback.append(answer.feedback)
    assert abs(np.mean(early) - GOLD_EARLY) < 0.08 and abs(np.mean(late) - GOLD_LATE) < 0.06
    right = [f for f in feedback if f.expected]
    wrong = [f for f in feedback if not f.expected]
    assert all(f.f1 == 1.0 and "Well done" in f.message for f in right)
    assert all(f.f1 < 1.0 and "nothing to mark" in f.message for f in wrong)


def test_an_abandoned_task_frees_its_place_and_a_late_answer_needs_one(service) -> None:  # type: ignore[no-untyped-def]
    crowd, admin, access = service
    crowd.create_project(admin, access, ProjectIn.model_validate(
        {"name": "late", "title": "Late", "image": "em", "workflow": {**WORKFLOW, "redundancy": 1}}))
    crowd.generate_tasks(admin, access, "late", TasksIn.model_validate({"lower": [0, 0, 0], "upper": [128, 128, 8]}))
    slow, quick, third = (crowd.volunteer(Actor(), f"b{n}") for n in range(3))
    rng = random.Random(1)
    offer = crowd.next_task(Actor(), access, "late", slow, rng)
    assert offer is not None
    assert crowd.next_task(Actor(), access, "late", quick, rng) is None, "its one place is taken"
    with crowd.sessions.begin() as session:
        session.execute(update(Assignment).values(expires_at=utcnow() - timedelta(minutes=1)))
    again = crowd.next_task(Actor(), access, "late", quick, rng)
    assert again is not None and again.task == offer.task
    body = SubmissionIn.model_validate({"nothing_here": True})
    with pytest.raises(TaskUnavailable, match="given to someone else"):
        crowd.submit(Actor(), access, "late", offer.task, slow, body)
    crowd.submit(Actor(), access, "late", offer.task, quick, body)
    assert crowd.next_task(Actor(), access, "late", third, rng) is None
    with crowd.sessions() as session:
        assert session.scalar(select(CrowdTask.handed_out).where(CrowdTask.id == offer.task)) == 1
        assert len(session.scalars(select(Submission).where(Submission.task_id == offer.task)).all()) == 1


def test_weighted_consensus_follows_the_volunteers_who_answer_gold_tasks_well(service) -> None:  # type: ignore[no-untyped-def]
    """Two careless volunteers outvote a careful one unweighted; weighted by gold-standard quality, they do not."""
    crowd, admin, access = service
    crowd.create_project(admin, access, ProjectIn.model_validate(
        {"name": "weights", "title": "Weights", "image": "em", "threshold": 0.5,
         "workflow": {**WORKFLOW, "redundancy": 3, "task_shape": [64, 64, 4]}}))
    crowd.generate_tasks(admin, access, "weights", TasksIn.model_validate({"lower": [0, 0, 0], "upper": [64, 64, 4]}))
    for index in range(6):
        corner = [64 + 16 * index, 0, 0]
        crowd.add_gold(admin, access, "weights", GoldTaskIn.model_validate(
            {"lower": corner, "upper": [corner[0] + 16, 16, 4], "answer": [
                {"type": "point", "point": [corner[0] + 8, 8, 2], "label": "mitochondrion"}]}))
    careful, sloppy_a, sloppy_b = (crowd.volunteer(Actor(), name) for name in ("careful", "sloppy-a", "sloppy-b"))
    # The careful volunteer clicks the gold objects' centres and one spot of the task; the careless two click
    # 7 voxels off on gold tasks and agree with each other on another spot of the task.
    answers = {careful: [20.5, 20.5, 2.5], sloppy_a: [50.5, 50.5, 2.5], sloppy_b: [50.5, 51.5, 2.5]}
    rng = random.Random(5)
    for volunteer, spot in answers.items():
        while (offer := crowd.next_task(Actor(), access, "weights", volunteer, rng)) is not None:
            if offer.upper[0] - offer.lower[0] == 16:  # a gold task
                off = 0 if volunteer == careful else 7
                spot_here = [offer.lower[0] + 8 + off, 8 + off, 2]
            else:
                spot_here = spot
            crowd.submit(Actor(), access, "weights", offer.task, volunteer, SubmissionIn.model_validate(
                {"marks": [{"type": "point", "point": spot_here, "label": "mitochondrion"}]}))

    def consensus_x() -> list[float]:
        voxel, records = crowd.consensus_rows(admin, access, "weights")
        return sorted(round(r.point[0] / voxel[0], 1) for r in records)

    assert consensus_x() == [50.5], "unweighted: the two careless volunteers agree with each other"
    crowd.change_project(admin, access, "weights", ProjectChanges.model_validate({"weighted": True}))
    crowd.recompute(admin, access, "weights")
    assert consensus_x() == [], "weighted by quality: two careless votes no longer carry a point"
    with crowd.sessions() as session:
        from annotations.models import Participation

        quality = dict(session.execute(select(Participation.volunteer_id, Participation.quality)).all())
    assert quality[careful] > 0.7 > 0.3 > quality[sloppy_a]


def test_the_demo_project_asks_for_the_demo_mitochondria(data_dir: tuple[Path, Sample], tmp_path: Path) -> None:
    """`make serve` offers a project whose gold answers are the mitochondria the demo was drawn with."""
    import asyncio

    from annotations.catalog import Catalog
    from tiling.demo import MITOCHONDRION_IDS
    from tiling.omezarr import make_context, open_volume
    from viewer.demo_project import DEMO_PROJECT, ensure_demo_project

    root = clone_data_dir(data_dir[0], tmp_path / "data")
    engine = make_engine(sqlite_url(root))
    sessions = make_sessions(engine)
    try:
        assert ensure_demo_project(sessions) and not ensure_demo_project(sessions)
        admin = Actor(account_id=1, name="admin", role="admin", via="token")
        access = Access(sessions).dataset_access(admin, "demo")
        crowd = Crowd(sessions, AnnotationStore(sessions))
        project = crowd.project(admin, access, DEMO_PROJECT)
        assert project.tasks == 16 and project.workflow.tool == "point" and len(project.workflow.tutorial) == 2
        with crowd.sessions() as session:
            gold = session.scalars(select(CrowdTask).where(CrowdTask.gold.is_(True))).all()
            answers = [(mark["point"], task.lower, task.upper) for task in gold for mark in task.answer or []]
        assert len(gold) == 4 and len(answers) >= 3 and any(not task.answer for task in gold)
        uri = Catalog(sessions).get_image("demo", "organelles").uri

        async def label_at(x: float, y: float, z: float) -> int:
            volume = await open_volume(uri, make_context(16 << 20))
            found = await volume.read(0, (slice(int(z), int(z) + 1), slice(int(y), int(y) + 1),
                                          slice(int(x), int(x) + 1)))
            return int(found.ravel()[0])

        for point, lower, upper in answers:
            assert all(lo <= v <= hi for v, lo, hi in zip(point, lower, upper, strict=True))
            assert asyncio.run(label_at(*point)) >= MITOCHONDRION_IDS, f"gold point {point} is not on a mitochondrion"
    finally:
        engine.dispose()
