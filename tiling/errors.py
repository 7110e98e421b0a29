"""Errors raised by the pixel library; each also subclasses the matching builtin."""


class TilingError(Exception):
    """Root of every error the pixel library raises on purpose."""


class StoreNotFound(TilingError, FileNotFoundError):
    """The store (a folder or URL) does not exist or holds no OME-Zarr image."""


class InvalidMultiscale(TilingError, ValueError):
    """The store holds metadata that is not a usable OME-Zarr multiscale image."""


class StoreUnreadable(TilingError, OSError):
    """The store exists but its arrays cannot be opened or read (corrupt or unreachable)."""


class StoreDenied(StoreUnreadable):
    """Object storage that refused the credentials given (or their absence): 401 or 403 from the bucket."""


class InvalidKey(TilingError, ValueError):
    """A stored key that is malformed or escapes the store."""


class KeyNotFound(TilingError, KeyError):
    """A stored key that is well formed but absent."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "key not found"


class MeshesNotFound(TilingError, KeyError):
    """A label image without meshes, a mesh build that has been replaced, or a segment with no mesh."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no meshes"


class InvalidChunkKey(TilingError, ValueError):
    """A precomputed chunk name that is malformed, misaligned or out of bounds."""


class UnknownScale(TilingError, KeyError):
    """A precomputed scale key that the image does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown scale"


class InvalidRange(TilingError, ValueError):
    """An HTTP byte range that cannot be satisfied.

    ``size`` is the size in bytes of the whole value when known, for the 416 answer's
    ``Content-Range: bytes */<size>`` (RFC 9110 §15.5.17).
    """

    def __init__(self, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


class ImportProblem(TilingError, ValueError):
    """An input file that cannot be converted; the message names the file and the problem."""


class InvalidTransform(TilingError, ValueError):
    """A transform or landmark set that cannot be used: singular, non-finite, malformed or underdetermined."""


class InvalidSegmentNames(TilingError, ValueError):
    """A segment-names table that cannot be used: unreadable, a malformed row, a repeated or unknown id."""


class NotSegmentation(TilingError, ValueError):
    """An image that is not a label image of whole numbers, asked for what only segmentations have."""


class SegmentsNotFound(TilingError, FileNotFoundError):
    """A label image whose segment table has not been computed (``lamella segments``)."""
