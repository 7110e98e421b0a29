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
from typing import Any

import tornado.httpserver
import tornado.netutil
from tornado.iostream import IOStream
from tornado.web import Application, RequestHandler

from viewer.app import make_app, routes
from viewer.config import Settings
from viewer.handlers.base import short_path
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


# Tornado answers malformed requests (bad request line, headers, chunking) with a bare 400 before any
# handler runs; we give them the JSON error body every other error has.
_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
_JSON_400_BODY = (b'{"ok":false,"status":400,"code":"malformed_request",'
                  b'"message":"malformed HTTP request, or a body larger than any route takes"}')
_JSON_400 = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\n"
             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_JSON_400_BODY), _JSON_400_BODY))


class LamellaHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's server, with JSON bodies on its own protocol errors."""

    def handle_stream(self, stream: IOStream, address: tuple[str, ...]) -> None:
        write = stream.write

        def json_errors(data: bytes | memoryview, *args: Any, **kwargs: Any) -> Any:
            return write(_JSON_400 if data == _BARE_400 else data, *args, **kwargs)

        stream.write = json_errors  # type: ignore[method-assign]
        super().handle_stream(stream, address)


def http_server(app: Application, settings: Settings) -> tornado.httpserver.HTTPServer:
    """The server every process runs. Handlers that take bodies bound them per route before reading them;
    the body of any other request is read whole first, up to the largest route limit. Slow senders are
    cut off (a request line and headers within ``header_timeout_seconds``, a body within
    ``body_timeout_seconds``)."""
    largest = max(route.rule.body_limit for route in routes())
    return LamellaHTTPServer(app, xheaders=True, max_body_size=largest, max_buffer_size=64 << 20,
                             idle_connection_timeout=settings.header_timeout_seconds,
                             body_timeout=settings.body_timeout_seconds)


LOGGED_MESSAGE = 300  # characters of a message of Tornado's own that reach the log


class ClipMessages(logging.Filter):
    """Tornado's messages about malformed requests quote what was sent (a 60 KB header value): cut them short."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > LOGGED_MESSAGE:
            record.msg, record.args = message[:LOGGED_MESSAGE] + "…", None
        return True


ACCESS_LOG = logging.getLogger("tornado.access")


def log_request(handler: RequestHandler) -> None:
    """One access-log line per request, with the path cut short (5xx are logged once, with their cause)."""
    status = handler.get_status()
    if status >= 500:
        return
    level = logging.INFO if status < 400 else logging.DEBUG
    if ACCESS_LOG.isEnabledFor(level):
        ACCESS_LOG.log(level, "%d %s %s (%s) %.1f ms", status, handler.request.method,
                   short_path(handler.request.path), handler.request.remote_ip, 1000 * handler.request.request_time())


async def _serve(settings: Settings, sockets: list[socket.socket]) -> None:
    logging.getLogger("tornado.general").addFilter(ClipMessages())
    services = Services.create(settings)
    app = make_app(services, cookie_secret=settings.resolved_cookie_secret(), log_function=log_request)
    server = http_server(app, settings)
    server.add_sockets(sockets)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    try:
        await stopped.wait()
    finally:
        server.stop()
        services.close()
