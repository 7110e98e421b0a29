"""Errors raised by the database services; each also subclasses the matching builtin."""


class CatalogError(Exception):
    """Root of every error the database services raise on purpose."""


class DatasetNotFound(CatalogError, KeyError):
    """No dataset with that id or name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "dataset not found"


class ImageNotFound(CatalogError, KeyError):
    """No image with that name in the dataset."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "image not found"


class SessionNotFound(CatalogError, KeyError):
    """No viewer session with that token."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "viewer session not found"


class InvalidMetadata(CatalogError, ValueError):
    """Dataset metadata (REMBI) that does not validate."""


class NameTaken(CatalogError, ValueError):
    """A dataset or image name that is already used."""


class StaleGeneration(CatalogError):
    """A state update based on a generation that is no longer current (HTTP 412)."""


class ForeignImage(CatalogError, ValueError):
    """An image named as the reference of a transform that belongs to another dataset."""


class TransformNotFound(CatalogError, KeyError):
    """No stored transform with that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "transform not found"


class NotAuthenticated(CatalogError, PermissionError):
    """The request needs an account: anonymous, or its credential is missing, malformed, expired or revoked."""


class Forbidden(CatalogError, PermissionError):
    """The actor is known and may see the thing, but may not do this to it."""


class BadCredentials(NotAuthenticated):
    """A sign-in with an unknown account, a wrong password or a disabled account (one message for all)."""


class TooManyAttempts(CatalogError, PermissionError):
    """Too many failed sign-ins for an account or an address: refused until ``retry_after`` seconds pass."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AccountNotFound(CatalogError, KeyError):
    """No account with that name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "account not found"


class TokenNotFound(CatalogError, KeyError):
    """No API token with that id (or not one of the caller's)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "token not found"


class InvalidAccess(CatalogError, ValueError):
    """A role, visibility, release date, account name, e-mail or password that is not acceptable."""


class LayerNotFound(CatalogError, KeyError):
    """No annotation layer with that id in the dataset."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "annotation layer not found"


class AnnotationNotFound(CatalogError, KeyError):
    """No annotation with that id in the layer (or it is deleted, or not in the view asked for)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "annotation not found"


class InvalidAnnotation(CatalogError, ValueError):
    """An annotation that does not fit its layer: type, rank, bounds, label, property or relationship."""


class InvalidLayer(CatalogError, ValueError):
    """An annotation layer declaration that cannot be used (or a change that would strand its annotations)."""


class InvalidView(CatalogError, ValueError):
    """A precomputed view (filters), spatial cell key or list query that cannot be used."""


class InvalidState(CatalogError, ValueError):
    """A viewer state whose layers are not a list of layer objects (nor Neuroglancer's older name-keyed form)."""


class BatchTooLarge(CatalogError, ValueError):
    """More annotations in one request than a bulk write takes."""

class SharedViewNotFound(CatalogError, KeyError):
    """No shared view with that code (or its dataset may not be read)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "shared view not found"

class InvalidImport(CatalogError, ValueError):
    """An import file that cannot be read or does not fit its layer; the message names the line or item and
    the field."""


class ProjectNotFound(CatalogError, KeyError):
    """No Citizen Science project with that name in the dataset."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "project not found"


class TaskNotFound(CatalogError, KeyError):
    """No task with that id in the project."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"


class InvalidProject(CatalogError, ValueError):
    """A project, workflow, task region or gold answer that cannot be used."""


class InvalidSubmission(CatalogError, ValueError):
    """A submission whose marks do not fit its task: wrong tool or label, outside the region, malformed."""


class TaskUnavailable(CatalogError):
    """A submission for a task that is retired, paused, not this volunteer's, or already answered by them (409)."""


class SubmittingTooFast(TooManyAttempts):
    """More submissions than the per-volunteer or per-address limit allows (429 with Retry-After)."""


class InvalidEntry(InvalidMetadata):
    """An archive entry (EMPIAR, BioImage Archive) that is malformed, lacks required fields, or cannot be registered."""
