"""No request stalls the server for anyone else (issue 18): while one client sends each kind of oversized or
pathological request, another client's requests (the catalog, a chunk) keep being answered.

The target is 100 ms, measured on a quiet machine with ``make stall`` (``STALL_LIMIT_MS=100``; figures in
docs/benchmarks.md). ``make test`` asserts 500 ms: a request that holds everyone else for half a second is a
bug on any machine, while a wait of 100-250 ms is what a busy 2-core machine adds by itself.

Each kind is sent again and again for a while (at least once; the next one ``PAUSE`` after the last answer)
by one thread, while this thread times the other client's requests one after the other on a connection it
opens for the purpose. The longest wait is printed for each kind (the issue's note: the longest stall for
another client under each pathological request), with the answers the pathological requests got.

A stall a request causes shows every time it is sent; this 2-core machine's other work (other test runs)
shows now and then: a kind whose longest wait is over the limit is measured again, up to ``ATTEMPTS``
times in all, and the shortest of its longest waits counts. Every attempt is printed. One client sending
such requests back to back is a flood, which takes the server's one thread from everyone in proportion:
``STALL_FLOOD=1`` measures that instead, and prints it without asserting.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import Server
from tests.rawhttp import Broken, Connection, address_of
from viewer.app import STATE_BODY
from viewer.bodies import MAX_VALUES
from viewer.server import MAX_CHUNKS

STALL_LIMIT = float(os.environ.get("STALL_LIMIT_MS", "500")) / 1000  # seconds another client may wait
ATTEMPTS = 3
WINDOW = 2.0  # seconds each kind is sent for, again and again
PAUSE = 0.05  # seconds between one answer and the next request of the kind (0: a flood, see FLOOD)
FLOOD = bool(os.environ.get("STALL_FLOOD"))  # back to back instead: what one client's flood costs others (printed)
CHUNK = "/api/datasets/demo/images/em/precomputed/0/0-64_0-64_0-64"
LANDMARKS = "/api/datasets/correlative/images/fluorescence/landmarks"


@dataclass
class Target:
    server: Server
    token: str  # a viewer session of the test data's demo dataset
    layer: str = ""  # the path of an annotation layer of the "tests" dataset

    @property
    def address(self) -> tuple[str, int]:
        return address_of(self.server.url)


def head(method: str, path: str, *lines: str) -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: lamella\r\n" + "".join(f"{line}\r\n" for line in lines) +
            "\r\n").encode()


def send(target: Target, data: bytes, method: str) -> int | None:
    """Send ``data`` as a whole and read the answer's status (None if the server cut the connection first)."""
    connection = Connection(target.address, timeout=60)
    try:
        connection.send(data)
        return connection.read_answer(method).status
    except (Broken, OSError):
        return None
    finally:
        connection.close()


Built = Callable[[Target], bytes]  # a request, sent again and again
Acted = Callable[[Target], None]  # a client's behaviour, for the window


def joined(item: bytes, count: int) -> bytes:
    return b",".join([item] * count)


# --- the pathological requests: built before they are timed (building 70 MB holds this process's GIL) -------------


def landmarks_36_mb(target: Target) -> bytes:
    pairs = b"[" + joined(b"[1234.5678, 2345.6789, 3456.789]", 1_100_000) + b"]"
    body = b'{"moving": ' + pairs + b', "reference": ' + pairs + b', "save": false}'
    return head("POST", LANDMARKS, f"Content-Length: {len(body)}", "Content-Type: application/json") + body


def landmarks_at_the_limit(target: Target) -> bytes:
    """2000 pairs in about 1 MiB: parsed and fitted (the route's largest body)."""
    pairs = json.dumps([[1000.0 + i, 2000.5 - i, 300.25 + i % 7] for i in range(2000)])
    body = f'{{"moving": {pairs}, "reference": {pairs}, "fit": "affine", "save": false}}'.encode()
    return head("POST", LANDMARKS, f"Content-Length: {len(body)}", "Content-Type: application/json") + body


def state_a_million_keys(target: Target) -> bytes:
    body = b'{"state": {' + b",".join(b'"key-%07d": [%d]' % (i, i) for i in range(1_000_000)) + b"}}"
    return head("PUT", f"/api/sessions/{target.token}", f"Content-Length: {len(body)}") + body


