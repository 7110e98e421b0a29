"""Domain errors to HTTP statuses, in one table; every error body has the same JSON shape."""

from __future__ import annotations

from tornado.web import HTTPError

from annotations.errors import (
    DatasetNotFound,
    ForeignImage,
    ImageNotFound,
    InvalidMetadata,
    NameTaken,
    SessionNotFound,
    StaleGeneration,
    TransformNotFound,
)
from tiling.errors import (
    InvalidChunkKey,
    InvalidKey,
    InvalidMultiscale,
    InvalidRange,
    InvalidTransform,
    KeyNotFound,
    StoreNotFound,
    StoreUnreadable,
    UnknownScale,
)

# (error class, HTTP status, machine-readable code); first match wins.
ERROR_TABLE: list[tuple[type[Exception], int, str]] = [
    (DatasetNotFound, 404, "dataset_not_found"),
    (ImageNotFound, 404, "image_not_found"),
    (SessionNotFound, 404, "session_not_found"),
    (TransformNotFound, 404, "transform_not_found"),
    (KeyNotFound, 404, "key_not_found"),
    (UnknownScale, 404, "scale_not_found"),
    (InvalidChunkKey, 400, "invalid_chunk_key"),
    (InvalidKey, 400, "invalid_key"),
    (InvalidRange, 416, "range_not_satisfiable"),
    (InvalidMetadata, 400, "invalid_metadata"),
    (InvalidTransform, 400, "invalid_transform"),
    (ForeignImage, 400, "foreign_image"),
    (NameTaken, 409, "name_taken"),
    (StaleGeneration, 412, "stale_generation"),
    (StoreNotFound, 503, "store_missing"),
    (InvalidMultiscale, 503, "store_invalid"),
    (StoreUnreadable, 503, "store_unreadable"),
]


class BadRequest(HTTPError):
    """A request body or parameter we cannot use: 400 with the message shown to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(400, reason="Bad Request")
        self.message = message


def classify(error: BaseException) -> tuple[int, str, str]:
    """(status, code, message) for any exception; unknown ones are a generic 500."""
    for kind, status, code in ERROR_TABLE:
        if isinstance(error, kind):
            return status, code, str(error)
    if isinstance(error, BadRequest):
        return 400, "bad_request", error.message
    if isinstance(error, HTTPError):
        message = error.reason or "error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return error.status_code, code, message
    return 500, "internal_error", "internal server error (see the server log)"
