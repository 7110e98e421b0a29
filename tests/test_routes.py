"""The one route table: paths map to the handlers we expect, with the groups we expect."""

import re

import pytest

from viewer.app import routes
from viewer.handlers import api, data, pages, state_sync

TABLE = routes(services=None)  # type: ignore[arg-type]

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
    ("/api/datasets/demo/sessions", api.DatasetSessionsHandler, {"dataset_ref": "demo"}),
    ("/api/sessions/abc_D-1", api.SessionHandler, {"token": "abc_D-1"}),
    ("/v/tok/", pages.NeuroglancerClientHandler, {"token": "tok", "name": ""}),
    ("/v/tok/main.js", pages.NeuroglancerClientHandler, {"name": "main.js"}),
    ("/events/tok", state_sync.EventsHandler, {"token": "tok"}),
    ("/state/tok", state_sync.SetStateHandler, {"token": "tok"}),
    ("/action/tok", state_sync.ActionHandler, {"token": "tok"}),
]


def match(path: str):
    for pattern, handler, _, _ in TABLE:
        found = re.fullmatch(pattern, path)
        if found:
            return handler, found.groupdict()
    return None, {}


@pytest.mark.parametrize(("path", "handler", "groups"), CASES)
def test_route(path: str, handler: type, groups: dict[str, str]) -> None:
    found, captured = match(path)
    assert found is handler
    for key, value in groups.items():
        assert captured[key] == value


def test_route_names_unique() -> None:
    names = [name for *_, name in TABLE]
    assert len(names) == len(set(names))
