"""The route-table fuzzer (tests/fuzzing.py) in CI: every route covered, and a bounded run without failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.conftest import Server
from tests.fuzzing import Report, World, compare, coverage_problems, discover, fuzz, write_summary
from viewer.apidoc import op
from viewer.app import Route, routes
from viewer.handlers.base import BaseHandler
from viewer.rules import READ, dataset


@pytest.fixture(scope="module")
def world(scratch_server: Server) -> World:
    return discover(scratch_server.url, scratch_server.admin_token)


def test_the_fuzzer_has_a_valid_request_for_every_route(world: World) -> None:
    assert coverage_problems(routes(), world.contexts) == []


class Unexampled(BaseModel):
    value: int


class NewHandler(BaseHandler):
    @op(body=Unexampled)
    async def post(self, dataset_ref: str, mystery: str) -> None:
        """A handler added later, whose body model has no examples."""


def test_a_route_the_fuzzer_cannot_fill_is_reported(world: World) -> None:
    new = Route(r"/api/datasets/(?P<dataset_ref>[a-z]+)/new/(?P<mystery>[0-9]+)", NewHandler, dataset(POST=READ), "new")
    assert coverage_problems([*routes(), new], world.contexts) == [
        "new: no test-data values for path groups ['dataset_ref', 'mystery']",
        "new POST: its body model declares no examples",
    ]


def test_a_change_no_successful_write_explains_is_a_failure() -> None:
    before = {("listing",): ["demo", "tests"], ("dataset", "demo"): (200, {"title": "a"}),
              ("dataset", "tests"): (200, {"title": "b"}), ("session", "t"): (200, {"state": {}})}
    after = {**before, ("listing",): ["demo", "new", "tests"], ("dataset", "demo"): (200, {"title": "changed"}),
             ("dataset", "tests"): (200, {"title": "written"})}
    report = Report(seed=1, written={("dataset", "tests")})
    compare(before, after, report)
    assert report.compared == 3 and report.failure_count == 2
    assert [failure["problem"] for failure in report.failures] == [
        "the catalog changed", "dataset/demo changed though no write to it succeeded"]
    report = Report(seed=1, written={("dataset", "tests"), ("dataset", "demo")}, created={"new"})
    compare(before, after, report)
    assert report.compared == 2 and report.failure_count == 0


def test_hostile_requests_never_break_the_server(scratch_server: Server, world: World) -> None:
    report = fuzz(world)
    summary = report.summary()
    destination = os.environ.get("FUZZ_REPORT")
    if destination:
        write_summary(report, Path(destination))
    print(json.dumps({key: summary[key] for key in ("requests", "duration_s", "requests_per_s", "statuses",
                                                    "outcomes", "failure_count", "state")}))
    assert scratch_server.process.poll() is None, "the server exited"
    assert set(summary["routes"]) == {route.name for route in routes()}
    assert report.failure_count == 0, json.dumps(
        {"kinds": summary["failure_kinds"], "first": summary["failures"][:8]}, indent=1, ensure_ascii=False)
