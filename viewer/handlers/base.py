"""The base handler: injected services, JSON in and out, and the one error body shape."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import BaseModel, ValidationError
from tornado.web import HTTPError, RequestHandler

from viewer.errors import BadRequest, classify
from viewer.services import Services

log = logging.getLogger("lamella")

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, If-None-Match, Content-Type",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, Content-Encoding, ETag, Accept-Ranges",
    "Access-Control-Max-Age": "86400",
}


class BaseHandler(RequestHandler):
    services: Services
    cors = False  # data endpoints are readable from any origin

    def initialize(self, services: Services) -> None:
        self.services = services

    def set_default_headers(self) -> None:
        if self.cors:
            for name, value in CORS_HEADERS.items():
                self.set_header(name, value)

    def options(self, *_: Any, **__: Any) -> None:
        if not self.cors:
            raise HTTPError(405)
        self.set_status(204)
        self.finish()

    def write_json(self, document: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        if isinstance(document, BaseModel):
            self.finish(document.model_dump_json())
        else:
            self.finish(json.dumps(document, default=str))

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except (ValueError, RecursionError):
            raise BadRequest("the request body is not valid JSON") from None

    def parse_body(self, model: type[BaseModel]) -> Any:
        try:
            return model.model_validate(self.json_body())
        except ValidationError as error:
            raise BadRequest("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())) from None

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        status, _, _ = classify(value) if value is not None else (500, "", "")
        if status >= 500:
            log.error("%s %s failed: %s", self.request.method, self.request.uri, value, exc_info=(typ, value, tb))
        else:
            log.info("%s %s: %s %s", self.request.method, self.request.uri, status, value)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info is not None:
            status_code, _, _ = classify(exc_info[1])
        super().send_error(status_code, **kwargs)

    def _has(self, method: str) -> bool:
        own = getattr(type(self), method.lower(), None)
        return own is not None and own is not getattr(RequestHandler, method.lower(), None)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info is not None:
            status, code, message = classify(exc_info[1])
        else:
            status, code, message = status_code, "http_error", self._reason
        if status == 405:
            allowed = [m for m in ("GET", "HEAD", "POST", "PUT", "OPTIONS") if self._has(m)]
            self.set_header("Allow", ", ".join(allowed))
        self.clear_header("Content-Encoding")
        self.clear_header("Content-Range")
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"ok": False, "status": status, "code": code, "message": message}))


class NotFoundHandler(BaseHandler):
    """Unmatched paths: 404 with the JSON error body."""

    def prepare(self) -> None:
        raise HTTPError(404, reason=f"no route for {self.request.path}")
