"""The HTTP contract over real sockets, for every route: one JSON error body (Tornado's own protocol errors
too), honest 405s and Allow headers, 416 with Content-Range, HEAD as GET, status lines that echo nothing,
messages without Python's words, 5xx logged once and cut short, and slow clients cut off."""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from annotations.catalog import Catalog
from annotations.db import make_engine, make_sessions, sqlite_url
from tests.conftest import Sample, Server, clone_data_dir, start_server, stop_server
from tiling.pyramid import PyramidOptions, write_pyramid
from tiling.sources import ArraySource
from viewer.apidoc import operation
from viewer.app import routes
from viewer.registration import add_existing
from viewer.server import MAX_CHUNKS

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Python's words for its own failures: no error message a client sees has them.
INTERNAL = re.compile(r"Error\b|Exception|Traceback|Value error|Assertion failed|function-(?:before|after|wrap|plain)"
                      r"|constrained-|object at 0x|<class|File \"|validation errors? for|errors\.pydantic\.dev")


# --- raw HTTP -------------------------------------------------------------------------------------


@dataclass
class Raw:
    """An answer read off a socket: status line, headers, body, and whether the server then closed."""

    status_line: str
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool = field(default=False)

    def json(self) -> Any:
        return json.loads(self.body)


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def exchange(server: Server, data: bytes, timeout: float = 10.0) -> Raw:
    """Send ``data`` on a new connection; read one answer (by Content-Length) and see whether the server closes."""
    with socket.create_connection(address(server), timeout=timeout) as connection:
        connection.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(65536)
            if not chunk:
                raise AssertionError(f"closed without an answer after {received!r}")
            received += chunk
        head, body = received.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                break
            body += chunk
        connection.settimeout(2.0)
        try:
            closed = connection.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            closed = False
    return Raw(lines[0], int(lines[0].split()[1]), headers, body, closed)


def json_error(status: int, content_type: str | None, body: bytes) -> dict[str, Any]:
    assert content_type is not None and content_type.startswith("application/json"), (status, content_type, body)
    error = json.loads(body)
    assert error["ok"] is False and error["status"] == status, error
    assert error["code"] and error["message"], error
    assert not INTERNAL.search(error["message"]), error["message"]
    return error


def error_of(response: requests.Response) -> dict[str, Any]:
    return json_error(response.status_code, response.headers.get("Content-Type"), response.content)


# --- concrete paths for every route -----------------------------------------------------------------


