"""Fan-out of viewer-state changes to the event streams of this process.

The database is the source of truth; each process polls it once per watched session (not once
per open stream) and wakes every local stream of that session. A write made through this
process wakes them at once, without waiting for the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from annotations.errors import SessionNotFound

Generations = tuple[str, str]


class SessionWatch:
    def __init__(self, read_generations: Callable[[str], Awaitable[Generations]], interval: float) -> None:
        self._read = read_generations
        self._interval = interval
        self._streams: dict[str, set[asyncio.Event]] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}

    def subscribe(self, token: str) -> asyncio.Event:
        event = asyncio.Event()
        event.set()  # look at the state straight away
        self._streams.setdefault(token, set()).add(event)
        if token not in self._pollers:
            self._pollers[token] = asyncio.create_task(self._poll(token))
        return event

    def unsubscribe(self, token: str, event: asyncio.Event) -> None:
        streams = self._streams.get(token)
        if streams is None:
            return
        streams.discard(event)
        if not streams:
            del self._streams[token]
            poller = self._pollers.pop(token, None)
            if poller is not None:
                poller.cancel()

    def changed(self, token: str) -> None:
        for event in self._streams.get(token, ()):
            event.set()

    async def _poll(self, token: str) -> None:
        last: Generations | None = None
        while token in self._streams:
            with contextlib.suppress(SessionNotFound):
                current = await self._read(token)
                if current != last:
                    last = current
                    self.changed(token)
            await asyncio.sleep(self._interval)