def state_at_the_limit(target: Target) -> bytes:
    """As many values as a body may hold: within the route's limits, so parsed, checked and stored."""
    body = b'{"state": {' + b",".join(b'"k%06d":"vvv"' % i for i in range(MAX_VALUES - 2)) + b"}}"
    assert len(body) <= STATE_BODY, len(body)
    return head("PUT", f"/api/sessions/{target.token}", f"Content-Length: {len(body)}") + body


def state_nested_500(target: Target) -> bytes:
    body = b'{"state": ' + b'{"a": ' * 500 + b"1" + b"}" * 500 + b"}"
    return head("PUT", f"/api/sessions/{target.token}", f"Content-Length: {len(body)}") + body


def body_over_64_mb(target: Target) -> bytes:
    return head("PUT", f"/api/sessions/{target.token}", f"Content-Length: {70 << 20}") + b" " * (70 << 20)


def chunked_over_64_mb(target: Target) -> bytes:
    piece = b" " * (1 << 20)
    chunks = (b"%x\r\n" % len(piece) + piece + b"\r\n") * 70 + b"0\r\n\r\n"
    return head("PUT", f"/api/sessions/{target.token}", "Transfer-Encoding: chunked") + chunks


def body_to_a_route_that_takes_none(target: Target) -> bytes:
    return head("GET", "/api/me", f"Content-Length: {70 << 20}") + b" " * (70 << 20)


def bulk_annotations(count: int) -> Built:
    """A bulk create of ``count`` labelled points with a property (100,000: the most one request may add)."""
    def build(target: Target) -> bytes:
        items = b",".join(b'{"type":"point","point":[%d.5,%d.25,%d],"label":"synapse","properties":{"confidence":0.5}}'
                          % (i % 90, i % 60, i % 30) for i in range(count))
        body = b'{"annotations":[' + items + b"]}"
        return head("POST", f"{target.layer}/annotations", f"Content-Length: {len(body)}",
                    "Content-Type: application/json", f"Authorization: Bearer {target.server.admin_token}") + body

    return build


def one_byte_chunks(count: int) -> Built:
    """A state, padded with spaces to ``count`` bytes, sent one byte a chunk."""
    def build(target: Target) -> bytes:
        body = b'{"state": {"layout": "xy"}}'.ljust(count)
        chunks = b"".join(b"1\r\n%c\r\n" % byte for byte in body) + b"0\r\n\r\n"
        return head("PUT", f"/api/sessions/{target.token}", "Transfer-Encoding: chunked") + chunks

    return build


def headers_of_1_mb(target: Target) -> bytes:
    return head("GET", "/api/datasets", "X-Pad: " + "a" * (1 << 20))


def trickled_body(target: Target) -> None:
    """A byte every 20 ms (the body timeout ends it after minutes, not here)."""
    with socket.create_connection(target.address, timeout=10) as connection:
        connection.sendall(head("PUT", f"/api/sessions/{target.token}", "Content-Length: 1000"))
        deadline = time.monotonic() + WINDOW
        while time.monotonic() < deadline:
            connection.sendall(b" ")
            time.sleep(0.02)


def partial_heads(target: Target) -> None:
    """Five hundred connections, each with half a request line or unfinished headers, held open."""
    held = []
    try:
        for number in range(500):
            connection = socket.create_connection(target.address, timeout=10)
            connection.sendall(b"GET /api/datas" if number % 2 else b"GET /api/datasets HTTP/1.1\r\nHost: x\r\nX-A: ")
            held.append(connection)
        time.sleep(WINDOW)
    finally:
        for connection in held:
            connection.close()


PATHOLOGICAL: dict[str, Built | Acted] = {
    "36 MB landmarks body": landmarks_36_mb,
    "1 MiB of landmarks, parsed and fitted": landmarks_at_the_limit,
    "33 MB state with a million keys": state_a_million_keys,
    f"state of {MAX_VALUES:,} values (the most a body may hold), parsed and stored": state_at_the_limit,
    "state nested 500 levels": state_nested_500,
    "70 MB body": body_over_64_mb,
    "70 MB chunked body": chunked_over_64_mb,
    "70 MB body to a route that takes none": body_to_a_route_that_takes_none,
    f"{MAX_CHUNKS:,} one-byte chunks (the most a body may have)": one_byte_chunks(MAX_CHUNKS),
    "65,537 one-byte chunks": one_byte_chunks(65_537),
    "1 MiB of headers": headers_of_1_mb,
    "10,000 annotations in one bulk create, stored": bulk_annotations(10_000),
    "body trickled a byte at a time": trickled_body,
    "500 partial heads that never finish": partial_heads,
}
ACTED = {trickled_body, partial_heads}


