"""Listening: one process, or N forked processes sharing one socket."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import tornado.httpserver
import tornado.netutil
from tornado.httputil import HTTPInputError
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, UnsatisfiableReadError
from tornado.web import Application, RequestHandler

from viewer.app import make_app, routes
from viewer.bodies import dumps
from viewer.config import Settings
from viewer.handlers.base import short_path
from viewer.services import Services

log = logging.getLogger("lamella")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Connections waiting to be accepted (the kernel caps it at net.core.somaxconn). Tornado's 128 overflowed
# under a burst of a few hundred connections: the next client's SYN was dropped and retried a second later.
BACKLOG = 1024
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the interpreter lock while another waits for it


def run(settings: Settings) -> None:
    """Bind, fork if asked, and serve until interrupted. Prints the URL once bound."""
    many = settings.processes > 1
    sockets = tornado.netutil.bind_sockets(settings.port, settings.host, reuse_port=many, backlog=BACKLOG)
    port = sockets[0].getsockname()[1]
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    print(f"Lamella is serving on http://{host}:{port}/", flush=True)
    if many:
        _supervise(settings.processes, sockets)  # returns only in a child
        # Each worker listens on its own SO_REUSEPORT socket: the kernel spreads connections
        # across workers, where one shared socket lets the busiest worker take them all.
        own = tornado.netutil.bind_sockets(port, settings.host, reuse_port=True, backlog=BACKLOG)
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
# handler runs, and closes a connection whose head is larger than it reads without a word. Each
# connection's stream is watched so that these get the JSON error body every other error has.
_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
HEAD_LIMIT = 64 * 1024  # bytes of a request's line and headers (more: 431)
# Chunks of one chunked body: each costs about 10 us of the server's one thread, and a body of 65,536
# one-byte chunks held other clients' answers for up to a second. 4096 is 1 KiB a chunk for 4 MiB.
MAX_CHUNKS = 4096
MALFORMED = "malformed HTTP request, or a body larger than any route takes"
LINGER_SECONDS = 2.0  # after an answer sent before the request was read whole, what the client still sends
LINGER_BYTES = 16 << 20  # is read and dropped for this long, up to this much, before the connection closes


def protocol_error(status: int, code: str, message: str, *, head: bool = False) -> bytes:
    """A whole error answer that closes the connection (no body for a HEAD: RFC 9110 section 9.3.2)."""
    body = dumps({"ok": False, "status": status, "code": code, "message": message}).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Content-Type: application/json; charset=utf-8",
             f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + (b"" if head else body)


class GuardedStream:
    """Wraps one connection's stream: JSON bodies on Tornado's own protocol errors (none after a HEAD), a
    431 for a head larger than ``HEAD_LIMIT``, a 400 for a chunked body in more than ``MAX_CHUNKS`` chunks,
    answers to a client that has shut down its sending side, and no reset of a connection closed while
    the client is still sending (see ``linger``)."""

    def __init__(self, stream: IOStream) -> None:
        self.stream = stream
        self.head = False  # the request being read is a HEAD
        self.reading_head = False
        self.chunks = 0
        self.problem = MALFORMED
        self.ended = False  # the client shut down its sending side
        self.endless = False  # the answer being sent is an event stream (it ends when the client's side does)
        self._write, self._close = stream.write, stream.close
        self._read_until_regex, self._read_until = stream.read_until_regex, stream.read_until
        stream.write = self.write  # type: ignore[method-assign]
        stream.close = self.close  # type: ignore[method-assign]
        stream.read_until_regex = self.read_until_regex  # type: ignore[method-assign]
        stream.read_until = self.read_until  # type: ignore[method-assign]
        self._read_from_fd = stream.read_from_fd
        stream.read_from_fd = self.read_from_fd  # type: ignore[method-assign]

    def read_until_regex(self, regex: bytes, max_bytes: int | None = None) -> Any:
        """A request's line and headers (the only regex read of a server connection)."""
        self.reading_head, self.chunks, self.problem = True, 0, MALFORMED
        future = self._read_until_regex(regex, max_bytes=max_bytes)
        if future.done():  # already buffered: Tornado goes on without yielding
            self._read_head(future)
        else:
            future.add_done_callback(self._read_head)  # runs before the reader resumes (added first)
        return future

    def _read_head(self, future: Any) -> None:
        self.reading_head = False
        if not future.cancelled() and future.exception() is None:
            self.head = future.result().lstrip(b"\r\n").split(b" ", 1)[0] == b"HEAD"

    def read_until(self, delimiter: bytes, max_bytes: int | None = None) -> Any:
        """A chunk's size line (the only other delimited read of a server connection; the last, empty chunk has
        one too)."""
        self.chunks += 1
        if self.chunks > MAX_CHUNKS + 1:
            self.problem = f"a chunked body in more than {MAX_CHUNKS} chunks"
            refused: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            refused.set_exception(HTTPInputError(self.problem))
            return refused
        return self._read_until(delimiter, max_bytes=max_bytes)

    def read_from_fd(self, buffer: bytearray | memoryview) -> int | None:
        """A client that shuts down its sending side after its requests (a half-close) still gets their answers.

        Tornado closes the connection at the end of what the client sends, answers in progress and
        pipelined requests not yet answered with it. Here the end closes the connection only when the
        server waits for another request (a read is pending) or sends an endless event stream; until then
        the stream stops listening for reads (the socket is readable at its end in every turn of the
        loop) and answers go out as usual.
        """
        read = self._read_from_fd(buffer)
        if read == 0 and not self.stream.reading() and not self.endless:
            self.ended = True
            writing = IOLoop.WRITE if self.stream.writing() else 0
            self.stream.io_loop.update_handler(self.stream.fileno(), IOLoop.ERROR | writing)
            return None  # as if nothing had arrived; the next read finds the end and closes
        return read

    def _unread_start(self) -> bytes:
        """The first bytes the stream holds and has not handed on: the start of the head it could not read whole
        (Tornado has no public view of its buffer; without one a HEAD's 431 would carry a body)."""
        buffer = getattr(self.stream, "_read_buffer", b"")
        position = getattr(self.stream, "_read_buffer_pos", 0)
        return bytes(buffer[position:position + 8])

    def write(self, data: bytes | memoryview, *args: Any, **kwargs: Any) -> Any:
        if data == _BARE_400:
            data = protocol_error(400, "malformed_request", self.problem, head=self.head)
        elif data[:9] == b"HTTP/1.1 ":  # an answer's head (Tornado writes it whole, in one piece)
            start = data if isinstance(data, bytes) else bytes(data[:8192])
            end = start.find(b"\r\n\r\n", 0, 8192)
            head = start[:end if end >= 0 else 8192].lower()
            self.endless = b"\r\ncontent-type: text/event-stream" in head and b"\r\ntransfer-encoding: chunked" in head
            if self.endless and self.ended:
                self.stream.io_loop.add_callback(self.stream.close)
        return self._write(data, *args, **kwargs)

    def close(self, exc_info: Any = False) -> None:
        connection = self.stream.socket
        if connection is not None and not self.stream.closed():
            if isinstance(exc_info, UnsatisfiableReadError):  # a head, or a chunk's size line, longer than is read
                if self.reading_head:
                    head = self._unread_start().lstrip(b"\r\n").split(b" ", 1)[0] == b"HEAD"
                    answer = protocol_error(431, "headers_too_large",
                                            f"the request line and headers are larger than {HEAD_LIMIT} bytes",
                                            head=head)
                else:
                    answer = protocol_error(400, "malformed_request", "a chunk size line longer than 64 bytes",
                                            head=self.head)
                with contextlib.suppress(OSError):
                    connection.send(answer)  # a few hundred bytes: the socket's buffer takes them whole
            if _unread(connection):
                linger(connection)
        self._close(exc_info)


