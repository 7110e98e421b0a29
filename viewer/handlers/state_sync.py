"""Neuroglancer's state-sync protocol (python/neuroglancer/server.py), state kept in the database.

The client page lives at ``/v/<token>/``; it opens ``/events/<token>`` (server-sent events),
posts its changes to ``/state/<token>`` and key-bound actions to ``/action/<token>``.
Event streams poll the session's generations, so a change made through any server process
(or the API) reaches every open viewer.
"""

from __future__ import annotations

import asyncio
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
        poll = self.services.settings.state_poll_seconds
        idle = 0.0
        while not self.closed:
            state_generation, config_generation = await self.services.call(sessions.generations, token)
            wanted = {"s": state_generation, "c": config_generation}
            changed = [k for k in ("c", "s") if wanted[k] != sent[k]]
            try:
                if changed:
                    session = await self.services.call(sessions.get, token)
                    for key in changed:
                        generation = session.generation if key == "s" else session.config_generation
                        sent[key] = generation
                        # The client already has its own change: never echo it.
                        if generation.startswith(client_id + "/"):
                            continue
                        body = session.state if key == "s" else session.config
                        self.write(f"data: {json.dumps({'k': key, 's': body, 'g': generation})}\n\n")
                    await self.flush()
                    idle = 0.0
                elif idle >= KEEPALIVE_SECONDS:
                    self.write(": keepalive\n\n")
                    await self.flush()
                    idle = 0.0
            except StreamClosedError:
                break
            await asyncio.sleep(poll)
            idle += poll

    def on_connection_close(self) -> None:
        self.closed = True


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