def new_session(server: Server) -> str:
    response = requests.post(f"{server.url}/api/datasets/demo/sessions", timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def path_values(server: Server) -> dict[str, str]:
    """Values of each path parameter that reach real resources of the test data directory."""
    token_id = requests.get(f"{server.url}/api/tokens", headers=server.admin, timeout=10).json()["tokens"][0]["id"]
    transform = requests.get(f"{server.url}/api/datasets/demo/images/fluorescence/transform", timeout=10).json()
    layers = f"{server.url}/api/datasets/demo/annotation-layers"
    layer = requests.post(layers, headers=server.admin, timeout=10, json={
        "name": "contract", "types": ["point"], "labels": [{"id": "synapse"}]}).json()
    middle = [(lo + hi) / 2 for lo, hi in zip(layer["lower_bound"], layer["upper_bound"], strict=True)]
    made = requests.post(f"{layers}/{layer['id']}/annotations", headers=server.admin, timeout=10,
                         json={"annotations": [{"type": "point", "point": middle, "label": "synapse"}]})
    annotation = {"layer_id": str(layer["id"]), "annotation_id": str(made.json()["ids"][0]), "kind": "point",
                  "view": "current", "level": "0", "cell": "0_0_0", "relationship": "bodies", "segment": "1"}
    project = requests.post(f"{server.url}/api/datasets/demo/projects", headers=server.admin, timeout=10, json={
        "name": "contract", "title": "Contract", "image": "em", "workflow": {
            "tool": "point", "labels": ["mitochondrion"], "task_shape": [64, 64, 8], "redundancy": 2,
            "tutorial": [{"text": "t", "picture": {"lower": [0, 0, 0], "upper": [64, 64, 1]}}]}})
    assert project.status_code == 201, project.text
    requests.post(f"{server.url}/api/datasets/demo/projects/contract/tasks", headers=server.admin, timeout=10,
                  json={"lower": [0, 0, 0], "upper": [64, 64, 8]})
    task = requests.get(f"{server.url}/api/datasets/demo/projects/contract/tasks", headers=server.admin,
                        timeout=10).json()["tasks"][0]["id"]
    token = new_session(server)
    code = requests.post(f"{server.url}/api/sessions/{token}/share", timeout=10).json()["code"]
    return {**annotation, "dataset_ref": "demo", "image_name": "em", "token": token, "code": code,
            "transform_id": str(transform["id"]), "token_id": str(token_id), "account": "admin", "scale_key": "0",
            "chunk_name": "0-64_0-64_0-64", "key": "zarr.json", "name": "index.html", "path": "css/lamella.css",
            "build": "0123456789ab", "shard": "0.shard", "project": "contract", "task_id": str(task),
            "region": "0_0_0_64_64_64", "step": "0"}


def concrete(pattern: str, values: dict[str, str]) -> str:
    return re.sub(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)", lambda group: values[group.group(1)], pattern)


@pytest.fixture(scope="module")
def values(scratch_server: Server) -> dict[str, str]:
    return path_values(scratch_server)


ROUTES = routes()


def test_every_route_has_a_concrete_path(scratch_server: Server, values: dict[str, str]) -> None:
    for route in ROUTES:
        path = concrete(route.pattern, values)
        assert re.fullmatch(route.pattern, path), (route.name, path)


# --- the state-sync 412 ---------------------------------------------------------------------------


def test_stale_state_post_is_412_with_the_json_error(scratch_server: Server) -> None:
    token = new_session(scratch_server)
    stale = requests.post(f"{scratch_server.url}/state/{token}", json={"s": {}, "g": 1, "pg": "gone", "c": "a"},
                          timeout=10)
    assert stale.status_code == 412
    assert error_of(stale)["code"] == "stale_generation"
    assert stale.headers["Cache-Control"] == "no-store"


# --- Tornado's own protocol errors ----------------------------------------------------------------

BODY_ROUTE = b"POST /api/sign-out HTTP/1.1\r\nHost: lamella\r\n"  # reads its body (anyone may post)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",  # malformed request line
        b"GET /api/datasets\r\n\r\n",  # no HTTP version
        b"GET /api/datasets HTTP/1.1\r\nHost: lamella\r\nno colon in this line\r\n\r\n",  # bad header line
        b"GET /api/datasets HTTP/1.1\r\nHost: lamella\r\n Folded: value\r\n\r\n",  # continuation without a header
        b"GET /api/datasets HTTP/1.1\r\nHost: lamella\r\nX-Control: a\x7fb\r\n\r\n",  # control character
        BODY_ROUTE + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",  # bad chunk size
        BODY_ROUTE + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n",  # chunk without its CRLF
        BODY_ROUTE + b"Content-Length: abc\r\n\r\n",  # Content-Length not a number
        BODY_ROUTE + b"Content-Length: -1\r\n\r\n",
        BODY_ROUTE + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",  # two different Content-Lengths
        BODY_ROUTE + b"Content-Length: 3, 4\r\n\r\nabcd",
        BODY_ROUTE + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # both framings
        BODY_ROUTE + b"Transfer-Encoding: gzip\r\n\r\n",  # a coding we do not take
    ],
    ids=["request-line", "no-version", "header-line", "folded", "control", "chunk-size", "chunk-crlf", "length-nan",
         "length-negative", "two-lengths", "length-list", "length-and-chunked", "transfer-coding"],
)
def test_protocol_errors_have_the_json_body(server: Server, request_bytes: bytes) -> None:
    answer = exchange(server, request_bytes)
    assert answer.status_line == "HTTP/1.1 400 Bad Request"
    assert json_error(400, answer.headers.get("content-type"), answer.body)["code"] == "malformed_request"
    assert answer.closed


