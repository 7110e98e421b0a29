"""The one route table: paths map to the handlers we expect, with the groups we expect, and every
route declares the access rule of every method its handler answers."""

import re

import pytest
from tornado.web import RequestHandler

from viewer.app import routes
from viewer.handlers import annotations, api, correlation, data, pages, segments, state_sync
from viewer.rules import Rule

TABLE = routes()

CASES = [
    ("/", pages.PageHandler, {}),
    ("/datasets/demo", pages.PageHandler, {"dataset_ref": "demo"}),
    ("/api/datasets", api.DatasetsHandler, {}),
    ("/api/datasets/3", api.DatasetHandler, {"dataset_ref": "3"}),
    ("/api/datasets/3/images/em", api.ImageHandler, {"dataset_ref": "3", "image_name": "em"}),
    ("/api/datasets/3/images/em/precomputed/info", data.PrecomputedInfoHandler, {"image_name": "em"}),
    ("/api/datasets/3/images/em/precomputed/0/0-64_0-64_0-64", data.PrecomputedChunkHandler,
     {"scale_key": "0", "chunk_name": "0-64_0-64_0-64"}),
    ("/api/datasets/3/images/em/zarr/0/c/0/0/0", data.ZarrStoreHandler, {"key": "0/c/0/0/0"}),
    ("/api/datasets/3/images/bodies/precomputed/mesh/0123456789ab/info", data.MeshInfoHandler,
     {"image_name": "bodies", "build": "0123456789ab"}),
    ("/api/datasets/3/images/bodies/precomputed/mesh/0123456789ab/0f.shard", data.MeshShardHandler,
     {"build": "0123456789ab", "shard": "0f.shard"}),
    ("/api/datasets/3/images/bodies/meshes/1001", data.SurfaceHandler, {"image_name": "bodies", "segment": "1001"}),
    # Not a chunk of a scale named "segment_properties": the properties' route comes first.
    ("/api/datasets/3/images/bodies/precomputed/segment_properties/info", segments.SegmentPropertiesHandler,
     {"image_name": "bodies"}),
    ("/api/datasets/3/images/bodies/segments", segments.SegmentsHandler, {"image_name": "bodies"}),
    ("/api/datasets/demo/sessions", api.DatasetSessionsHandler, {"dataset_ref": "demo"}),
    ("/api/datasets/demo/scene", correlation.SceneHandler, {"dataset_ref": "demo"}),
    ("/api/datasets/demo/annotation-layers", annotations.AnnotationLayersHandler, {"dataset_ref": "demo"}),
    ("/api/datasets/demo/annotation-layers/7", annotations.AnnotationLayerHandler, {"layer_id": "7"}),
    ("/api/datasets/demo/annotation-layers/7/annotations", annotations.AnnotationsHandler, {"layer_id": "7"}),
    ("/api/datasets/demo/annotation-layers/7/annotations/12", annotations.AnnotationHandler,
     {"layer_id": "7", "annotation_id": "12"}),
    ("/api/datasets/demo/annotation-layers/7/annotations/12/history", annotations.AnnotationHistoryHandler,
     {"annotation_id": "12"}),
    ("/api/datasets/demo/annotation-layers/7/export", annotations.AnnotationExportHandler, {"layer_id": "7"}),
    ("/api/datasets/demo/annotation-layers/7/import", annotations.AnnotationImportHandler, {"layer_id": "7"}),
    ("/api/datasets/demo/annotation-layers/7/precomputed/point/current/info",
     annotations.AnnotationSourceInfoHandler, {"layer_id": "7", "kind": "point", "view": "current"}),
    ("/api/datasets/demo/annotation-layers/7/precomputed/polyline/author=ann,label=syn/spatial2/1_0_3",
     annotations.AnnotationSourceCellHandler, {"view": "author=ann,label=syn", "level": "2", "cell": "1_0_3"}),
    ("/api/datasets/demo/annotation-layers/7/precomputed/line/as_of=17/by_id/12",
     annotations.AnnotationSourceByIdHandler, {"kind": "line", "view": "as_of=17", "annotation_id": "12"}),
    ("/api/datasets/demo/annotation-layers/7/precomputed/ellipsoid/current/rel_bodies/18446744073709551615",
     annotations.AnnotationSourceRelatedHandler, {"relationship": "bodies", "segment": "18446744073709551615"}),
    ("/api/sessions/abc_D-1", api.SessionHandler, {"token": "abc_D-1"}),
    ("/v/tok/", pages.NeuroglancerClientHandler, {"token": "tok", "name": ""}),
    ("/v/tok/main.js", pages.NeuroglancerClientHandler, {"name": "main.js"}),
    ("/events/tok", state_sync.EventsHandler, {"token": "tok"}),
    ("/state/tok", state_sync.SetStateHandler, {"token": "tok"}),
    ("/action/tok", state_sync.ActionHandler, {"token": "tok"}),
]


def match(path: str):
    for route in TABLE:
        found = re.fullmatch(route.pattern, path)
        if found:
            return route.handler, found.groupdict()
    return None, {}


@pytest.mark.parametrize(("path", "handler", "groups"), CASES)
def test_route(path: str, handler: type, groups: dict[str, str]) -> None:
    found, captured = match(path)
    assert found is handler
    for key, value in groups.items():
        assert captured[key] == value


def test_route_names_unique() -> None:
    names = [route.name for route in TABLE]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("route", TABLE, ids=[route.name for route in TABLE])
def test_every_route_declares_a_rule_for_each_method(route) -> None:  # type: ignore[no-untyped-def]
    """No route without a rule; a rule for exactly the methods its handler answers (HEAD follows GET)."""
    assert isinstance(route.rule, Rule), f"{route.name} has no access rule"
    answered = {m for m in ("GET", "POST", "PUT", "PATCH", "DELETE")
                if getattr(route.handler, m.lower()) is not getattr(RequestHandler, m.lower())}
    assert answered == set(route.rule.methods), f"{route.name}: handler answers {answered}"
    if route.rule.scope == "dataset":
        assert "(?P<dataset_ref>" in route.pattern
    if route.rule.scope == "session":
        assert "(?P<token>" in route.pattern
    if route.rule.scope == "shared":
        assert "(?P<code>" in route.pattern
    for flag in route.rule.escalations:
        assert route.rule.methods, f"{route.name}: escalation {flag} on a rule without methods"


@pytest.mark.parametrize(
    "path",
    ["/api/datasets/" + "9" * 5000, "/api/datasets/demo/images/" + "a" * 65, "/v/" + "t" * 65 + "/",
     "/api/datasets/demo/images/em/warped/0012/precomputed/info", "/static/%00", "/v/tok/" + "a" * 256,
     "/api/datasets/demo/annotation-layers/07", "/api/datasets/demo/annotation-layers/1/annotations/" + "9" * 11],
)
def test_unbounded_or_odd_paths_match_no_route(path: str) -> None:
    assert match(path) == (None, {})
