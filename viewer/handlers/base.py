"""The base handler: injected services, the route's access rule, strict JSON in and out, one error shape.

Every handler streams its request body, so that ``prepare`` (the actor, the route's rule, the
body limit) runs before any body is read: a refused or oversized request costs no parsing and
no buffering. A refused request's body is still read, and dropped, up to ``DRAIN_LIMIT``, and
the refusal answered once it has arrived: a client that sends its whole body before reading the
answer (most do) then gets the answer, not a connection reset, and the connection stays usable.
"""

from __future__ import annotations

import functools
import logging
from asyncio import Future
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel
from tornado.web import HTTPError, RequestHandler, stream_request_body

from annotations.access import ANONYMOUS, Action, Actor, DatasetAccess, require
from viewer import bodies
from viewer.apidoc import operation
from viewer.errors import BadRequest, BodyTooLarge, MethodNotAllowed, NoRoute, XsrfFailed, classify
from viewer.identity import SessionAccess
from viewer.rules import WRITE_METHODS, Rule
from viewer.services import Services

log = logging.getLogger("lamella")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, If-None-Match, Content-Type",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, Content-Encoding, ETag, Accept-Ranges",
    "Access-Control-Max-Age": "86400",
}
LOGGED_PATH = 200  # characters of a path that reach the log
DRAIN_LIMIT = 256 * 1024 * 1024  # a refused body larger than this is not read: answered at once, connection closed
HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


