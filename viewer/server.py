"""Listening: one process, or N forked processes sharing one socket."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys

import tornado.httpserver
import tornado.netutil

from viewer.app import make_app
from viewer.config import Settings
from viewer.services import Services

log = logging.getLogger("lamella")


def run(settings: Settings) -> None:
    """Bind, fork if asked, and serve until interrupted. Prints the URL once bound."""
    many = settings.processes > 1
    sockets = tornado.netutil.bind_sockets(settings.port, settings.host, reuse_port=many)
    port = sockets[0].getsockname()[1]
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    print(f"Lamella is serving on http://{host}:{port}/", flush=True)
    if many:
        _supervise(settings.processes, sockets)  # returns only in a child
        # Each worker listens on its own SO_REUSEPORT socket: the kernel spreads connections
        # across workers, where one shared socket lets the busiest worker take them all.
        own = tornado.netutil.bind_sockets(port, settings.host, reuse_port=True)
        for inherited in sockets:
            inherited.close()
        sockets = own
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, sockets))


def _supervise(count: int, sockets: list[socket.socket]) -> None:
    """Fork ``count`` workers and stay as their parent: restart crashed ones, stop all on SIGTERM.

    Everything that opens files, connections or threads is created after the fork, in the child.
    """
    children: set[int] = set()
    stopping = False

    def spawn() -> bool:
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            return True
        children.add(pid)
        return False

    for _ in range(count):
        if spawn():
            return
    # The supervisor's copy of the socket must not hold connections no one accepts.
    for listening in sockets:
        listening.close()

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        children.discard(pid)
        if not stopping and os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
            log.warning("server process %d exited with status %d; starting another", pid, status)
            if spawn():
                return
    sys.exit(0)


def _die_with_parent() -> None:
    # Linux: a worker must not outlive a supervisor killed with SIGKILL.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def _serve(settings: Settings, sockets: list[socket.socket]) -> None:
    services = Services.create(settings)
    server = tornado.httpserver.HTTPServer(make_app(services), xheaders=True, max_buffer_size=64 << 20)
    server.add_sockets(sockets)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    try:
        await stopped.wait()
    finally:
        server.stop()
        services.close()