def test_a_content_length_of_any_size_is_compared_not_converted(server: Server) -> None:
    """int() refuses more than 4300 digits: such a length was a 500; it is over every limit (413)."""
    answer = exchange(server, BODY_ROUTE + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n")
    assert answer.status == 413
    assert json_error(413, answer.headers.get("content-type"), answer.body)["code"] == "body_too_large"
    zeros = exchange(server, BODY_ROUTE + b"Content-Length: " + b"0" * 40 + b"2\r\nConnection: close\r\n\r\n{}")
    assert zeros.status == 204  # the same number, spelled long


@pytest.mark.parametrize("size", [70_000, 1_100_000])
def test_a_head_over_64_kib_is_a_json_431(server: Server, size: int) -> None:
    """Tornado closed such a connection without a word; the answer now arrives whole (the server reads what the
    client still sends for a while before closing, so that the close does not reset the connection)."""
    answer = exchange(server, b"GET /api/datasets HTTP/1.1\r\nHost: lamella\r\nX-Pad: " + b"a" * size + b"\r\n\r\n")
    assert answer.status == 431 and answer.closed
    assert json_error(431, answer.headers.get("content-type"), answer.body)["code"] == "headers_too_large"
    assert exchange(server, b"GET /api/datasets HTTP/1.1\r\nHost: lamella\r\nX-Pad: " + b"a" * 60_000 +
                    b"\r\nConnection: close\r\n\r\n").status == 200


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"HEAD /api/datasets HTTP/1.1\r\nHost: lamella\r\nno colon in this line\r\n\r\n", 400),
    (b"HEAD /api/sign-out HTTP/1.1\r\nHost: lamella\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"HEAD /api/datasets HTTP/1.1\r\nHost: lamella\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n", 431),
], ids=["header-line", "chunk-size", "head-too-large"])
def test_protocol_errors_to_a_head_have_no_body(server: Server, request_bytes: bytes, status: int) -> None:
    answer = exchange(server, request_bytes)
    assert answer.status == status and answer.closed
    assert answer.body == b"" and int(answer.headers["content-length"]) > 0  # what a GET would have had
    assert answer.headers["content-type"].startswith("application/json")


def chunked(size: int, count: int) -> bytes:
    return b"%x\r\n" % size + (b" " * size + b"\r\n%x\r\n" % size) * (count - 1) + b" " * size + b"\r\n0\r\n\r\n"


def test_a_body_in_too_many_chunks_is_a_json_400(server: Server) -> None:
    """Each chunk costs the server about 10 us of its one thread: 65,536 one-byte chunks held other clients'
    answers for up to a second (tests/test_stall.py)."""
    head = b"POST /api/datasets HTTP/1.1\r\nHost: lamella\r\nTransfer-Encoding: chunked\r\n\r\n"
    for count in (MAX_CHUNKS + 1, 65_537):
        answer = exchange(server, head + chunked(1, count))
        error = json_error(400, answer.headers.get("content-type"), answer.body)
        assert error["code"] == "malformed_request" and f"{MAX_CHUNKS} chunks" in error["message"] and answer.closed
    assert exchange(server, head + chunked(1, MAX_CHUNKS)).status == 401  # as many as that are read


def test_a_chunk_size_line_over_64_bytes_is_a_json_400(server: Server) -> None:
    answer = exchange(server, BODY_ROUTE + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 100 + b"1\r\na\r\n0\r\n\r\n")
    assert answer.status == 400 and answer.closed
    assert json_error(400, answer.headers.get("content-type"), answer.body)["code"] == "malformed_request"


def half_closed(server: Server, data: bytes, timeout: float = 10.0) -> tuple[list[int], float]:
    """Send ``data``, shut down our sending side, read until the server closes: the statuses and how long."""
    started = time.monotonic()
    with socket.create_connection(address(server), timeout=timeout) as connection:
        connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return [int(line.split()[1]) for line in re.findall(rb"HTTP/1\.1 \d+ [^\r]*", received)], \
        time.monotonic() - started


def test_pipelined_requests_then_a_half_close_are_all_answered(scratch_server: Server) -> None:
    """Tornado closed the connection when the client's side ended, answers in progress with it."""
    chunk = "/api/datasets/demo/images/em/precomputed/0/0-64_0-64_0-64"
    requests_bytes = [f"{method} {path} HTTP/1.1\r\nHost: lamella\r\n{extra}\r\n".encode() for method, path, extra in [
        ("GET", "/api/datasets/demo", ""), ("HEAD", "/api/datasets", ""), ("GET", chunk, ""),
        ("POST", "/api/datasets/demo/sessions", "Content-Length: 0\r\n"), ("GET", "/nope", "")]]
    for count in range(1, len(requests_bytes) + 1):
        statuses, _ = half_closed(scratch_server, b"".join(requests_bytes[:count]))
        assert statuses == [200, 200, 200, 201, 404][:count]


