"""Domain errors to HTTP statuses, in one table; every error body has the same JSON shape."""

from __future__ import annotations

from http import HTTPStatus

from tornado.web import HTTPError

from annotations.errors import (
    AccountNotFound,
    AnnotationNotFound,
    BadCredentials,
    BatchTooLarge,
    DatasetNotFound,
    Forbidden,
    ForeignImage,
    ImageNotFound,
    InvalidAccess,
    InvalidAnnotation,
    InvalidImport,
    InvalidLayer,
    InvalidMetadata,
    InvalidProject,
    InvalidState,
    InvalidSubmission,
    InvalidView,
    LayerNotFound,
    NameTaken,
    NotAuthenticated,
    ProjectNotFound,
    SessionNotFound,
    SharedViewNotFound,
    StaleGeneration,
    SubmittingTooFast,
    TaskNotFound,
    TaskUnavailable,
    TokenNotFound,
    TooManyAttempts,
    TransformNotFound,
)
from tiling.errors import (
    InvalidChunkKey,
    InvalidKey,
    InvalidMultiscale,
    InvalidRange,
    InvalidSegmentNames,
    InvalidTransform,
    KeyNotFound,
    MeshesNotFound,
    NotSegmentation,
    SegmentsNotFound,
    StoreDenied,
    StoreNotFound,
    StoreUnreadable,
    UnknownScale,
)

# (error class, HTTP status, machine-readable code); first match wins.
ERROR_TABLE: list[tuple[type[Exception], int, str]] = [
    (DatasetNotFound, 404, "dataset_not_found"),
    (ImageNotFound, 404, "image_not_found"),
    (SessionNotFound, 404, "session_not_found"),
    (SharedViewNotFound, 404, "shared_view_not_found"),
    (TransformNotFound, 404, "transform_not_found"),
    (AccountNotFound, 404, "account_not_found"),
    (TokenNotFound, 404, "token_not_found"),
    (LayerNotFound, 404, "layer_not_found"),
    (AnnotationNotFound, 404, "annotation_not_found"),
    (ProjectNotFound, 404, "project_not_found"),
    (TaskNotFound, 404, "task_not_found"),
    (KeyNotFound, 404, "key_not_found"),
    (MeshesNotFound, 404, "mesh_not_found"),
    (UnknownScale, 404, "scale_not_found"),
    (NotSegmentation, 404, "not_a_segmentation"),
    (SegmentsNotFound, 404, "segments_not_found"),
    (InvalidSegmentNames, 400, "invalid_segment_names"),
    (InvalidChunkKey, 400, "invalid_chunk_key"),
    (InvalidKey, 400, "invalid_key"),
    (InvalidRange, 416, "range_not_satisfiable"),
    (InvalidMetadata, 400, "invalid_metadata"),
    (InvalidTransform, 400, "invalid_transform"),
    (InvalidAccess, 400, "invalid_access"),
    (ForeignImage, 400, "foreign_image"),
    (InvalidAnnotation, 400, "invalid_annotation"),
    (InvalidLayer, 400, "invalid_layer"),
    (InvalidView, 400, "invalid_view"),
    (InvalidState, 400, "invalid_state"),
    (InvalidImport, 400, "invalid_import"),
    (InvalidProject, 400, "invalid_project"),
    (InvalidSubmission, 400, "invalid_submission"),
    (BatchTooLarge, 413, "batch_too_large"),
    (BadCredentials, 401, "bad_credentials"),
    (NotAuthenticated, 401, "not_authenticated"),
    (Forbidden, 403, "forbidden"),
    (SubmittingTooFast, 429, "submitting_too_fast"),
    (TooManyAttempts, 429, "too_many_attempts"),
    (TaskUnavailable, 409, "task_unavailable"),
    (NameTaken, 409, "name_taken"),
    (StaleGeneration, 412, "stale_generation"),
    (StoreNotFound, 503, "store_missing"),
    (InvalidMultiscale, 503, "store_invalid"),
    (StoreDenied, 503, "store_denied"),
    (StoreUnreadable, 503, "store_unreadable"),
]


class WebError(HTTPError):
    """An error of the web layer itself, with its code and the message shown to the client."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, reason=HTTPStatus(status).phrase)
        self.code = code
        self.message = message


class BadRequest(WebError):
    """A request body or parameter we cannot use: 400 with the message shown to the client."""

    def __init__(self, message: str) -> None:
        super().__init__(400, "bad_request", message)


class BodyTooLarge(WebError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "body_too_large", f"the request body is larger than this route's {limit} bytes")


class MethodNotAllowed(WebError):
    def __init__(self, method: str) -> None:
        super().__init__(405, "method_not_allowed", f"this route does not answer {method[:20]}")


class XsrfFailed(WebError):
    def __init__(self) -> None:
        super().__init__(403, "xsrf_failed", "a request made with a sign-in cookie needs the X-XSRFToken header "
                                             "holding the _xsrf cookie's value")


class NoRoute(WebError):
    def __init__(self) -> None:
        super().__init__(404, "not_found", "no such route")


# A store that fails says so without the store's location (a path on the server): that goes to the log.
STORE_MESSAGES = {
    "store_missing": "this image's stored data is missing (the server log says where it was looked for)",
    "store_invalid": "this image's stored metadata cannot be used (the server log says why)",
    "store_unreadable": "this image's stored data cannot be read (the server log says why)",
}


def classify(error: BaseException) -> tuple[int, str, str]:
    """(status, code, message) for any exception; unknown ones are a generic 500."""
    for kind, status, code in ERROR_TABLE:
        if isinstance(error, kind):
            return status, code, STORE_MESSAGES.get(code) or str(error)
    if isinstance(error, WebError):
        return error.status_code, error.code, error.message
    if isinstance(error, HTTPError):  # raised by Tornado itself
        status = error.status_code
        code = {404: "not_found", 405: "method_not_allowed", 403: "forbidden"}.get(status, "http_error")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        return status, code, phrase.lower()
    return 500, "internal_error", "internal server error (see the server log)"
