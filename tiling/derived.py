"""Where what Lamella derives from a label image (meshes, the segment table) is kept.

An imported label image is a store Lamella wrote, so its derived data goes inside it (``meshes/``,
``segments/`` beside the Zarr levels, which Zarr readers ignore) and travels with it. A label image
that was only registered (``lamella add``: read-only, perhaps remote) gets a folder of its own in the
data directory, named by the image's id, which never changes.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


def derived_dir(uri: str, managed: bool, images_dir: Path, image_id: int) -> Path:
    """The folder that holds ``meshes/`` and ``segments/`` of one label image."""
    if managed and urlparse(uri).scheme in ("", "file"):
        return Path(urlparse(uri).path if uri.startswith("file:") else uri)
    return images_dir / "derived" / str(image_id)