def test_an_event_stream_ends_with_the_clients_side(scratch_server: Server) -> None:
    """An endless answer is the exception: a client that is done sending is done listening."""
    token = new_session(scratch_server)
    statuses, took = half_closed(scratch_server, f"GET /events/{token}?c=a HTTP/1.1\r\nHost: lamella\r\n\r\n".encode())
    assert statuses == [200] and took < 5


def test_connection_close_is_said_when_and_only_when_the_server_closes(server: Server) -> None:
    over = b'{"a": "' + b"x" * 70_000 + b'"}'
    drained = exchange(server, BODY_ROUTE + b"Content-Length: %d\r\n\r\n" % len(over) + over)
    assert drained.status == 413 and "connection" not in drained.headers and not drained.closed
    # Tornado's own refusal of a method comes before a handler that reads bodies has read one: Tornado closes the
    # connection, and the answer now says so.
    refused = exchange(server, b"PROPFIND /api/datasets HTTP/1.1\r\nHost: lamella\r\n\r\n")
    assert refused.status == 405 and refused.headers.get("connection") == "close" and refused.closed
    kept = exchange(server, b"PROPFIND /api/me HTTP/1.1\r\nHost: lamella\r\n\r\n")  # a handler without bodies
    assert kept.status == 405 and "connection" not in kept.headers and not kept.closed


# --- 405 and Allow --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=[route.name for route in ROUTES])
def test_allow_lists_exactly_the_methods_that_do_not_answer_405(scratch_server: Server, values: dict[str, str],
                                                                 route) -> None:  # type: ignore[no-untyped-def]
    url = scratch_server.url + concrete(route.pattern, values)
    answers = {method: requests.request(method, url, timeout=10) for method in [*METHODS, "TRACE", "FOO"]}
    refused = {method: answer for method, answer in answers.items() if answer.status_code == 405}
    assert refused, f"{route.name} answers every method"
    allows = {answer.headers.get("Allow") for answer in refused.values()}
    assert len(allows) == 1 and None not in allows, allows
    allowed = [method.strip() for method in allows.pop().split(",")]
    for method in allowed:
        assert method in METHODS and answers[method].status_code != 405, (method, answers[method].status_code)
    for method, answer in refused.items():
        assert method not in allowed
        if method != "HEAD":  # (no body)
            error = error_of(answer)
            assert error["code"] == "method_not_allowed"
            # Methods Tornado itself refuses (not in its SUPPORTED_METHODS) get its phrase, never just "error".
            expected = f"this route does not answer {method}" if method in METHODS else "method not allowed"
            assert error["message"] == expected, (method, error)


# --- 416 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("header", ["bytes=999999-", "bytes=5-2", "bytes=" + "9" * 30 + "-", "bytes=-0"])
def test_unsatisfiable_range_is_416_with_content_range(server: Server, method: str, header: str) -> None:
    url = server.url + "/api/datasets/tests/images/u16/zarr/0/c/0/0/0"
    size = len(requests.get(url, timeout=10).content)
    answer = requests.request(method, url, headers={"Range": header}, timeout=10)
    assert answer.status_code == 416
    assert answer.headers["Content-Range"] == f"bytes */{size}"
    if method == "GET":
        assert error_of(answer)["code"] == "range_not_satisfiable"


# --- HEAD is GET without the body -----------------------------------------------------------------

VARYING = {"Date", "Set-Cookie"}  # pages set a fresh _xsrf cookie each time


@pytest.mark.parametrize("who", ["anonymous", "admin"])
@pytest.mark.parametrize("route", [r for r in ROUTES if "GET" in r.rule.methods and r.name != "events"],
                         ids=[r.name for r in ROUTES if "GET" in r.rule.methods and r.name != "events"])
def test_head_answers_as_get_without_a_body(scratch_server: Server, values: dict[str, str], who: str,
                                            route) -> None:  # type: ignore[no-untyped-def]
    url = scratch_server.url + concrete(route.pattern, values)
    headers = scratch_server.admin if who == "admin" else {}
    get = requests.get(url, headers=headers, timeout=10, allow_redirects=False)  # HEAD does not follow either
    head = requests.head(url, headers=headers, timeout=10)
    assert head.status_code == get.status_code and head.content == b""
    assert {k: v for k, v in head.headers.items() if k not in VARYING} == \
        {k: v for k, v in get.headers.items() if k not in VARYING}
    assert ("Set-Cookie" in head.headers) == ("Set-Cookie" in get.headers)
    if operation(route.handler, "GET").content == "application/json" and get.status_code == 200:
        assert get.headers["Content-Type"].startswith("application/json")


