"""Listening: one process, or N forked processes sharing one socket."""

from __future__ import annotations

import asyncio
import logging

import tornado.httpserver
import tornado.netutil
import tornado.process

from viewer.app import make_app
from viewer.config import Settings
from viewer.services import Services

log = logging.getLogger("lamella")


def run(settings: Settings) -> None:
    """Bind, fork if asked, and serve until interrupted. Prints the URL once bound."""
    sockets = tornado.netutil.bind_sockets(settings.port, settings.host)
    port = sockets[0].getsockname()[1]
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    print(f"Lamella is serving on http://{host}:{port}/", flush=True)
    if settings.processes > 1:
        # Everything that opens files, connections or threads is created after the fork.
        tornado.process.fork_processes(settings.processes, max_restarts=100)
    asyncio.run(_serve(settings, sockets))


async def _serve(settings: Settings, sockets: list) -> None:
    services = Services.create(settings)
    server = tornado.httpserver.HTTPServer(make_app(services), xheaders=True, max_buffer_size=64 << 20)
    server.add_sockets(sockets)
    try:
        await asyncio.Event().wait()
    finally:
        server.stop()
        services.close()
