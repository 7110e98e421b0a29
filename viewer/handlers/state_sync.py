"""Neuroglancer's state-sync protocol (python/neuroglancer/server.py), state kept in the database.

The client page lives at ``/v/<token>/``; it opens ``/events/<token>`` (server-sent events),
posts its changes to ``/state/<token>`` and key-bound actions to ``/action/<token>``.
Event streams are woken by ``SessionWatch`` (one database poll per session and process), so a
change made through any server process (or the API) reaches every open viewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from tornado.iostream import StreamClosedError

from annotations.errors import StaleGeneration
from viewer.errors import BadRequest
from viewer.handlers.base import BaseHandler

KEEPALIVE_SECONDS = 15.0


class EventsHandler(BaseHandler):
    closed = False

    async def get(self, token: str) -> None:
        client_id = self.get_query_argument("c", None)
        if not client_id:
            raise BadRequest("missing client id 'c'")
        sent = {"s": self.get_query_argument("gs", ""), "c": self.get_query_argument("gc", "")}
        sessions = self.services.viewer_sessions
        await self.services.call(sessions.generations, token)  # 404 before the stream starts
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
                session = await self.services.call(sessions.get, token)
                wrote = False
                for key, generation, body in (("c", session.config_generation, session.config),
                                              ("s", session.generation, session.state)):
                    if generation == sent[key]:
                        continue
                    sent[key] = generation
                    # The client already has its own change: never echo it.
                    if not generation.startswith(client_id + "/"):
                        self.write(f"data: {json.dumps({'k': key, 's': body, 'g': generation})}\n\n")
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


class SetStateHandler(BaseHandler):
    async def post(self, token: str) -> None:
        message = self.json_body()
        if not isinstance(message, dict) or not {"s", "g", "pg", "c"} <= message.keys():
            raise BadRequest('expected {"s": state, "g": generation, "pg": previous, "c": client}')
        if not isinstance(message["s"], dict):
            raise BadRequest("state 's' must be an object")
        try:
            generation = await self.services.call(
                self.services.viewer_sessions.set_state,
                token,
                message["s"],
                generation=f"{message['c']}/{message['g']}",
                expected=message["pg"],
            )
            self.services.session_watch.changed(token)
        except StaleGeneration:
            self.set_status(412)
            self.finish()
            return
        self.write_json({"g": generation})


class ActionHandler(BaseHandler):
    """Key-bound actions: accepted and logged; later issues attach behaviour (e.g. annotate)."""

    async def post(self, token: str) -> None:
        message = self.json_body()
        if not isinstance(message, dict) or "action" not in message:
            raise BadRequest('expected {"action": name, "state": ...}')
        await self.services.call(self.services.viewer_sessions.generations, token)
        self.set_status(204)
        self.finish()


class CredentialsHandler(BaseHandler):
    """Lamella serves public data only so far: no credentials to hand out."""

    async def post(self, token: str) -> None:
        self.set_status(403)
        self.write_json({"ok": False, "status": 403, "code": "no_credentials",
                         "message": "this server provides no data-source credentials"}, 403)