def test_head_of_the_event_stream_is_its_headers(scratch_server: Server, values: dict[str, str]) -> None:
    head = requests.head(f"{scratch_server.url}/events/{values['token']}?c=a", timeout=10)
    assert head.status_code == 200 and head.headers["Content-Type"] == "text/event-stream" and head.content == b""
    assert requests.head(f"{scratch_server.url}/events/{values['token']}", timeout=10).status_code == 400


# --- status lines -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/nope-{r}", "/api/datasets/{r}", "/api/datasets/demo/images/{r}", "/static/{r}.css", "/v/tok/{r}.js",
     "/api/datasets/demo/images/em/zarr/{r}", "/nope/{r}%0D%0AX-Injected:%20yes"],
)
def test_status_line_never_echoes_the_path(server: Server, path: str) -> None:
    marker = "p" + secrets.token_hex(60)
    target = path.format(r=marker)
    answer = exchange(server, f"GET {target} HTTP/1.1\r\nHost: lamella\r\nConnection: close\r\n\r\n".encode())
    assert answer.status_line == "HTTP/1.1 404 Not Found"
    assert "x-injected" not in answer.headers
    assert marker not in json.dumps(answer.headers)


# --- error messages -----------------------------------------------------------------------------------

GARBAGE_BODIES = [b"nul", b"{", b"[]", b"null", b"3", b'"text"', b"NaN", b'{"a": Infinity}', b"[1e400]", b'"\\ud800"',
                  b'"\xff"', b"[" * 100 + b"]" * 100, b'{"a":' + b"9" * 500 + b"}", b"\x00", b'{"a": 1, "a": {}}']


def spoil_with_nul(example: Any) -> Iterator[Any]:
    """``example`` with each of its strings in turn replaced by one holding NUL, and each value by a list."""
    if isinstance(example, dict):
        for key, value in example.items():
            for spoiled in spoil_with_nul(value):
                yield {**example, key: spoiled}
            yield {**example, key: [[]]}
    elif isinstance(example, str):
        yield example + "\x00"


@pytest.fixture(scope="module")
def error_answers(scratch_server: Server, values: dict[str, str]) -> list[tuple[str, requests.Response]]:
    """Answers to requests that fail, as an admin: garbage and spoiled bodies to every route that takes one,
    hostile query arguments, paths and headers."""
    answers = []
    for route in ROUTES:
        url = scratch_server.url + concrete(route.pattern, values)
        for method in route.rule.methods:
            declared = operation(route.handler, method)
            bodies = list(GARBAGE_BODIES)
            if declared.body is not None:
                for example in declared.body.model_config.get("json_schema_extra", {}).get("examples", []):
                    bodies += [json.dumps(spoiled).encode() for spoiled in spoil_with_nul(example)]
            if declared.query is not None:
                for query in ["format=x&history=2", "c=&gs=" + "x" * 200, "c=%ff%fe", "c=a%00", "c"]:
                    answer = requests.get(f"{url}?{query}", headers=scratch_server.admin, timeout=10)
                    answers.append((f"{route.name} ?{query}", answer))
            if method == "GET" or route.name in ("token", "sign-out", "member", "visibility"):
                continue  # no body; or a write that would take the admin's token or rights away
            for body in bodies:
                answers.append((f"{method} {route.name} {body[:40]!r}",
                                requests.request(method, url, data=body, headers=scratch_server.admin, timeout=30)))
    hostile = ["/api/datasets/demo/images/em/zarr/0/%2e%2e/x", "/api/datasets/demo/images/em/precomputed/9/0-1_0-1_0-1",
               "/api/datasets/demo/images/em/precomputed/0/" + "9" * 90, "/api/datasets/demo/images/em/zarr/0/c%00",
               "/api/datasets/demo/images/em/warped/1/precomputed/info", "/api/sessions/nope", "/events/nope?c=a"]
    for path in hostile:
        answers.append((path, requests.get(scratch_server.url + path, timeout=10)))
    for header in ["bytes=x", "bytes=1-0", "bytes=" + "9" * 40 + "-"]:
        answers.append((header, requests.get(scratch_server.url + "/api/datasets/demo/images/em/zarr/zarr.json",
                                             headers={"Range": header}, timeout=10)))
    answers.append(("bad token", requests.get(scratch_server.url + "/api/me",
                                              headers={"Authorization": "Bearer \u00e9" * 3}, timeout=10)))
    return answers