def _refusable(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method``, unless ``prepare`` refused the request: then the refusal, now that the body has arrived."""

    @functools.wraps(method)
    def guarded(self: BaseHandler, *args: Any, **kwargs: Any) -> Any:
        if self._refusal is not None:
            raise self._refusal
        return method(self, *args, **kwargs)  # Tornado awaits what an async method returns

    return guarded


def short_path(path: str) -> str:
    return path if len(path) <= LOGGED_PATH else path[:LOGGED_PATH] + "…"


@stream_request_body
class BaseHandler(RequestHandler):
    services: Services
    rule: Rule
    cors = False  # data endpoints of public datasets are readable from any origin
    _private = False  # the answer is for this actor only (``private_headers``): no CORS headers
    actor: Actor = ANONYMOUS
    dataset_access: DatasetAccess | None = None
    session_access: SessionAccess | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in HTTP_METHODS:
            if name in cls.__dict__:
                setattr(cls, name, _refusable(cls.__dict__[name]))
        # Only handlers that take bodies stream them (the hot GET routes skip two futures per request);
        # the server reads the body of any other request, up to the largest route limit, before prepare.
        cls._stream_request_body = any(  # type: ignore[attr-defined]
            getattr(cls, name) is not getattr(RequestHandler, name) for name in ("post", "put", "patch", "delete")
        )

    def initialize(self, services: Services, rule: Rule) -> None:
        self.services = services
        self.rule = rule
        self._body = bytearray()
        self._received = 0
        self._refusal: Exception | None = None
        self._cut_short = False  # answered before the whole body arrived: the connection closes after the answer
        self._prepared = False

    # The rule, before the body is read

    def flush(self, include_footers: bool = False) -> Future[None]:
        if not self._headers_written:  # type: ignore[has-type]
            # CORS headers go on as the headers are written, unless the answer is private by then
            # (``private_headers``): set earlier, a private answer would have to clear them again.
            if self.cors and not self._private:
                for name, value in CORS_HEADERS.items():
                    self.set_header(name, value)
            if self.request.version == "HTTP/1.0" and "Content-Length" not in self._headers:
                # HTTP/1.0 has no chunked framing: a body streamed without a length ends when the connection
                # does. Tornado would answer a keep-alive request with Keep-Alive and leave the client waiting.
                self.request.headers["Connection"] = "close"
                self.request.connection._disconnect_on_finish = True  # type: ignore[union-attr]  # no public switch
        return super().flush(include_footers)

    def prepare(self) -> Awaitable[None] | None:
        """Admit the request or keep its refusal. Synchronous when the decision is cached (Tornado awaits only
        what is returned: a chunk request then costs no coroutine here)."""
        self._prepared = True
        streaming = self._stream_request_body  # type: ignore[attr-defined]
        if streaming:  # this handler bounds its bodies itself (a refused one is drained up to DRAIN_LIMIT)
            self.request.connection.set_max_body_size(2 * DRAIN_LIMIT)
        try:
            pending = self.admit()
        except Exception as refusal:
            self._refuse(refusal, streaming)
            return None
        return None if pending is None else self._admitting(pending, streaming)

    async def _admitting(self, pending: Awaitable[None], streaming: bool) -> None:
        try:
            await pending
        except Exception as refusal:
            self._refuse(refusal, streaming)

    def _refuse(self, refusal: Exception, streaming: bool) -> None:
        if streaming and self._declared_length() > DRAIN_LIMIT:
            self.request.connection.set_max_body_size(1 << 62)  # ours is the answer, not Tornado's 400
            self._cut_short = True
            raise refusal
        self._refusal = refusal  # answered by the method once the body has arrived (see _refusable)

    def admit(self) -> Awaitable[None] | None:
        """The method, the body's declared size, the actor, XSRF and the route's rule: raises if refused;
        returns what is left to await when the database must be asked (None: admitted)."""
        method = self.request.method or ""
        if method == "OPTIONS":
            if not self.cors:
                raise MethodNotAllowed(method)
            return None
        action = self.rule.action(method)
        if action is None:
            raise MethodNotAllowed(method)
        # A handler that does not stream has its whole body already (the server's largest route limit bounds it).
        length = self._declared_length() if self._stream_request_body else len(self.request.body)  # type: ignore[attr-defined]
        if length > self.rule.body_limit:
            raise BodyTooLarge(self.rule.body_limit)
        actor = self.services.identity.known_actor(self.request)
        if actor is None:
            return self._admit_credential(action)
        self.actor = actor
        return self._admit_actor(action)

    async def _admit_credential(self, action: Action) -> None:
        self.actor = await self.services.identity.actor(self.request, self.settings.get("cookie_secret"))
        pending = self._admit_actor(action)
        if pending is not None:
            await pending

    def _admit_actor(self, action: Action) -> Awaitable[None] | None:
        self.check_xsrf()
        if self.rule.scope == "dataset":  # the hot path (every chunk): answered from the cache when it can be
            self.dataset_access = self.services.identity.known_dataset(self.actor, action,
                                                                       self.path_kwargs["dataset_ref"])
            if self.dataset_access is not None:
                if not self.dataset_access.public():
                    self.private_headers()
                return None
        return self.authorize(action)

    async def authorize(self, action: Action) -> None:
        """Apply the route's scope to ``action``: the server, the path's dataset, session or shared view."""
        identity = self.services.identity
        scope = self.rule.scope
        if scope == "server":
            require(self.actor, action)
        elif scope == "dataset":
            self.dataset_access = await identity.dataset(self.actor, action, self.path_kwargs["dataset_ref"])
        elif scope == "shared":
            self.dataset_access = await identity.shared_view(self.actor, action, self.path_kwargs["code"])
        else:
            self.session_access = await identity.session(self.path_kwargs["token"], action)
            self.dataset_access = self.session_access.dataset
        if self.dataset_access is not None and not self.dataset_access.public():
            self.private_headers()

    async def escalate(self, flag: str) -> None:
        """The body asked for more (e.g. ``save``): check the action the rule names for that flag."""
        action = self.rule.escalations[flag]
        if self.rule.scope == "session":
            assert self.session_access is not None
            await self.services.identity.session(self.session_access.token, action)
        else:
            await self.authorize(action)

    @property
    def owner(self) -> Actor:
        """Who the request acts as: a session route acts as the session's owner."""
        return self.session_access.owner if self.session_access is not None else self.actor

    def private_headers(self) -> None:
        """A private dataset's answers are for this actor only: no shared caches, no other origins."""
        self._private = True
        self.set_header("Vary", "Cookie, Authorization")

    def check_xsrf(self) -> None:
        """XSRF applies to writes made as a browser's signed-in account (a bearer token, or a cookie that signs
        nobody in, is no ambient credential); the rule may require it always (sign-in) or exempt the route
        (state sync)."""
        if self.request.method not in WRITE_METHODS or self.rule.xsrf == "exempt":
            return
        if self.rule.xsrf == "cookie" and self.actor.via != "cookie":
            return
        try:
            RequestHandler.check_xsrf_cookie(self)
        except HTTPError:
            raise XsrfFailed() from None

    def options(self, *_: Any, **__: Any) -> None:
        """The CORS preflight of a data endpoint (``prepare`` refused it elsewhere)."""
        self.set_status(204)
        self.finish()

    def check_xsrf_cookie(self) -> None:
        """Tornado's own check runs before ``prepare``: ours (``check_xsrf``) needs the actor, so runs there."""

    # The body, streamed within the route's limit

    def _declared_length(self) -> int:
        """The Content-Length as a number (0 when absent or not a number: Tornado answers 400 for that)."""
        length = self.request.headers.get("Content-Length", "0")
        if not (length.isascii() and length.isdigit()):
            return 0
        digits = length.lstrip("0")
        # int() refuses more than 4300 digits; any number of 19 digits is over every limit.
        return int(digits or "0") if len(digits) <= 18 else 1 << 62

    def data_received(self, chunk: bytes) -> None:
        self._received += len(chunk)
        if self._finished or (self._refusal is not None and self._received <= DRAIN_LIMIT):
            return  # refused: dropped
        if self._received > DRAIN_LIMIT:  # a chunked body past what we drain: answer now, then close
            self._cut_short = True
            self.send_error(413, exc_info=(BodyTooLarge, BodyTooLarge(self.rule.body_limit), None))
            return
        if self._received > self.rule.body_limit:
            self._refusal = BodyTooLarge(self.rule.body_limit)
            self._body.clear()
            return
        self._body += chunk

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    async def json_body(self, max_values: int = bodies.MAX_VALUES) -> Any:
        return await bodies.parse_async(bytes(self._body), max_values=max_values)

    async def parse_body(self, model: type[BaseModel] | None = None, max_values: int = bodies.MAX_VALUES) -> Any:
        """The body as ``model`` (default: the body model this method declares with ``@op``); ``max_values``:
        how many JSON values it may hold (bulk bodies hold more than a viewer state)."""
        model = model or operation(type(self), self.request.method or "").body
        if model is None:
            raise TypeError(f"{type(self).__name__}.{self.request.method} declares no body model")
        value = await self.json_body(max_values)
        return await bodies.validate_async(model, value, len(self._body))

    def query(self) -> Any:
        """The query arguments as the model this method declares (the last value of a repeated one)."""
        model = operation(type(self), self.request.method or "").query
        assert model is not None, f"{type(self).__name__} declares no query model"
        values = {}
        for name, given in self.request.query_arguments.items():
            try:
                values[name] = given[-1].decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"query argument {name[:40]!r} is not UTF-8") from None
        return bodies.validate(model, values)

    async def head(self, *args: Any, **kwargs: Any) -> None:
        """HEAD is GET without the body (Tornado drops it)."""
        await self.get(*args, **kwargs)  # type: ignore[attr-defined]

    # Answers

    def write_json(self, document: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if isinstance(document, BaseModel):
            self.finish(document.model_dump_json())
        else:
            self.finish(bodies.dumps(document))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        status, _, _ = classify(value) if value is not None else (500, "", "")
        if status >= 500:
            log.error("%s %s failed: %s", self.request.method, short_path(self.request.path), value,
                      exc_info=(typ, value, tb))

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info is not None and self._refusal is not None and type(exc_info[1]) is HTTPError:
            # Tornado's 405 for a method this handler lacks: the refusal prepare made says it better.
            exc_info = kwargs["exc_info"] = (type(self._refusal), self._refusal, None)
        if exc_info is not None:
            status_code, _, _ = classify(exc_info[1])
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info is not None:
            status, code, message = classify(exc_info[1])
            error = exc_info[1]
        else:
            status, code, message = status_code, "http_error", self._reason.lower()
            error = None
        self.clear_header("Content-Encoding")
        self.clear_header("Content-Range")
        self.clear_header("ETag")
        if status == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        elif status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="lamella"')
        elif status == 416 and getattr(error, "size", None) is not None:
            self.set_header("Content-Range", f"bytes */{error.size}")  # type: ignore[union-attr]
        elif status == 429 and getattr(error, "retry_after", None) is not None:
            self.set_header("Retry-After", str(int(error.retry_after + 0.999)))  # type: ignore[union-attr]
        if self._cut_short or (self._stream_request_body and not self._prepared):  # type: ignore[attr-defined]
            # Answered before the body was read (Tornado's own refusals come before prepare): Tornado closes the
            # connection after this answer, so the answer says so.
            self.set_header("Connection", "close")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(bodies.dumps({"ok": False, "status": status, "code": code, "message": message}))

    def allowed_methods(self) -> list[str]:
        methods = self.rule.allowed_methods
        return [*methods, "OPTIONS"] if self.cors else methods


for _name in ("head", "options"):  # subclasses' own methods are guarded by __init_subclass__
    setattr(BaseHandler, _name, _refusable(getattr(BaseHandler, _name)))


class NotFoundHandler(BaseHandler):
    """Unmatched paths: 404 with the JSON error body, for every method (after any body has arrived)."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    def admit(self) -> Awaitable[None] | None:
        raise NoRoute()

    async def get(self, *_: Any, **__: Any) -> None:
        raise NoRoute()

    post = put = patch = delete = get
