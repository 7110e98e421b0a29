"""Neuroglancer's state-sync protocol (python/neuroglancer/server.py), state kept in the database.

The client page lives at ``/v/<token>/``; it opens ``/events/<token>`` (server-sent events),
posts its changes to ``/state/<token>`` and key-bound actions to ``/action/<token>``.
Event streams are woken by ``SessionWatch`` (one database poll per session and process), so a
change made through any server process (or the API) reaches every open viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

from pydantic import BaseModel, Field
from tornado.iostream import StreamClosedError

from annotations.access import Action
from annotations.errors import CatalogError, StaleGeneration
from viewer.bodies import Text, dumps
from viewer.errors import BadRequest, WebError
from viewer.handlers.base import BaseHandler

KEEPALIVE_SECONDS = 15.0


class EventsHandler(BaseHandler):
    closed = False

    async def get(self, token: str) -> None:
        client_id = self.get_query_argument("c", None)
        if not client_id or len(client_id) > 64:
            raise BadRequest("missing or overlong client id 'c'")
        sent = {"s": self.get_query_argument("gs", "")[:128], "c": self.get_query_argument("gc", "")[:128]}
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

    def on_connection_close(self) -> None:
        self.closed = True
        if hasattr(self, "wake"):
            self.wake.set()


class StateMessage(BaseModel):
    """Neuroglancer's POST /state: the new state ``s``, its generation ``g`` made by client ``c``, based on ``pg``."""

    s: dict[str, object]
    g: Annotated[int, Field(ge=0, lt=2**53)] | Text(60, min_length=1)  # type: ignore[valid-type]  # a count
    pg: Text(128)  # type: ignore[valid-type]
    c: Text(64, min_length=1)  # type: ignore[valid-type]


class ActionMessage(BaseModel):
    action: Text(200, min_length=1)  # type: ignore[valid-type]
    state: dict[str, object] | None = None


class SetStateHandler(BaseHandler):
    async def post(self, token: str) -> None:
        message: StateMessage = await self.parse_body(StateMessage)
        try:
            generation = await self.services.call(
                self.services.viewer_sessions.set_state, token, message.s,
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

    async def post(self, token: str) -> None:
        await self.parse_body(ActionMessage)
        self.set_status(204)
        self.finish()


class CredentialsHandler(BaseHandler):
    """Lamella serves public data only so far: no credentials to hand out."""

    async def post(self, token: str) -> None:
        raise WebError(403, "no_credentials", "this server hands out no data-source credentials")
