"""Neuroglancer's state-sync protocol against the real server, state held in the database."""

import json
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import Server, start_server, stop_server


class EventStream:
    """Reads server-sent events from /events/<token> as a Neuroglancer client would."""

    def __init__(self, server: Server, token: str, client: str, gs: str = "", gc: str = "") -> None:
        self.response = requests.get(f"{server.url}/events/{token}", params={"c": client, "gs": gs, "gc": gc},
                                     stream=True, timeout=(5, 10))
        assert self.response.status_code == 200
        assert self.response.headers["Content-Type"].startswith("text/event-stream")
        self.lines: Iterator[bytes] = self.response.iter_lines()

    def next_message(self) -> dict:
        for line in self.lines:
            if line.startswith(b"data: "):
                return json.loads(line[len(b"data: "):])
        raise AssertionError("stream ended")

    def close(self) -> None:
        self.response.close()


def new_session(server: Server) -> dict:
    response = requests.post(f"{server.url}/api/datasets/demo/sessions", timeout=10)
    assert response.status_code == 201
    return response.json()


def test_stream_sends_config_then_state(server: Server) -> None:
    session = new_session(server)
    stream = EventStream(server, session["token"], "clientA")
    try:
        messages = {m["k"]: m for m in (stream.next_message(), stream.next_message())}
        assert set(messages) == {"c", "s"}
        layer = messages["s"]["s"]["layers"][0]
        assert layer["source"].startswith("precomputed://http://127.0.0.1:")
        assert layer["shaderControls"]["normalized"]["range"][1] > layer["shaderControls"]["normalized"]["range"][0]
    finally:
        stream.close()


def test_post_state_generations_and_no_echo(server: Server) -> None:
    session = new_session(server)
    token = session["token"]
    current = requests.get(f"{server.url}/api/sessions/{token}", timeout=10).json()["generation"]
    watcher = EventStream(server, token, "clientB", gs=current, gc="ignored")
    try:
        watcher.next_message()  # config (its generation differs from "ignored")
        state = dict(session["state"], layout="xy")
        update = {"s": state, "g": "7", "pg": current, "c": "clientA"}
        answer = requests.post(f"{server.url}/state/{token}", json=update, timeout=10)
        assert answer.status_code == 200 and answer.json() == {"g": "clientA/7"}
        pushed = watcher.next_message()
        assert pushed == {"k": "s", "s": state, "g": "clientA/7"}
        stale = requests.post(f"{server.url}/state/{token}", json={"s": {}, "g": "8", "pg": current, "c": "clientC"},
                              timeout=10)
        assert stale.status_code == 412
        assert requests.get(f"{server.url}/api/sessions/{token}", timeout=10).json()["state"]["layout"] == "xy"
    finally:
        watcher.close()
    own = EventStream(server, token, "clientA", gs="", gc="")
    try:
        # clientA's own change is never echoed: only the config arrives, then keep-alives.
        assert own.next_message()["k"] == "c"
        requests.put(f"{server.url}/api/sessions/{token}", json={"state": {"layout": "3d", "layers": []}}, timeout=10)
        message = own.next_message()
        assert message["k"] == "s" and message["s"]["layout"] == "3d" and message["g"].startswith("server/")
    finally:
        own.close()


@pytest.mark.parametrize(
    ("body", "status"),
    [("not json", 400), (json.dumps({"s": {}}), 400), (json.dumps({"s": [], "g": "1", "pg": "x", "c": "a"}), 400)],
)
def test_bad_state_posts(server: Server, body: str, status: int) -> None:
    token = new_session(server)["token"]
    response = requests.post(f"{server.url}/state/{token}", data=body, timeout=10)
    assert response.status_code == status and response.json()["code"] == "bad_request"


def test_unknown_session(server: Server) -> None:
    assert requests.get(f"{server.url}/events/nope?c=a&gs=&gc=", timeout=10).status_code == 404
    assert requests.post(f"{server.url}/state/nope", json={"s": {}, "g": "1", "pg": "", "c": "a"},
                         timeout=10).status_code == 404
    assert requests.get(f"{server.url}/v/nope/", timeout=10).status_code == 404


def test_viewer_client_is_bundled(server: Server) -> None:
    token = new_session(server)["token"]
    page = requests.get(f"{server.url}/v/{token}/", timeout=10)
    assert page.status_code == 200 and "<script" in page.text
    script = page.text.split('src="')[1].split('"')[0]
    asset = requests.get(f"{server.url}/v/{token}/{script}", timeout=10)
    assert asset.status_code == 200 and "immutable" in asset.headers["Cache-Control"]
    # Gzipped for a browser that takes it (the bytes it unpacks are the file's), as it is for one that does not.
    assert asset.headers["Content-Encoding"] == "gzip" and "Accept-Encoding" in asset.headers["Vary"]
    plain = requests.get(f"{server.url}/v/{token}/{script}", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "Content-Encoding" not in plain.headers and plain.content == asset.content
    assert int(asset.headers["Content-Length"]) < len(plain.content) / 2


def test_two_processes_behave_as_one(data_dir) -> None:
    """``serve --processes 2``: state written through one process reaches streams on any other."""
    running = start_server(data_dir[0], "--processes", "2")
    try:
        tokens = [new_session(running)["token"] for _ in range(6)]
        for token in tokens:  # every session is visible whichever process answers
            for _ in range(3):
                assert requests.get(f"{running.url}/api/sessions/{token}", timeout=10).status_code == 200
        token = tokens[0]
        streams = [EventStream(running, token, f"watcher{i}", gc="x") for i in range(4)]
        try:
            for stream in streams:
                stream.next_message()  # config
                stream.next_message()  # state
            generation = requests.get(f"{running.url}/api/sessions/{token}", timeout=10).json()["generation"]
            requests.post(f"{running.url}/state/{token}",
                          json={"s": {"layout": "yz", "layers": []}, "g": "1", "pg": generation, "c": "writer"},
                          timeout=10).raise_for_status()
            for stream in streams:
                assert stream.next_message()["s"]["layout"] == "yz"
        finally:
            for stream in streams:
                stream.close()
        chunk = running.get("/api/datasets/demo/images/em/precomputed/0/0-64_0-64_0-64")
        assert chunk.status_code == 200 and chunk.headers["Content-Type"] == "image/jpeg"
    finally:
        stop_server(running)
