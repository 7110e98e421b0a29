"""A Neuroglancer precomputed view of an OME-Zarr image: one scale per stored level.

Conventions (precomputed volume.md; OME-Zarr 0.4/0.5 §coordinateTransformations):
OME places voxel centres at ``index * scale + translation``; precomputed places voxel
corners at ``(voxel_offset + index) * resolution``. For a pyramid whose levels are
centred (translation = (factor - 1) / 2 * base scale) every level's corner lands at
``-base_scale / 2``, so precomputed space is OME space shifted by half a base voxel.
The layer transform emitted with a state accounts for that shift.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from cachetools import LRUCache

from tiling.chunks import ChunkKey
from tiling.encoding import (
    JPEG_DTYPES,
    SEGMENTATION_BLOCK,
    encode_compressed_segmentation,
    encode_jpeg,
    encode_raw,
    gzip_bytes,
)
from tiling.errors import InvalidChunkKey, InvalidMultiscale, UnknownScale
from tiling.integers import parse_natural
from tiling.omezarr import Volume

PRECOMPUTED_DTYPES = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32",
}  # fmt: skip

Encoding = Literal["jpeg", "raw", "compressed_segmentation"]
SEGMENTATION_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """Bytes ready for the wire, with how to describe them."""

    body: bytes
    content_type: str
    content_encoding: str | None
    etag: str


def served_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype we serve: float64 narrows to float32; others must be precomputed types."""
    if dtype == np.float64:
        return np.dtype(np.float32)
    if dtype.name not in PRECOMPUTED_DTYPES:
        raise InvalidMultiscale(f"dtype {dtype} cannot be served as precomputed")
    return dtype


class ChunkCache:
    """A thread-safe LRU of encoded chunks bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._cache: LRUCache[tuple[Any, ...], EncodedChunk] = LRUCache(
            maxsize=max(1, max_bytes), getsizeof=lambda chunk: len(chunk.body) + 200
        )
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> EncodedChunk | None:
        with self._lock:
            return self._cache.get(key)

    def put(self, key: tuple[Any, ...], chunk: EncodedChunk) -> None:
        if len(chunk.body) + 200 > self._cache.maxsize:
            return
        with self._lock:
            self._cache[key] = chunk


class PrecomputedImage:
    """Serves ``info`` and chunks of one opened image in the precomputed format."""

    def __init__(
        self,
        volume: Volume,
        *,
        cache_key: Any,
        cache: ChunkCache,
        layer_type: Literal["image", "segmentation"] = "image",
        jpeg_quality: int = 85,
    ) -> None:
        self.volume = volume
        self.cache_key = cache_key
        self.cache = cache
        self.layer_type = layer_type
        self.jpeg_quality = jpeg_quality
        self.dtype = served_dtype(volume.dtype)
        self.encoding: Encoding = "raw"
        if layer_type == "image" and self.dtype in JPEG_DTYPES and volume.num_channels in (1, 3):
            self.encoding = "jpeg"
        elif layer_type == "segmentation" and self.dtype in SEGMENTATION_DTYPES:
            self.encoding = "compressed_segmentation"
        self._info = self._build_info()
        # Per level, (z, y, x) voxel offsets that chunk names carry.
        self._offsets = [tuple(reversed(scale["voxel_offset"])) for scale in self._info["scales"]]

    def info(self) -> dict[str, Any]:
        return self._info

    def _build_info(self) -> dict[str, Any]:
        geometry = self.volume.geometry
        base = geometry[0].voxel_size_nm
        scales = []
        for level in geometry:
            offset = [
                round((t - s / 2 + b / 2) / s)
                for t, s, b in zip(level.translation_nm, level.voxel_size_nm, base, strict=True)
            ]
            scale: dict[str, Any] = {
                "key": str(level.index),
                "size": list(reversed(level.shape)),
                "resolution": list(reversed(level.voxel_size_nm)),
                "voxel_offset": list(reversed(offset)),
                "chunk_sizes": [list(reversed(level.chunk))],
                "encoding": self.encoding,
            }
            if self.encoding == "compressed_segmentation":
                scale["compressed_segmentation_block_size"] = list(SEGMENTATION_BLOCK)
            scales.append(scale)
        return {
            "@type": "neuroglancer_multiscale_volume",
            "type": self.layer_type,
            "data_type": self.dtype.name,
            "num_channels": self.volume.num_channels,
            "scales": scales,
        }

    def level_of(self, scale_key: str) -> int:
        """The level a scale key names: its index, spelt as in ``info`` ("0", not "00" or another script's 0)."""
        return parse_natural(scale_key, len(self.volume.geometry) - 1, UnknownScale, "scale")

    async def chunk(self, scale_key: str, name: str, *, gzip_ok: bool = True,
                    grid: tuple[int, int, int] | None = None) -> EncodedChunk:
        """The encoded chunk ``name`` of scale ``scale_key``; ``grid`` (z, y, x): a finer chunk grid than the
        stored one (each of its sides divides the stored chunk's), as a region's source has.

        Raises:
            UnknownScale: no such scale.
            InvalidChunkKey: malformed, misaligned or out-of-bounds chunk name.
        """
        level = self.level_of(scale_key)
        geometry = self.volume.geometry[level]
        step = geometry.chunk if grid is None else grid
        if any(stored % side for stored, side in zip(geometry.chunk, step, strict=True)):
            raise InvalidChunkKey(f"a chunk grid of {step} does not divide the stored chunks {geometry.chunk}")
        key = ChunkKey.parse(name)
        offset = self._offsets[level]
        shifted = ChunkKey(
            begin=tuple(b - o for b, o in zip(key.begin, offset, strict=True)),  # type: ignore[arg-type]
            end=tuple(e - o for e, o in zip(key.end, offset, strict=True)),  # type: ignore[arg-type]
        )
        shifted.check(geometry.shape, step)
        use_gzip = gzip_ok and self.encoding == "raw"
        cache_key = (self.cache_key, level, shifted.begin, step, self.encoding, use_gzip, self.jpeg_quality)
        cached = self.cache.get(cache_key)
        if cached is not None:
            return cached
        data = await self.volume.read(level, shifted.slices)
        encoded = await asyncio.to_thread(self._encode, data, use_gzip)
        self.cache.put(cache_key, encoded)
        return encoded

    def _encode(self, data: np.ndarray, use_gzip: bool) -> EncodedChunk:
        if self.encoding == "jpeg":
            body = encode_jpeg(data, self.jpeg_quality)
            content_type, content_encoding = "image/jpeg", None
        elif self.encoding == "compressed_segmentation":
            body = encode_compressed_segmentation(data)
            content_type, content_encoding = "application/octet-stream", None
        else:
            body = encode_raw(data.astype(self.dtype, copy=False))
            content_type, content_encoding = "application/octet-stream", None
            if use_gzip:
                body, content_encoding = gzip_bytes(body), "gzip"
        etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
        return EncodedChunk(body, content_type, content_encoding, etag)
