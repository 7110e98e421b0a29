"""Neuroglancer's state-sync protocol (python/neuroglancer/server.py), state kept in the database.

The client page lives at ``/v/<token>/``; it opens ``/events/<token>`` (server-sent events),
posts its changes to ``/state/<token>`` and key-bound actions to ``/action/<token>``.
Event streams are woken by ``SessionWatch`` (one database poll per session and process), so a
change made through any server process (or the API) reaches every open viewer.
"""

from __future__ import annotations

import asyncio
import contextlib

from pydantic import BaseModel
from tornado.iostream import StreamClosedError

from annotations.access import Action
from annotations.errors import CatalogError, StaleGeneration
from viewer.apidoc import op
from viewer.bodies import Integer, Text, dumps
from viewer.errors import WebError
from viewer.handlers.base import BaseHandler

KEEPALIVE_SECONDS = 15.0


class EventsQuery(BaseModel):
    c: Text(64, min_length=1)  # type: ignore[valid-type]  # the client's id
    gs: Text(128) = ""  # type: ignore[valid-type]  # the state generation the client has
    gc: Text(128) = ""  # type: ignore[valid-type]  # the config generation the client has


class EventsHandler(BaseHandler):
    closed = False

    @op(summary="Server-sent events: the session's state and config as they change (Neuroglancer's protocol)",
        query=EventsQuery, response={"type": "string"}, content="text/event-stream")
    async def get(self, token: str) -> None:
        query: EventsQuery = self.query()
        client_id = query.c
        sent = {"s": query.gs, "c": query.gc}
        sessions = self.services.viewer_sessions
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.flush()
        watch = self.services.session_watch
        self.wake = watch.subscribe(token)
        try:
            while not self.closed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), KEEPALIVE_SECONDS)
                if self.closed:
                    break
                self.wake.clear()
                try:  # the owner's current rights: a dataset made private ends its anonymous streams
                    await self.services.identity.session(token, Action.READ)
                    session = await self.services.call(sessions.get, token)
                except CatalogError:
                    break
                wrote = False
                for key, generation, body in (("c", session.config_generation, session.config),
                                              ("s", session.generation, session.state)):
                    if generation == sent[key]:
                        continue
                    sent[key] = generation
                    # The client already has its own change: never echo it.
                    if not generation.startswith(client_id + "/"):
                        self.write(f"data: {dumps({'k': key, 's': body, 'g': generation})}\n\n")
                        wrote = True
                if not wrote:
                    self.write(": keepalive\n\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            watch.unsubscribe(token, self.wake)

    async def head(self, token: str) -> None:
        """The stream's headers only (a HEAD must not start an endless stream)."""
        self.query()
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.finish()

    def on_connection_close(self) -> None:
        self.closed = True
        if hasattr(self, "wake"):
            self.wake.set()


Count = Integer(0, 2**53 - 1)  # "0001" is a generation name, never the count 1


class StateMessage(BaseModel):
    """Neuroglancer's POST /state: the new state ``s``, its generation ``g`` made by client ``c``, based on ``pg``."""

    model_config = {"json_schema_extra": {"examples": [{"s": {"layout": "xy"}, "g": 3, "pg": "server/0", "c": "c1"}]}}

    s: dict[str, object]
    g: Count | Text(60, min_length=1)  # type: ignore[valid-type]  # Neuroglancer sends its change count
    pg: Text(128)  # type: ignore[valid-type]
    c: Text(64, min_length=1)  # type: ignore[valid-type]


class ActionMessage(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"action": "annotate"}]}}

    action: Text(200, min_length=1)  # type: ignore[valid-type]
    state: dict[str, object] | None = None


class GenerationAnswer(BaseModel):
    g: str


class SetStateHandler(BaseHandler):
    @op(summary="Neuroglancer posts its state; accepted if based on the current generation (else 412)",
        body=StateMessage, response=GenerationAnswer)
    async def post(self, token: str) -> None:
        message: StateMessage = await self.parse_body()
        try:  # edit layers' changes are saved to the database layers as the session's owner
            generation = await self.services.call(
                self.services.viewer_annotations.receive, token, self.owner, self.dataset_access, message.s,
                generation=f"{message.c}/{message.g}", expected=message.pg,
            )  # fmt: skip
        except StaleGeneration as stale:
            # The protocol's answer to a stale base: 412 (Neuroglancer then waits for the newer state).
            self.send_error(412, exc_info=(StaleGeneration, stale, None))
            return
        self.services.session_watch.changed(token)
        self.write_json({"g": generation})


class ActionHandler(BaseHandler):
    """Key-bound actions: accepted and logged; later issues attach behaviour (e.g. annotate)."""

    @op(summary="Neuroglancer's key-bound actions (accepted)", body=ActionMessage, status=204)
    async def post(self, token: str) -> None:
        await self.parse_body()
        self.set_status(204)
        self.finish()


class CredentialsHandler(BaseHandler):
    """Data sources are served by Lamella itself, with the session's rights: no credentials to hand out."""

    @op(summary="Neuroglancer's data-source credentials: none to hand out (404)", body=ActionMessage, status=404)
    async def post(self, token: str) -> None:
        raise WebError(404, "no_credentials", "this server hands out no data-source credentials")