# --- the other client ------------------------------------------------------------------------------------------


def wait_times(target: Target, while_running: Callable[[], bool], at_least: float = 0.0) -> list[float]:
    """The other client: the catalog and a chunk, one after the other, timed, while ``while_running()``."""
    connection = Connection(target.address, timeout=30)
    waits = []
    started = time.monotonic()
    try:
        while while_running() or time.monotonic() - started < at_least:
            for path in ("/api/datasets", CHUNK):
                began = time.monotonic()
                if not connection.send(head("GET", path)):
                    connection.close()
                    connection.send(head("GET", path))
                answer = connection.read_answer("GET")
                waits.append(time.monotonic() - began)
                assert answer.status == 200, (path, answer.status)
            time.sleep(0.005)
    finally:
        connection.close()
    return waits


@pytest.fixture(scope="module")
def target(scratch_server: Server) -> Target:
    token = requests.post(f"{scratch_server.url}/api/datasets/demo/sessions", timeout=30).json()["token"]
    layers = "/api/datasets/tests/annotation-layers"
    layer = requests.post(scratch_server.url + layers, headers=scratch_server.admin, timeout=30, json={
        "name": "stall", "types": ["point"], "labels": [{"id": "synapse"}],
        "properties": [{"id": "confidence", "type": "float32"}]})
    layer.raise_for_status()
    found = Target(scratch_server, token, f"{layers}/{layer.json()['id']}")
    wait_times(found, lambda: False, at_least=0.5)  # connections, caches and the chunk's encoding warm
    return found


def under(target: Target, attack: Built | Acted) -> tuple[list[float], Counter[str]]:
    """Wait times of the other client while ``attack`` is sent again and again for ``WINDOW`` seconds, and the
    answers the attack got (a status, or "cut" when the server closed the connection first)."""
    built = None if attack in ACTED else attack(target)
    stop = time.monotonic() + WINDOW
    answers: Counter[str] = Counter()
    failure: list[BaseException] = []

    def attacker() -> None:
        try:
            while True:
                if built is None:
                    attack(target)
                    answers["sent"] += 1
                else:
                    status = send(target, built, built.split(b" ", 1)[0].decode())
                    answers["cut" if status is None else str(status)] += 1
                if time.monotonic() >= stop:
                    return
                if not FLOOD:
                    time.sleep(PAUSE)
        except BaseException as error:  # reported by the test
            failure.append(error)

    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    waits = wait_times(target, thread.is_alive, at_least=0.2)
    thread.join()
    if failure:
        raise failure[0]
    return waits, answers


def test_no_request_stalls_another_client(target: Target) -> None:
    baseline = wait_times(target, lambda: False, at_least=1.0)
    report = {"no other client": {"longest_ms": round(1000 * max(baseline), 1), "requests": len(baseline)}}
    for name, attack in PATHOLOGICAL.items():
        attempts = []
        for _ in range(ATTEMPTS):
            waits, answers = under(target, attack)
            waits.sort()
            attempts.append({"longest_ms": round(1000 * waits[-1], 1),
                             "median_ms": round(1000 * waits[len(waits) // 2], 1), "requests": len(waits),
                             "answers": dict(answers)})
            if waits[-1] <= STALL_LIMIT:
                break
        report[name] = {**min(attempts, key=lambda attempt: attempt["longest_ms"]),
                        "attempts": [attempt["longest_ms"] for attempt in attempts]}
    print("\nlongest stall of another client under each pathological request:")
    for name, figures in report.items():
        print(f"  {name}: {figures}")
    stalled = {name: figures["longest_ms"] for name, figures in report.items()
               if figures["longest_ms"] > 1000 * STALL_LIMIT}
    assert FLOOD or not stalled, stalled
    assert requests.get(f"{target.server.url}/api/datasets", timeout=30).status_code == 200


def test_a_bulk_create_at_its_limit_stalls_no_one(target: Target) -> None:
    longest = []
    for _ in range(ATTEMPTS):  # as for the other kinds: the machine's other work shows now and then
        waits, answers = under(target, bulk_annotations(100_000))
        longest.append(round(1000 * max(waits)))
        assert answers.get("201"), answers
        if max(waits) <= STALL_LIMIT:
            break
    print(f"\n100,000 annotations in one bulk create: longest waits {longest} ms, answers {dict(answers)}")
    assert min(longest) <= 1000 * STALL_LIMIT