def test_error_answers_are_json_without_python_words(error_answers: list[tuple[str, requests.Response]]) -> None:
    errors = [(what, answer) for what, answer in error_answers if answer.status_code >= 400]
    assert len(errors) > 200
    for what, answer in errors:
        assert answer.status_code < 500, (what, answer.status_code, answer.text)
        try:
            error_of(answer)
        except AssertionError as failure:
            raise AssertionError(f"{what}: {failure}") from None


def test_nul_in_a_body_is_named_plainly(scratch_server: Server) -> None:
    token = new_session(scratch_server)
    answer = requests.post(f"{scratch_server.url}/state/{token}", json={"s": {}, "g": "a\x00", "pg": "", "c": "a"},
                           timeout=10)
    assert error_of(answer)["message"] == "g: expected a number; g: text may not contain NUL characters"


# --- 5xx: logged once, cut short --------------------------------------------------------------------

SLOW_CLIENT_SECONDS = 2  # the header and body timeouts of the server below


SPOILED_METADATA = {
    "not JSON": "{",
    "a list": "[]",
    "too deep": "[" * 100_000,
    "no multiscales": '{"zarr_format": 3, "node_type": "group", "attributes": {"ome": {}}}',
    "multiscales a number": '{"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"multiscales": 5}}}',
    "multiscales of numbers": '{"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"multiscales": [5]}}}',
    "ome a list": '{"zarr_format": 3, "node_type": "group", "attributes": {"ome": []}}',
    "attributes a string": '{"zarr_format": 3, "node_type": "group", "attributes": "x"}',
    "axes a number": '{"zarr_format": 3, "attributes": {"ome": {"version": "0.5", "multiscales": [{"axes": 3}]}}}',
    "version a list": '{"zarr_format": 3, "attributes": {"ome": {"version": [1], "multiscales": [{}]}}}',
}
SPOILED_DOCUMENTS = {  # changes to the real metadata (zarr.json of an OME-Zarr 0.5 group)
    "transforms of another rank": lambda ms: ms["datasets"][0].update(coordinateTransformations=[
        {"type": "scale", "scale": [1, 1]}]),
    "huge scale": lambda ms: ms.update(coordinateTransformations=[{"type": "scale", "scale": [10**400, 1, 1]}]),
    "axis without a name": lambda ms: ms["axes"][0].pop("name"),
    "datasets a number": lambda ms: ms.update(datasets=7),
    "a transform a number": lambda ms: ms["datasets"][0].update(coordinateTransformations=[3]),
}
SPOILS = [*SPOILED_METADATA, *SPOILED_DOCUMENTS]


@dataclass
class OwnServer:
    server: Server
    log: Path
    stores: dict[str, Path]  # image name in the dataset "broken" -> its store, for the tests to spoil


