"""What each handler method takes and gives, declared once: the handler parses its body and query
with these models, and the OpenAPI document (``viewer/openapi.py``) is generated from them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])


class ErrorOut(BaseModel):
    """The one error body: every 4xx and 5xx answer has it."""

    ok: Literal[False] = False
    status: int
    code: str
    message: str


@dataclass(frozen=True)
class Op:
    """One operation: its summary, request body and query models, and its success answer.

    ``response`` is a model, a JSON schema (for documents we pass through, such as a viewer
    state), or None for an empty answer; ``content`` is the success answer's media type (or types).
    ``raw_body``: the media types (and schemas) of a body the handler reads as a file (an import).
    """

    summary: str = ""
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | dict[str, Any] | None = None
    status: int = 200
    content: str | tuple[str, ...] | dict[str, dict[str, Any]] = "application/json"  # dict: a schema per type
    also: dict[int, str] = field(default_factory=dict)  # other successes: status -> description
    raw_body: dict[str, dict[str, Any]] | None = None  # a body that is a file, not a JSON model: media type -> schema


def op(**kwargs: Any) -> Callable[[F], F]:
    """Declare a handler method's operation (see ``Op``)."""

    def mark(method: F) -> F:
        method.__op__ = Op(**kwargs)  # type: ignore[attr-defined]
        return method

    return mark


def operation(handler: type, method: str) -> Op:
    """The declared operation of ``handler``'s ``method`` (HEAD is GET's), or an empty one."""
    function = getattr(handler, "get" if method.upper() == "HEAD" else method.lower(), None)
    return getattr(function, "__op__", None) or Op()


# A rule across two fields, said in the schema (JSON Schema's if/then): a release date is for private datasets.
RELEASE_DATE_IS_PRIVATE: dict[str, Any] = {
    "if": {"properties": {"visibility": {"const": "public"}}, "required": ["visibility"]},
    "then": {"properties": {"release_date": {"type": "null"}}},
}
ANY_JSON: dict[str, Any] = {"type": "object"}
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
CHUNK_TYPES = ("image/jpeg", "application/octet-stream")  # JPEG for uint8 images, else raw or compressed_segmentation
STORED_TYPES = {"application/octet-stream": BINARY, "application/json": ANY_JSON}  # chunks, shards; metadata
FILE_TYPES = ("text/html", "text/css", "application/javascript", "application/json", "application/wasm",
              "image/png", "image/svg+xml")
