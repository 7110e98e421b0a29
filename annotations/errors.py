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