@pytest.fixture(scope="module")
def own_server(data_dir: tuple[Path, Sample], tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    """A server on a copy of the test data with images of its own to break (an opened image stays open: one
    image per way of breaking it), short timeouts, and its log kept."""
    root = clone_data_dir(data_dir[0], tmp_path_factory.mktemp("contract-data"))
    folder = tmp_path_factory.mktemp("contract-stores")
    engine = make_engine(sqlite_url(root))
    catalog = Catalog(make_sessions(engine))
    stores = {}
    for number, spoil in enumerate(["log", *SPOILS]):
        stores[spoil] = store = folder / f"b{number}.ome.zarr"
        write_pyramid(ArraySource(np.zeros((8, 16, 16), np.uint8)), store, voxel_size=(1.0, 1.0, 1.0),
                      options=PyramidOptions(chunk=8, name=f"b{number}"))
        add_existing(catalog, str(store), "broken", name=f"b{number}")
    engine.dispose()
    log = root / "server.log"
    with log.open("w") as stderr:
        running = start_server(root, stderr=stderr, env={
            "LAMELLA_HEADER_TIMEOUT_SECONDS": str(SLOW_CLIENT_SECONDS),
            "LAMELLA_BODY_TIMEOUT_SECONDS": str(SLOW_CLIENT_SECONDS),
        })
    yield OwnServer(running, log, stores)
    stop_server(running)


def spoil(store: Path, how: str) -> str:
    """Break the group metadata of ``store``; returns the original text."""
    original = (store / "zarr.json").read_text()
    if how in SPOILED_DOCUMENTS:
        document = json.loads(original)
        SPOILED_DOCUMENTS[how](document["attributes"]["ome"]["multiscales"][0])
        (store / "zarr.json").write_text(json.dumps(document))
    else:
        (store / "zarr.json").write_text(SPOILED_METADATA[how])
    return original


@pytest.mark.parametrize("how", SPOILS)
def test_spoiled_metadata_is_a_503_never_a_500(own_server: OwnServer, how: str) -> None:
    store = own_server.stores[how]
    url = f"/api/datasets/broken/images/{store.name.split('.')[0]}/precomputed/info"
    original = spoil(store, how)
    try:
        answer = own_server.server.get(url)
        assert answer.status_code == 503, answer.text
        assert error_of(answer)["code"] == "store_invalid"
    finally:
        (store / "zarr.json").write_text(original)
    assert own_server.server.get(url).status_code == 200  # a failure is not kept: the mended image opens


def read_log(own: OwnServer, until: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = own.log.read_text(errors="replace")
        if until in text or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def test_a_5xx_logs_its_path_once_cut_short_with_one_traceback(own_server: OwnServer) -> None:
    marker = "m" + secrets.token_hex(8)
    key = "/".join([marker + "a" * 200] * 4) + "/zarr.json"  # a path of about 900 characters
    path = "/api/datasets/broken/images/b0/zarr/" + key  # b0: the store kept for this test
    before = own_server.log.read_text(errors="replace")
    spoil(own_server.stores["log"], "multiscales a number")
    answer = own_server.server.get(path)
    assert answer.status_code == 503 and error_of(answer)["code"] == "store_invalid"
    logged = read_log(own_server, marker)[len(before):]
    assert logged.count(marker) == 1, logged
    assert logged.count("Traceback (most recent call last)") == 1, logged
    line = next(line for line in logged.splitlines() if marker in line)
    shown = line[line.index("/api/"):line.index("…") + 1]
    assert len(shown) == 201 and path.startswith(shown[:-1]), line


@pytest.mark.parametrize("header", [b"X-Control: a\x7f" + b"z" * 50_000, b"Transfer-Encoding: " + b"q" * 50_000,
                                    b"Content-Length: 1" + b"x" * 50_000, b"Host: a b" + b"c" * 50_000])
def test_a_malformed_request_logs_one_short_line(own_server: OwnServer, header: bytes) -> None:
    before = own_server.log.stat().st_size
    host = b"" if header.startswith(b"Host:") else b"Host: lamella\r\n"
    answer = exchange(own_server.server, b"POST /api/sign-out HTTP/1.1\r\n" + host + header + b"\r\n\r\n")
    assert answer.status == 400
    time.sleep(0.3)
    with own_server.log.open("rb") as log:
        log.seek(before)
        logged = log.read().decode(errors="replace")
    assert logged.count("\n") <= 1 and len(logged) < 600, logged[:1000]


# --- slow clients ---------------------------------------------------------------------------------------


def held_for(server: Server, data: bytes, trickle: bytes = b"", wait: float = 6.0) -> float:
    """Seconds until the server closes a connection that sent ``data`` (then ``trickle`` a byte a second)."""
    started = time.monotonic()
    with socket.create_connection(address(server), timeout=wait) as connection:
        connection.sendall(data)
        connection.settimeout(1.0)
        for byte in [trickle[i:i + 1] for i in range(len(trickle))] or [b""] * int(wait):
            try:
                if connection.recv(65536) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
            except ConnectionResetError:
                return time.monotonic() - started
            if time.monotonic() - started > wait:
                break
            try:
                connection.sendall(byte)
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - started
    return float("inf")


SLOW_CLIENTS = {
    "half a request line": (b"GET /api/datas", b""),
    "headers without the blank line": (b"GET /api/datasets HTTP/1.1\r\nHost: lamella\r\nAccept: */*\r\n", b""),
    "a trickled body": (BODY_ROUTE + b"Content-Length: 100\r\n\r\n", b"x" * 100),
}


def test_slow_clients_are_cut_off_while_others_are_served(own_server: OwnServer, server: Server) -> None:
    results: dict[str, float] = {}

    def hold(name: str, target: Server, data: bytes, trickle: bytes) -> None:
        results[name] = held_for(target, data, trickle)

    threads = [threading.Thread(target=hold, args=(name, own_server.server, *sent)) for name, sent in
               SLOW_CLIENTS.items()]
    # The same half request line to a server with the default 30 s: still held when the others are cut off.
    threads.append(threading.Thread(target=hold, args=("default", server, b"GET /api/datas", b"")))
    for thread in threads:
        thread.start()
    served = []
    while any(thread.is_alive() for thread in threads[:-1]):
        started = time.monotonic()
        assert own_server.server.get("/api/datasets").status_code == 200
        served.append(time.monotonic() - started)
        time.sleep(0.2)
    for thread in threads:
        thread.join()
    for name in SLOW_CLIENTS:
        assert SLOW_CLIENT_SECONDS - 0.5 < results[name] < SLOW_CLIENT_SECONDS + 3, (name, results[name])
    assert results["default"] == float("inf")
    assert len(served) >= 5 and max(served) < 1.0, served


# --- If-None-Match ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/api/datasets/demo/images/em/precomputed/0/0-64_0-64_0-64", "/api/datasets/tests/images/u16/zarr/0/c/0/0/0",
     "/api/datasets/demo/images/em/precomputed/info", "/static/css/lamella.css"],
)
def test_odd_if_none_match_values_give_200_or_304(server: Server, path: str) -> None:
    fresh = server.get(path)
    assert fresh.status_code == 200
    etag = fresh.headers["ETag"]
    odd = ["*", " * ", "W/" + etag, f'"a", {etag}', f'{etag}, W/"b"', f'W/"a",W/{etag}', "W/W/" + etag, etag[1:-1],
           etag + "x", "garbage", '"', ",,,", "W/", '""', "*, *", ", ".join(['"x"'] * 2000), "a" * 10_000,
           "\u00e9".encode(), b"\xff\xfe", etag + "\t"]
    for value in odd:
        raw = value if isinstance(value, bytes) else value.encode()
        answer = exchange(server, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: lamella\r\nConnection: close\r\n"
                                  b"If-None-Match: " + raw + b"\r\n\r\n")
        assert answer.status in (200, 304), (value, answer.status_line, answer.body[:200])
        if answer.status == 304:
            assert answer.body == b"" and answer.headers["etag"] == etag
    assert requests.get(server.url + path, headers={"If-None-Match": etag}, timeout=10).status_code == 304
    assert requests.get(server.url + path, headers={"If-None-Match": '"nope"'}, timeout=10).status_code == 200