def _unread(connection: socket.socket) -> bool:
    """Whether the client has sent bytes the server has not read."""
    try:
        return bool(connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


def linger(connection: socket.socket) -> None:
    """Read and drop what the client still sends, for a while, before the connection closes.

    Closing a socket with unread input resets the connection, and a reset can destroy an answer the client
    has not read yet: the 413 or 431 sent before a request was read whole, Tornado's 400 for a malformed
    one. A copy of the socket keeps the connection open (the stream closes its own), says the server is
    done (FIN after the answer) and reads until the client is done too, ``LINGER_SECONDS`` have passed, or
    ``LINGER_BYTES`` have arrived.
    """
    loop = IOLoop.current()
    try:
        copy = connection.dup()
    except OSError:
        return
    try:
        copy.shutdown(socket.SHUT_WR)
    except OSError:
        copy.close()
        return
    left = LINGER_BYTES

    def done() -> None:
        if copy.fileno() >= 0:
            loop.remove_handler(copy)
            copy.close()

    def readable(_fd: Any, _events: int) -> None:
        nonlocal left
        try:
            data = copy.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        left -= len(data)
        if not data or left <= 0:
            loop.remove_timeout(deadline)
            done()

    copy.setblocking(False)
    loop.add_handler(copy, readable, IOLoop.READ)
    deadline = loop.call_later(LINGER_SECONDS, done)


class LamellaHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's server, with each connection's stream guarded (see ``GuardedStream``), believing the
    ``X-Forwarded-*`` / ``X-Real-IP`` headers of trusted proxies only (anyone else could forge an address that
    sign-in throttling counts, or claim HTTPS)."""

    def initialize(self, *args: Any, trusted: Sequence[IPNetwork] = (), **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.trusted = tuple(trusted)

    def start_request(self, server_conn: object, request_conn: Any) -> Any:
        # Tornado reads ``xheaders`` here, once per request: set it for this request's peer.
        self.xheaders = bool(self.trusted) and _is_trusted(getattr(request_conn.context, "remote_ip", ""),
                                                           self.trusted)
        return super().start_request(server_conn, request_conn)

    def handle_stream(self, stream: IOStream, address: tuple[str, ...]) -> None:
        GuardedStream(stream)
        super().handle_stream(stream, address)


@functools.lru_cache(maxsize=4096)
def _is_trusted(address: str, trusted: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def http_server(app: Application, settings: Settings) -> tornado.httpserver.HTTPServer:
    """The server every process runs. Handlers that take bodies bound them per route before reading them;
    the body of any other request is read whole first, up to the largest limit of those routes (not the
    largest of all: an import's 256 MiB would be buffered for any GET). Slow senders are cut off (a request
    line and headers within ``header_timeout_seconds``, a body within ``body_timeout_seconds``)."""
    largest = max(route.rule.body_limit for route in routes()
                  if not getattr(route.handler, "_stream_request_body", False))
    return LamellaHTTPServer(app, trusted=settings.proxy_networks(), max_body_size=largest, max_buffer_size=64 << 20,
                             max_header_size=HEAD_LIMIT, idle_connection_timeout=settings.header_timeout_seconds,
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
    # A full garbage collection walks every object the process holds (about 70 ms here, most of it modules
    # loaded at start): every other client waited that long. What exists now lives as long as the server.
    gc.collect()
    gc.freeze()
    # A worker thread busy in Python (a bulk create checks and stores 100,000 annotations for seconds) gives
    # the interpreter lock up only when asked, after the switch interval: each step of another client's
    # request could wait that long, 5 ms by default, and a request takes several steps.
    sys.setswitchinterval(SWITCH_INTERVAL)
    server.add_sockets(sockets)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    try:
        await stopped.wait()
    finally:
        server.stop()
        services.close()
