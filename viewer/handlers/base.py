"""The base handler: injected services, the route's access rule, strict JSON in and out, one error shape.

Every handler streams its request body, so that ``prepare`` (the actor, the route's rule, the
body limit) runs before any body is read: a refused or oversized request costs no parsing.
"""

from __future__ import annotations

import logging
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


def short_path(path: str) -> str:
    return path if len(path) <= LOGGED_PATH else path[:LOGGED_PATH] + "…"


@stream_request_body
class BaseHandler(RequestHandler):
    services: Services
    rule: Rule
    cors = False  # data endpoints of public datasets are readable from any origin
    actor: Actor = ANONYMOUS
    dataset_access: DatasetAccess | None = None
    session_access: SessionAccess | None = None

    def initialize(self, services: Services, rule: Rule) -> None:
        self.services = services
        self.rule = rule
        self._body = bytearray()
        self._too_large = False

    def set_default_headers(self) -> None:
        if self.cors:
            for name, value in CORS_HEADERS.items():
                self.set_header(name, value)

    # The rule, before the body is read

    async def prepare(self) -> None:
        method = self.request.method or ""
        if method == "OPTIONS":
            if not self.cors:
                raise MethodNotAllowed(method)
            return
        action = self.rule.action(method)
        if action is None:
            raise MethodNotAllowed(method)
        self._check_length()
        self.actor = await self.services.identity.actor(self.request, self.settings.get("cookie_secret"))
        self.check_xsrf()
        await self.authorize(action)

    async def authorize(self, action: Action) -> None:
        """Apply the route's scope to ``action``: the server, the path's dataset or the path's session."""
        identity = self.services.identity
        scope = self.rule.scope
        if scope == "server":
            require(self.actor, action)
        elif scope == "dataset":
            self.dataset_access = await identity.dataset(self.actor, action, self.path_kwargs["dataset_ref"])
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
        for name in CORS_HEADERS:
            self.clear_header(name)
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

    def _check_length(self) -> None:
        length = self.request.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            return  # none, or not a number: Tornado answers 400 when it reads the body
        digits = length.lstrip("0")
        # int() of more than 4300 digits raises ValueError; any number of 19 digits is over every limit.
        if len(digits) > 18 or int(digits or "0") > self.rule.body_limit:
            raise BodyTooLarge(self.rule.body_limit)

    def data_received(self, chunk: bytes) -> None:
        if self._too_large or self._finished:
            return
        if len(self._body) + len(chunk) > self.rule.body_limit:
            self._too_large = True
            self._body.clear()
            self.send_error(413, exc_info=(BodyTooLarge, BodyTooLarge(self.rule.body_limit), None))
            return
        self._body += chunk

    @property
    def body(self) -> bytes:
        return bytes(self._body)

    async def json_body(self) -> Any:
        return await bodies.parse_async(bytes(self._body))

    async def parse_body(self, model: type[BaseModel] | None = None) -> Any:
        """The body as ``model`` (default: the body model this method declares with ``@op``)."""
        model = model or operation(type(self), self.request.method or "").body
        if model is None:
            raise TypeError(f"{type(self).__name__}.{self.request.method} declares no body model")
        value = await self.json_body()
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
        elif status == 413:
            self.set_header("Connection", "close")
        elif status == 416 and getattr(error, "size", None) is not None:
            self.set_header("Content-Range", f"bytes */{error.size}")  # type: ignore[union-attr]
        elif status == 429 and getattr(error, "retry_after", None) is not None:
            self.set_header("Retry-After", str(int(error.retry_after + 0.999)))  # type: ignore[union-attr]
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(bodies.dumps({"ok": False, "status": status, "code": code, "message": message}))

    def allowed_methods(self) -> list[str]:
        methods = self.rule.allowed_methods
        return [*methods, "OPTIONS"] if self.cors else methods


class NotFoundHandler(BaseHandler):
    """Unmatched paths: 404 with the JSON error body (for every method)."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "DELETE", "PATCH", "PUT", "OPTIONS")

    async def prepare(self) -> None:
        raise NoRoute()
