"""A dataset's thumbnail: the middle slice of its reference image from a coarse level, as a JPEG file made once.

Registered images never change, so the file (named by the image's id and a digest of its location) is written
on the first request and read from then on; a write goes to a temporary name first, so concurrent first
requests never see half a file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from tiling.omezarr import Volume
from tiling.pictures import slice_picture

THUMBNAIL_SIDE = 256  # pixels at most on a side: the finest level at which the whole xy plane fits
THUMBNAIL_QUALITY = 80
THUMBNAIL_DIR = "thumbnails"  # in the data directory


def thumbnail_path(folder: Path, image_id: int, uri: str) -> Path:
    """Where the thumbnail of an image is kept (an id reused for another image gets another name)."""
    digest = hashlib.blake2b(uri.encode(), digest_size=6).hexdigest()
    return folder / f"{image_id}-{digest}.jpg"


async def thumbnail(volume: Volume, window: Sequence[float], path: Path) -> bytes:
    """The thumbnail kept at ``path``, made (and kept) first if there is none."""
    try:
        return await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        pass
    depth, height, width = volume.geometry[0].shape[:3]
    body = await slice_picture(volume, (0, 0, 0), (width, height, depth), window, max_side=THUMBNAIL_SIDE,
                               quality=THUMBNAIL_QUALITY)
    await asyncio.to_thread(_write_once, path, body)
    return body


def _write_once(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f".{path.name}.{os.getpid()}.{id(body)}")
    draft.write_bytes(body)
    os.replace(draft, path)
