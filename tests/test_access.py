"""Who may see and change what, over real sockets: the access matrix of every route, and credentials.

The matrix tries every route of the table with six actors on a public and on a private dataset and
checks each answer against the rights written out below (pixels included). Writes are sent with bodies
the handlers refuse (or for things that do not exist), so an allowed write is a 400 or a 404 of the
thing itself, and nothing changes: the matrix runs on the shared scratch server.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from annotations.access import Access
from annotations.accounts import Accounts
from annotations.db import make_engine, make_sessions, sqlite_url
from tests.conftest import LAMELLA, Server, start_server, stop_server
from viewer.app import routes
from viewer.identity import ACCESS_CACHE_SECONDS

# Actor -> (account role, membership role on both datasets); None: anonymous.
ACTORS: dict[str, tuple[str, str | None] | None] = {
    "anonymous": None,
    "outsider": ("annotator", None),  # an account that is no member of either dataset
    "viewer": ("annotator", "viewer"),
    "annotator": ("annotator", "annotator"),
    "curator": ("curator", "curator"),
    "admin": ("admin", None),
}
# What each membership may do to a dataset, written out here independently of annotations.access.
RIGHTS = {"viewer": {"read"}, "annotator": {"read", "annotate"}, "curator": {"read", "annotate", "curate"}}
DATASETS = {"public": "correlative", "private": "embargoed"}
IMAGES = {"public": ("fluorescence", "0-64_0-64_0-56", "zarr.json"), "private": ("v2", "0-32_0-32_0-32", ".zattrs")}


@dataclass
class Matrix:
    server: Server
    tokens: dict[str, str]  # actor -> bearer token
    sessions: dict[tuple[str, str], str]  # (owner actor, visibility) -> viewer session token
    spline: int  # a thin-plate-spline transform of the public dataset's fluorescence
    shared: dict[str, str] = field(default_factory=dict)  # visibility -> the code of a shared view of its dataset

    def headers(self, actor: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[actor]}"} if actor in self.tokens else {}


def open_db(root: Path) -> Any:
    return make_sessions(make_engine(sqlite_url(root)))


@pytest.fixture(scope="module")
def matrix(scratch_server: Server) -> Matrix:
    server = scratch_server
    sessions = open_db(server.data_dir)  # type: ignore[arg-type]
    accounts, access = Accounts(sessions), Access(sessions)
    tokens = {"admin": server.admin_token}
    for actor, spec in ACTORS.items():
        if spec is None or actor == "admin":
            continue
        role, membership = spec
        accounts.create(f"m-{actor}", role)
        tokens[actor] = accounts.create_token(f"m-{actor}", label="matrix")[0]
        for dataset in DATASETS.values():
            if membership is not None:
                access.set_member(dataset, f"m-{actor}", membership)
    spline = requests.post(f"{server.url}/api/datasets/correlative/images/fluorescence/landmarks", timeout=60,
                           headers=server.admin, json={
                               "moving": [[0, 0, 0], [3000, 0, 0], [0, 3000, 0], [0, 0, 2000], [2000, 2000, 1000],
                                          [1000, 2500, 500]],
                               "reference": [[10, 0, 0], [3010, 30, 0], [0, 3020, 10], [20, 0, 2000],
                                             [2010, 2030, 990], [1000, 2510, 520]],
                               "fit": "tps"}).json()["transform"]["id"]
    made = Matrix(server, tokens, {}, spline)
    for actor in ACTORS:
        for visibility, dataset in DATASETS.items():
            answer = requests.post(f"{server.url}/api/datasets/{dataset}/sessions", headers=made.headers(actor),
                                   timeout=30)
            if answer.status_code == 201:
                made.sessions[(actor, visibility)] = answer.json()["token"]
    for visibility in DATASETS:
        shared = requests.post(f"{server.url}/api/sessions/{made.sessions[('admin', visibility)]}/share", timeout=30)
        made.shared[visibility] = shared.json()["code"]
    return made


# A request per route name: (path, JSON body or None) for a dataset of the given visibility. Bodies of
# writes are refused by the handler (or name things that do not exist), so nothing changes.
REFUSED = {"nothing": "valid"}  # every body model refuses this (a missing required field or an unknown value)


def _image(visibility: str) -> str:
    return f"/api/datasets/{DATASETS[visibility]}/images/{IMAGES[visibility][0]}"


def _project(visibility: str) -> str:
    return f"/api/datasets/{DATASETS[visibility]}/projects/no-such-project"


def _source(visibility: str) -> str:
    return f"/api/datasets/{DATASETS[visibility]}/annotation-layers/999999/precomputed/point/current"


REQUESTS: dict[str, Callable[[Matrix, str, str], tuple[str, Any]]] = {
    "catalog-page": lambda m, v, s: ("/", None),
    "dataset-page": lambda m, v, s: (f"/datasets/{DATASETS[v]}", None),
    "sign-in-page": lambda m, v, s: ("/sign-in", None),
    "api-docs-page": lambda m, v, s: ("/api/docs", None),
    "openapi": lambda m, v, s: ("/api/openapi.json", None),
    "static": lambda m, v, s: ("/static/js/api.js", None),
    "me": lambda m, v, s: ("/api/me", None),
    "sign-in": lambda m, v, s: ("/api/sign-in", REFUSED),
    "sign-out": lambda m, v, s: ("/api/sign-out", None),
    "tokens": lambda m, v, s: ("/api/tokens", REFUSED if s == "POST" else None),
    "token": lambda m, v, s: ("/api/tokens/999999", None),
    "accounts": lambda m, v, s: ("/api/accounts", None),
    "datasets": lambda m, v, s: ("/api/datasets", REFUSED if s == "POST" else None),
    "dataset": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}", {"title": None} if s == "PATCH" else None),
    "dataset-metadata": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/metadata?format=rembi", None),
    "dataset-thumbnail": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/thumbnail", None),
    "visibility": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/visibility", REFUSED if s == "PUT" else None),
    "members": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/members", None),
    "member": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/members/nobody-here", {"role": "viewer"}),
    "images": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/images", None),
    "image": lambda m, v, s: (_image(v), None),
    "dataset-sessions": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/sessions", None),
    "precomputed-info": lambda m, v, s: (f"{_image(v)}/precomputed/info", None),
    "precomputed-chunk": lambda m, v, s: (f"{_image(v)}/precomputed/0/{IMAGES[v][1]}", None),
    "zarr-store": lambda m, v, s: (f"{_image(v)}/zarr/{IMAGES[v][2]}", None),
    # An image without meshes: allowed is its mesh_not_found, refused the dataset's 404.
    "mesh-info": lambda m, v, s: (f"{_image(v)}/precomputed/mesh/0123456789ab/info", None),
    "mesh-shard": lambda m, v, s: (f"{_image(v)}/precomputed/mesh/0123456789ab/0.shard", None),
    "segment-surface": lambda m, v, s: (f"{_image(v)}/meshes/1", None),
    "stored-access": lambda m, v, s: (f"{_image(v)}/stored-access", None),
    # Neither image is a segmentation: a reader's answer is their 404 (not_a_segmentation), after the access check.
    "segment-properties": lambda m, v, s: (f"{_image(v)}/precomputed/segment_properties/info", None),
    "segments": lambda m, v, s: (f"{_image(v)}/segments", None),
    "transform": lambda m, v, s: (f"{_image(v)}/transform", REFUSED if s == "PUT" else None),
    "landmarks": lambda m, v, s: (f"{_image(v)}/landmarks", REFUSED),
    # Neither dataset has transforms: a reader's answer is the scene's 400 (invalid_transform), after the check.
    "scene": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/scene", None),
    "warped-info": lambda m, v, s: (f"{_image(v)}/warped/{m.spline}/precomputed/info", None),
    # Annotation routes on a layer that does not exist (an allowed request is its 404 or a 400 of the body).
    "annotation-layers": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/annotation-layers",
                                          REFUSED if s == "POST" else None),
    "annotation-layer": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/annotation-layers/999999",
                                         REFUSED if s == "PATCH" else None),
    "annotations": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/annotation-layers/999999/annotations",
                                    REFUSED if s == "POST" else None),
    "annotation": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/annotation-layers/999999/annotations/1",
                                   REFUSED if s == "PUT" else None),
    "annotation-export": lambda m, v, s: (
        f"/api/datasets/{DATASETS[v]}/annotation-layers/999999/export?format=csv", None),
    "annotation-import": lambda m, v, s: (
        f"/api/datasets/{DATASETS[v]}/annotation-layers/999999/import?format=csv", REFUSED),
    "annotation-history": lambda m, v, s: (
        f"/api/datasets/{DATASETS[v]}/annotation-layers/999999/annotations/1/history", None),
    "annotation-source-info": lambda m, v, s: (f"{_source(v)}/info", None),
    "annotation-source-cell": lambda m, v, s: (f"{_source(v)}/spatial0/0_0_0", None),
    "annotation-source-by-id": lambda m, v, s: (f"{_source(v)}/by_id/1", None),
    "annotation-source-related": lambda m, v, s: (f"{_source(v)}/rel_bodies/1", None),
    "warped-chunk": lambda m, v, s: (f"{_image(v)}/warped/{m.spline}/precomputed/0/0-64_0-64_0-64", None),
    "shared-view": lambda m, v, s: (f"/v/{m.shared[v]}", None),
    "region-info": lambda m, v, s: (f"{_image(v)}/region/0_0_0_8_8_8/precomputed/info", None),
    "region-chunk": lambda m, v, s: (f"{_image(v)}/region/0_0_0_8_8_8/precomputed/0/{IMAGES[v][1]}", None),
    # Citizen Science routes of a project that does not exist (an allowed request is its 404 or a 400 of the body).
    "project-page": lambda m, v, s: (f"/datasets/{DATASETS[v]}/projects/no-such-project", None),
    "dashboard-page": lambda m, v, s: (f"/datasets/{DATASETS[v]}/projects/no-such-project/dashboard", None),
    "projects": lambda m, v, s: (f"/api/datasets/{DATASETS[v]}/projects", REFUSED if s == "POST" else None),
    "project": lambda m, v, s: (_project(v), REFUSED if s == "PATCH" else None),
    "project-tasks": lambda m, v, s: (f"{_project(v)}/tasks", REFUSED if s == "POST" else None),
    "project-task": lambda m, v, s: (f"{_project(v)}/tasks/1", REFUSED),
    "project-gold": lambda m, v, s: (f"{_project(v)}/gold", REFUSED),
    "project-volunteer": lambda m, v, s: (f"{_project(v)}/me", None),
    "project-next": lambda m, v, s: (f"{_project(v)}/next", None),
    "project-submission": lambda m, v, s: (f"{_project(v)}/tasks/1/submission", REFUSED),
    "project-stats": lambda m, v, s: (f"{_project(v)}/stats", None),
    "project-consensus": lambda m, v, s: (f"{_project(v)}/consensus", None),
    "project-export": lambda m, v, s: (f"{_project(v)}/export?format=consensus", None),
    "project-tutorial-picture": lambda m, v, s: (f"{_project(v)}/tutorial/0", None),
}
# Session routes: (path suffix after the token, body). The session's owner is what matters.
SESSION_REQUESTS: dict[str, Callable[[str], tuple[str, Any]]] = {
    "session": lambda s: ("", REFUSED if s == "PUT" else None),
    "session-display": lambda s: ("/display", {"layers": {"no such layer": {"opacity": 1}}}),
    "session-landmark-layers": lambda s: ("/landmark-layers", REFUSED),
    "session-register": lambda s: ("/register", REFUSED),
    "neuroglancer-client": lambda s: ("/", None),
    "events": lambda s: ("?c=matrix", None),
    "state": lambda s: ("", REFUSED),
    "action": lambda s: ("", REFUSED),
    "credentials": lambda s: ("", REFUSED),
    "session-annotations": lambda s: ("/annotations", None),
    "session-share": lambda s: ("/share", None),
}
SESSION_PREFIX = {"session": "/api/sessions/", "session-display": "/api/sessions/",
                  "session-landmark-layers": "/api/sessions/", "session-register": "/api/sessions/",
                  "neuroglancer-client": "/v/", "events": "/events/", "state": "/state/", "action": "/action/",
                  "credentials": "/credentials/", "session-annotations": "/api/sessions/",
                  "session-share": "/api/sessions/"}
ROUTES = routes()


def test_every_route_is_in_the_matrix() -> None:
    assert {route.name for route in ROUTES} == set(REQUESTS) | set(SESSION_REQUESTS)


def may(actor: str, action: str, visibility: str) -> bool:
    """The rights written out: admins everything; anyone reads public datasets; members by their role."""
    spec = ACTORS[actor]
    if spec is not None and spec[0] == "admin":
        return True
    if action == "read" and visibility == "public":
        return True
    return spec is not None and spec[1] is not None and action in RIGHTS[spec[1]]


def may_server_wide(actor: str, action: str) -> bool:
    spec = ACTORS[actor]
    role = None if spec is None else spec[0]
    return {"anyone": True, "signed_in": role is not None, "create_datasets": role in ("curator", "admin"),
            "manage_accounts": role == "admin"}[action]


_BROWSERS: dict[str, requests.Session] = {}


def send(matrix: Matrix, method: str, path: str, body: Any, actor: str) -> requests.Response:
    """As ``actor``, from a client holding an _xsrf cookie and echoing it (as the pages do)."""
    client = _BROWSERS.get(matrix.server.url)
    if client is None:
        client = _BROWSERS[matrix.server.url] = requests.Session()
        client.get(f"{matrix.server.url}/sign-in", timeout=10)
    stream = path.startswith("/events/")
    headers = {**matrix.headers(actor), "X-XSRFToken": client.cookies["_xsrf"]}
    answer = client.request(method, matrix.server.url + path, json=body, headers=headers, timeout=30, stream=stream,
                            allow_redirects=False)
    if stream:
        answer.close()  # an event stream does not end: its status and headers are what we check
    return answer


def check(answer: requests.Response, allowed: bool, readable: bool, signed_in: bool, where: str) -> None:
    code = answer.headers.get("Content-Type", "").startswith("application/json") and answer.status_code >= 400 \
        and answer.json()["code"]
    if allowed:
        assert answer.status_code < 500, where
        assert answer.status_code not in (401, 403), f"{where}: refused {answer.status_code} {code}"
        assert code not in ("dataset_not_found", "session_not_found", "shared_view_not_found"), f"{where}: {code}"
    elif not readable:
        assert answer.status_code == 404 and code in ("dataset_not_found", "session_not_found",
                                                      "shared_view_not_found"), \
            f"{where}: {answer.status_code} {code} (a private dataset must not exist for this actor)"
    else:
        expected = 403 if signed_in else 401
        assert answer.status_code == expected, f"{where}: {answer.status_code} {code}, expected {expected}"


@pytest.mark.parametrize("visibility", ["public", "private"])
@pytest.mark.parametrize("actor", list(ACTORS))
def test_access_matrix(matrix: Matrix, actor: str, visibility: str) -> None:
    signed_in = ACTORS[actor] is not None
    for route in ROUTES:
        for method, action in route.rule.methods.items():
            where = f"{actor} {method} {route.name} ({visibility})"
            if route.rule.scope == "session":
                for owner in ACTORS:  # a session acts with its owner's rights, whoever sends the token
                    token = matrix.sessions.get((owner, visibility))
                    if token is None:  # the owner could not open one: it may not read the dataset
                        assert not may(owner, "read", visibility), f"{owner} opened no session ({visibility})"
                        continue
                    suffix, body = SESSION_REQUESTS[route.name](method)
                    answer = send(matrix, method, SESSION_PREFIX[route.name] + token + suffix, body, actor)
                    check(answer, may(owner, action, visibility), may(owner, "read", visibility),
                          ACTORS[owner] is not None, f"{where}, session of {owner}")
                continue
            path, body = REQUESTS[route.name](matrix, visibility, method)
            answer = send(matrix, method, path, body, actor)
            if route.rule.scope == "server":
                check(answer, may_server_wide(actor, action), True, signed_in, where)
            else:
                check(answer, may(actor, action, visibility), may(actor, "read", visibility), signed_in, where)


@pytest.mark.parametrize("visibility", ["public", "private"])
@pytest.mark.parametrize("actor", list(ACTORS))
def test_pixels_and_listing_follow_access(matrix: Matrix, actor: str, visibility: str) -> None:
    """The pixels themselves: a readable chunk is the chunk; the catalog lists exactly the readable datasets."""
    path, _ = REQUESTS["precomputed-chunk"](matrix, visibility, "GET")
    answer = send(matrix, "GET", path, None, actor)
    if may(actor, "read", visibility):
        assert answer.status_code == 200 and len(answer.content) > 100
        private = visibility == "private"
        assert answer.headers["Cache-Control"].startswith("private" if private else "public")
        assert ("Access-Control-Allow-Origin" in answer.headers) != private
        if private:
            assert "Authorization" in answer.headers["Vary"]
    else:
        assert answer.status_code == 404 and not answer.content.startswith(b"\xff\xd8")  # no JPEG
    listed = {d["name"] for d in send(matrix, "GET", "/api/datasets", None, actor).json()["datasets"]}
    assert (DATASETS[visibility] in listed) == may(actor, "read", visibility)


# Credentials


def sign_in(server: Server, name: str, password: str) -> requests.Session:
    web = requests.Session()
    web.get(f"{server.url}/sign-in", timeout=10)
    answer = web.post(f"{server.url}/api/sign-in", json={"name": name, "password": password},
                      headers={"X-XSRFToken": web.cookies["_xsrf"]}, timeout=30)
    assert answer.status_code == 200, answer.text
    return web


def test_sign_in_cookie_is_httponly_lax_and_writes_need_xsrf(scratch_server: Server) -> None:
    server = scratch_server
    accounts = Accounts(open_db(server.data_dir))  # type: ignore[arg-type]
    accounts.create("xsrf-user", "curator", password="xsrf-password-1")
    web = sign_in(server, "xsrf-user", "xsrf-password-1")
    cookie = next(c for c in web.cookies if c.name == "lamella_signin")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Lax"
    assert not cookie.secure  # plain HTTP here; Secure when served over HTTPS
    assert web.get(f"{server.url}/api/me", timeout=10).json()["name"] == "xsrf-user"
    body = {"name": "xsrf-made", "visibility": "private"}
    refused = web.post(f"{server.url}/api/datasets", json=body, timeout=10)
    assert refused.status_code == 403 and refused.json()["code"] == "xsrf_failed"
    wrong = web.post(f"{server.url}/api/datasets", json=body, headers={"X-XSRFToken": "2|00|11|22"}, timeout=10)
    assert wrong.status_code == 403 and wrong.json()["code"] == "xsrf_failed"
    assert server.get("/api/datasets/xsrf-made", headers=server.admin).status_code == 404  # nothing was made
    made = web.post(f"{server.url}/api/datasets", json=body, headers={"X-XSRFToken": web.cookies["_xsrf"]},
                    timeout=10)
    assert made.status_code == 201, made.text
    # A bearer token needs no XSRF header; a sign-in needs one even without a cookie yet.
    token, _ = accounts.create_token("xsrf-user")
    answer = requests.post(f"{server.url}/api/tokens", json={"label": "script"}, timeout=10,
                           headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201
    bare = requests.post(f"{server.url}/api/sign-in", json={"name": "xsrf-user", "password": "xsrf-password-1"},
                         timeout=10)
    assert bare.status_code == 403 and bare.json()["code"] == "xsrf_failed"
    # Sign-out ends the sign-in in the database: the same cookie no longer signs anyone in.
    stolen = dict(web.cookies)
    assert web.post(f"{server.url}/api/sign-out", headers={"X-XSRFToken": web.cookies["_xsrf"]},
                    timeout=10).status_code == 204
    time.sleep(ACCESS_CACHE_SECONDS + 0.5)
    again = requests.get(f"{server.url}/api/me", cookies=stolen, timeout=10).json()
    assert again["signed_in"] is False


@pytest.mark.parametrize(
    ("credential", "code"),
    [("Bearer lmt_" + "A" * 43, "not_authenticated"), ("Bearer nonsense", "not_authenticated"),
     ("Basic dXNlcjpwYXNz", "not_authenticated"), ("Bearer ", "not_authenticated"),
     ("Bearer " + "x" * 5000, "not_authenticated")],
)
def test_bad_tokens_are_401_json(server: Server, credential: str, code: str) -> None:
    answer = server.get("/api/datasets", headers={"Authorization": credential})
    assert answer.status_code == 401 and answer.json()["code"] == code
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_revoked_expired_and_disabled_are_refused_within_the_cache_time(scratch_server: Server) -> None:
    server = scratch_server
    sessions = open_db(server.data_dir)  # type: ignore[arg-type]
    accounts, access = Accounts(sessions), Access(sessions)
    accounts.create("short-lived", "annotator")
    access.set_member("embargoed", "short-lived", "viewer")
    revoked, record = accounts.create_token("short-lived")
    expiring, expiring_record = accounts.create_token("short-lived", expires_days=1)
    kept, _ = accounts.create_token("short-lived")
    path = "/api/datasets/embargoed/images/v2/precomputed/0/0-32_0-32_0-32"
    for token in (revoked, expiring, kept):
        assert server.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # Revoked through the API by its owner; expired by time (moved into the past in the database).
    assert requests.delete(f"{server.url}/api/tokens/{record.id}", headers={"Authorization": f"Bearer {kept}"},
                           timeout=10).status_code == 200
    with sqlite3.connect(server.data_dir / "lamella.sqlite") as db:  # type: ignore[operator]
        db.execute("UPDATE api_tokens SET expires_at = '2000-01-01 00:00:00' WHERE id = ?", (expiring_record.id,))
    started = time.monotonic()

    def refused(token: str) -> bool:
        return server.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 401

    while not (refused(revoked) and refused(expiring)):
        assert time.monotonic() - started < ACCESS_CACHE_SECONDS + 2, "revocation took longer than documented"
        time.sleep(0.2)
    assert server.get(path, headers={"Authorization": f"Bearer {kept}"}).status_code == 200
    # A disabled account: its remaining token stops working too.
    accounts.set_disabled("short-lived")
    started = time.monotonic()
    while not refused(kept):
        assert time.monotonic() - started < ACCESS_CACHE_SECONDS + 2, "disabling took longer than documented"
        time.sleep(0.2)
    answer = server.get(path, headers={"Authorization": f"Bearer {kept}"}).json()
    assert answer["code"] == "not_authenticated" and "disabled" in answer["message"]


def test_release_date_in_the_past_makes_a_private_dataset_public(scratch_server: Server) -> None:
    server = scratch_server
    access = Access(open_db(server.data_dir))  # type: ignore[arg-type]
    made = requests.post(f"{server.url}/api/datasets", headers=server.admin, timeout=10,
                         json={"name": "released", "visibility": "private", "release_date": "2030-01-01"})
    assert made.status_code == 201 and made.json()["public"] is False
    time.sleep(ACCESS_CACHE_SECONDS + 0.5)
    assert server.get("/api/datasets/released").status_code == 404
    from datetime import date

    access.set_visibility("released", "private", date(2001, 1, 1))  # the day has come: nobody acts
    time.sleep(ACCESS_CACHE_SECONDS + 0.5)
    answer = server.get("/api/datasets/released")
    assert answer.status_code == 200 and answer.json()["public"] is True
    assert answer.json()["visibility"] == "private" and answer.json()["release_date"] == "2001-01-01"
    assert "released" in [d["name"] for d in server.get("/api/datasets").json()["datasets"]]


def test_database_holds_neither_passwords_nor_tokens(scratch_server: Server) -> None:
    server = scratch_server
    accounts = Accounts(open_db(server.data_dir))  # type: ignore[arg-type]
    password = "a-password-nobody-can-grep-7f3c"
    accounts.create("hashed", "annotator", password=password)
    token, _ = accounts.create_token("hashed")
    web = sign_in(server, "hashed", password)
    cookie = web.cookies["lamella_signin"]
    assert server.get("/api/me", headers={"Authorization": f"Bearer {token}"}).json()["name"] == "hashed"
    stored = b"".join(path.read_bytes() for path in server.data_dir.glob("lamella.sqlite*"))  # type: ignore[union-attr]
    for secret in (password, token, token[4:], cookie):
        assert secret.encode() not in stored
    with sqlite3.connect(server.data_dir / "lamella.sqlite") as db:  # type: ignore[operator]
        (stored_hash,) = db.execute("SELECT password_hash FROM accounts WHERE name = 'hashed'").fetchone()
    assert stored_hash.startswith("$argon2id$")


def test_failed_sign_ins_are_slowed_then_refused(scratch_server: Server) -> None:
    server = scratch_server
    accounts = Accounts(open_db(server.data_dir))  # type: ignore[arg-type]
    accounts.create("target", "annotator", password="the-right-password")
    web = requests.Session()
    web.get(f"{server.url}/sign-in", timeout=10)

    def attempt(password: str) -> tuple[requests.Response, float]:
        started = time.monotonic()
        answer = web.post(f"{server.url}/api/sign-in", json={"name": "target", "password": password},
                          headers={"X-XSRFToken": web.cookies["_xsrf"]}, timeout=60)
        return answer, time.monotonic() - started

    for _ in range(3):  # the first failures are answered at once (one Argon2 check)
        answer, took = attempt("wrong")
        assert answer.status_code == 401 and answer.json()["code"] == "bad_credentials" and took < 1.0
    answer, took = attempt("wrong")
    assert answer.status_code == 401 and took >= 1.0  # slowed from the fourth failure on
    # Ten failures within the window: refused outright, the right password included, with Retry-After.
    with sqlite3.connect(server.data_dir / "lamella.sqlite") as db:  # type: ignore[operator]
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        db.executemany("INSERT INTO sign_in_failures (subject, failed_at) VALUES (?, ?)",
                       [("account:target", now)] * 6)
    answer, took = attempt("the-right-password")
    assert answer.status_code == 429 and answer.json()["code"] == "too_many_attempts"
    assert 0 < int(answer.headers["Retry-After"]) <= 15 * 60 and took < 1.0
    # Another account from the same address is not locked out by this one.
    accounts.create("bystander", "annotator", password="bystander-password")
    other = web.post(f"{server.url}/api/sign-in", json={"name": "bystander", "password": "bystander-password"},
                     headers={"X-XSRFToken": web.cookies["_xsrf"]}, timeout=60)
    assert other.status_code == 200


# The command line


def lamella(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAMELLA, *args, "--data-dir", str(root)], input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_cli_accounts_tokens_members_and_visibility(scratch_server: Server) -> None:
    root = scratch_server.data_dir
    assert root is not None
    added = lamella(root, "user", "add", "cli-cur", "--role", "curator", "--email", "cur@example.org",
                    "--password-stdin", stdin="cli-password-1\n")
    assert added.returncode == 0, added.stderr
    assert "cli-cur\tcurator\tactive\tcur@example.org" in lamella(root, "user", "list").stdout
    created = lamella(root, "token", "create", "cli-cur", "--label", "nightly", "--expires-days", "30")
    assert created.returncode == 0
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("lmt_") and len(token) == 47
    headers = {"Authorization": f"Bearer {token}"}
    assert scratch_server.get("/api/me", headers=headers).json()["name"] == "cli-cur"
    assert lamella(root, "member", "add", "embargoed", "cli-cur", "--role", "viewer").returncode == 0
    assert "cli-cur\tviewer" in lamella(root, "member", "list", "embargoed").stdout
    time.sleep(ACCESS_CACHE_SECONDS + 0.5)
    assert scratch_server.get("/api/datasets/embargoed", headers=headers).status_code == 200
    assert lamella(root, "member", "remove", "embargoed", "cli-cur").returncode == 0
    made = lamella(root, "visibility", "embargoed", "private", "--release", "2031-02-03")
    assert made.returncode == 0 and "2031-02-03" in made.stdout
    token_id = lamella(root, "token", "list", "cli-cur").stdout.split("\t")[0]
    assert lamella(root, "token", "revoke", token_id).returncode == 0
    assert "revoked" in lamella(root, "token", "list", "cli-cur").stdout
    assert lamella(root, "user", "disable", "cli-cur").returncode == 0
    assert "cli-cur\tcurator\tdisabled" in lamella(root, "user", "list").stdout


@pytest.mark.parametrize(
    "args",
    [
        ("user", "add", "x-bad", "--role", "wizard"),
        ("user", "add", "Bad Name", "--role", "annotator"),
        ("user", "add", "admin", "--role", "annotator"),  # taken
        ("user", "add", "short-pw", "--role", "annotator", "--password-stdin"),
        ("user", "disable", "nobody-at-all"),
        ("token", "create", "nobody-at-all"),
        ("token", "create", "admin", "--expires-days", "0"),
        ("token", "revoke", "999999"),
        ("visibility", "no-such-dataset", "private"),
        ("visibility", "embargoed", "secret"),
        ("visibility", "embargoed", "private", "--release", "2030-02-30"),
        ("visibility", "embargoed", "private", "--release", "tomorrow"),
        ("visibility", "embargoed", "public", "--release", "2030-01-01"),
        ("member", "add", "no-such-dataset", "admin", "--role", "viewer"),
        ("member", "add", "embargoed", "nobody-at-all", "--role", "viewer"),
        ("member", "add", "embargoed", "admin", "--role", "owner"),
    ],
)
def test_cli_bad_input_is_one_line_and_changes_nothing(scratch_server: Server, args: tuple[str, ...]) -> None:
    root = scratch_server.data_dir
    assert root is not None
    before = snapshot(root)
    result = lamella(root, *args, stdin="short\n" if "--password-stdin" in args else None)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("lamella: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(root) == before


def snapshot(root: Path) -> list[Any]:
    with sqlite3.connect(root / "lamella.sqlite") as db:
        return [db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("accounts", "api_tokens", "memberships", "datasets")]


@pytest.mark.postgres
def test_access_on_postgresql(database_url: str, tmp_path: Path) -> None:
    """The same rules on each database: a private dataset, a member's token, a revocation."""
    from tests.conftest import small_u8
    from tiling.pyramid import PyramidOptions, write_pyramid
    from tiling.sources import ArraySource

    store = tmp_path / "small.ome.zarr"
    write_pyramid(ArraySource(small_u8()), store, voxel_size=(10.0, 10.0, 10.0), options=PyramidOptions(chunk=32))
    common = ("--data-dir", str(tmp_path / "data"), "--database-url", database_url)

    def cli(*args: str) -> str:
        result = subprocess.run([*LAMELLA, *args, *common], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    cli("user", "add", "pg-viewer", "--role", "annotator")
    cli("add", str(store), "--dataset", "pg-private", "--name", "small", "--private")
    token = cli("token", "create", "pg-viewer").strip().splitlines()[-1]
    running = start_server(tmp_path / "data", "--database-url", database_url)
    try:
        chunk = "/api/datasets/pg-private/images/small/precomputed/0/0-32_0-32_0-32"
        headers = {"Authorization": f"Bearer {token}"}
        assert running.get(chunk).status_code == 404
        assert running.get(chunk, headers=headers).status_code == 404  # not a member yet
        cli("member", "add", "pg-private", "pg-viewer", "--role", "viewer")
        time.sleep(ACCESS_CACHE_SECONDS + 0.5)
        assert running.get(chunk, headers=headers).status_code == 200
        assert running.get("/api/datasets").json()["datasets"] == []
        cli("token", "revoke", cli("token", "list", "pg-viewer").split("\t")[0])
        time.sleep(ACCESS_CACHE_SECONDS + 0.5)
        assert running.get(chunk, headers=headers).status_code == 401
    finally:
        stop_server(running)


def test_cookie_key_is_made_once_private_and_cookies_are_secure_over_https(scratch_server: Server) -> None:
    server = scratch_server
    key = server.data_dir / "cookie-secret"  # type: ignore[operator]
    assert key.exists() and key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) >= 64
    accounts = Accounts(open_db(server.data_dir))  # type: ignore[arg-type]
    accounts.create("https-user", "annotator", password="https-password-1")
    web = requests.Session()
    web.get(f"{server.url}/sign-in", timeout=10)
    # Behind a TLS-terminating proxy (X-Forwarded-Proto), the sign-in cookie is Secure.
    answer = web.post(f"{server.url}/api/sign-in", json={"name": "https-user", "password": "https-password-1"},
                      headers={"X-XSRFToken": web.cookies["_xsrf"], "X-Forwarded-Proto": "https"}, timeout=30)
    assert answer.status_code == 200
    assert "Secure" in answer.headers["Set-Cookie"] and "HttpOnly" in answer.headers["Set-Cookie"]


def test_forwarded_headers_count_only_from_trusted_proxies(scratch_server: Server) -> None:
    """A client that is not a trusted proxy cannot claim HTTPS (or another address) with X-Forwarded-* headers."""
    accounts = Accounts(open_db(scratch_server.data_dir))  # type: ignore[arg-type]
    accounts.create("proxy-user", "annotator", password="proxy-password-1")
    for trusted, secure in (("10.0.0.0/8", False), ("10.0.0.0/8,127.0.0.1", True)):
        running = start_server(scratch_server.data_dir, env={"LAMELLA_TRUSTED_PROXIES": trusted})  # type: ignore[arg-type]
        try:
            web = requests.Session()
            web.get(f"{running.url}/sign-in", timeout=10)
            answer = web.post(f"{running.url}/api/sign-in",
                              json={"name": "proxy-user", "password": "proxy-password-1"},
                              headers={"X-XSRFToken": web.cookies["_xsrf"], "X-Forwarded-Proto": "https",
                                       "X-Forwarded-For": "203.0.113.9"}, timeout=30)
            assert answer.status_code == 200
            assert ("Secure" in answer.headers["Set-Cookie"]) is secure, trusted
        finally:
            stop_server(running)