def test_if_none_match_with_a_control_character_is_a_malformed_request(server: Server) -> None:
    answer = exchange(server, b"GET /api/datasets/demo/images/em/precomputed/info HTTP/1.1\r\nHost: lamella\r\n"
                              b"If-None-Match: \"a\x00b\"\r\n\r\n")
    assert answer.status == 400 and json_error(400, answer.headers.get("content-type"), answer.body)


def test_a_streamed_answer_to_http_1_0_ends_with_the_connection(scratch_server: Server) -> None:
    """HTTP/1.0 has no chunked framing: a streamed export asked for with keep-alive must close when it is done."""
    layers = f"{scratch_server.url}/api/datasets/demo/annotation-layers"
    layer = requests.post(layers, headers=scratch_server.admin, timeout=10, json={
        "name": "http-1-0", "types": ["point"], "labels": [{"id": "synapse"}]}).json()
    path = f"/api/datasets/demo/annotation-layers/{layer['id']}/export?format=csv"
    request = f"GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n".encode()
    received = b""
    with socket.create_connection(address(scratch_server), timeout=10) as connection:
        connection.sendall(request + f"Authorization: Bearer {scratch_server.admin_token}\r\n\r\n".encode())
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except TimeoutError:
            raise AssertionError(f"the connection stayed open after {received[:300]!r}") from None
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 200 OK") and b"keep-alive" not in head.lower(), head
    assert b"content-length" not in head.lower() and body.startswith(b"id,")
