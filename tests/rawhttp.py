"""HTTP/1.1 over a plain socket, for tests that must send what no client library would (malformed request
lines, lying framing, pipelined requests, half-closed connections) and read exactly what the server answers."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

MAX_HEAD = 1 << 20  # an answer's status line and headers


class Broken(Exception):
    """The server broke the protocol or the connection (no answer, a malformed answer, a reset)."""


@dataclass
class Answer:
    """One answer: status line, headers in order (names lower case), body, and what followed it."""

    status_line: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    streamed: bool = False  # an endless stream (text/event-stream): only its head was read
    closed: bool = False  # the server closed the connection after this answer

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((value for key, value in self.headers if key == name), None)

    def says_close(self) -> bool:
        return any(key == "connection" and "close" in value.lower() for key, value in self.headers)


@dataclass
class Connection:
    """One keep-alive connection; reads answers one at a time off a buffer."""

    address: tuple[str, int]
    timeout: float = 15.0
    sock: socket.socket | None = None
    buffer: bytearray = field(default_factory=bytearray)
    eof: bool = False
    served: int = 0  # answers read on this connection so far

    @property
    def fresh(self) -> bool:
        return self.sock is None or self.served == 0

    def open(self) -> None:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer.clear()
            self.eof = False
            self.served = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, data: bytes, half_close: bool = False) -> bool:
        """Send ``data`` (then shut our side down if asked); False if the server cut the connection first."""
        self.open()
        assert self.sock is not None
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(data)
            if half_close:
                self.sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _fill(self, timeout: float | None = None) -> bool:
        """Read more into the buffer; False at the end of the stream."""
        assert self.sock is not None
        if self.eof:
            return False
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            chunk = self.sock.recv(262144)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def _take_line(self, limit: int) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > limit:
                raise Broken(f"a line longer than {limit} bytes")
            if not self._fill():
                raise Broken("the connection ended inside a line")
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 2]
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise Broken(f"the connection ended {size - len(self.buffer)} bytes short of the body")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def at_end(self, wait: float) -> bool:
        """Whether the server closes the connection within ``wait`` seconds with nothing more to say."""
        if self.buffer:
            return False
        try:
            return not self._fill(wait)
        except (TimeoutError, BlockingIOError):
            return False

    def leftover(self, wait: float = 0.0) -> bytes:
        """What the server sent after the last answer read (waiting ``wait`` seconds for the end of the stream)."""
        if wait:
            try:
                while self._fill(wait):
                    pass
            except TimeoutError:
                pass
        return bytes(self.buffer)

    def read_answer(self, method: str) -> Answer:
        """The next final answer (1xx interim answers are skipped), its body framed as RFC 9112 section 6 says."""
        while True:
            if not self.buffer and not self._fill():
                raise Broken("closed without an answer")
            status_line = self._take_line(8192).decode("latin-1")
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise Broken(f"not a status line: {status_line[:100]!r}")
            status = int(parts[1])
            headers: list[tuple[str, str]] = []
            size = 0
            while line := self._take_line(MAX_HEAD):
                size += len(line)
                if size > MAX_HEAD:
                    raise Broken("answer headers over 1 MiB")
                name, colon, value = line.decode("latin-1").partition(":")
                if not colon:
                    raise Broken(f"a header line without a colon: {line[:100]!r}")
                headers.append((name.strip().lower(), value.strip()))
            answer = Answer(status_line, status, headers)
            if status >= 200 or status == 101:
                break
        self.served += 1
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return answer
        if (answer.header("content-type") or "").startswith("text/event-stream"):
            answer.streamed = True  # endless: the caller closes the connection
            return answer
        encoding = answer.header("transfer-encoding")
        length = answer.header("content-length")
        if encoding is not None:
            if encoding.lower() != "chunked":
                raise Broken(f"an answer in transfer coding {encoding!r}")
            body = bytearray()
            while True:
                size_line = self._take_line(1024).split(b";", 1)[0].strip()
                try:
                    chunk = int(size_line, 16)
                except ValueError:
                    raise Broken(f"a bad chunk size {size_line[:40]!r}") from None
                if chunk == 0:
                    while self._take_line(8192):  # trailers
                        pass
                    break
                body += self._take(chunk)
                if self._take(2) != b"\r\n":
                    raise Broken("a chunk without its CRLF")
            answer.body = bytes(body)
        elif length is not None:
            if not length.isdigit():
                raise Broken(f"a bad Content-Length {length[:40]!r}")
            answer.body = self._take(int(length))
        else:  # delimited by the end of the connection
            while self._fill():
                pass
            answer.body = bytes(self.buffer)
            self.buffer.clear()
            answer.closed = True
        return answer


def address_of(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    return host, int(port)
