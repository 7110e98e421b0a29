"""Chunk encoders for the precomputed format (volume.md in Neuroglancer's sources).

Each takes a ``(c, z, y, x)`` array and returns bytes; they are CPU work and are run
in a worker thread by callers on an event loop.
"""

from __future__ import annotations

import zlib

import numpy as np

JPEG_DTYPES = (np.dtype(np.uint8),)


def encode_raw(data: np.ndarray) -> bytes:
    """Little-endian Fortran ``[x, y, z, c]``: the C-order bytes of a ``(c, z, y, x)`` array."""
    return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()


def encode_jpeg(data: np.ndarray, quality: int) -> bytes:
    """One JPEG whose rows, read in order, are the Fortran ``[x, y, z]`` flattening.

    For a C-order ``(z, y, x)`` block that is the block reshaped to ``(z * y, x)``.
    """
    channels, depth, height, width = data.shape
    if data.dtype != np.uint8 or channels not in (1, 3):
        raise ValueError("JPEG chunks need uint8 data with 1 or 3 channels")
    if channels == 1:
        image = np.ascontiguousarray(data.reshape(depth * height, width))
    else:
        image = np.ascontiguousarray(np.moveaxis(data, 0, -1).reshape(depth * height, width, 3))
    import imagecodecs  # here: only serving needs it, and it slows every CLI start by 0.05 s

    return bytes(imagecodecs.jpeg8_encode(image, level=quality))


def gzip_bytes(payload: bytes, level: int = 1) -> bytes:
    """gzip framing for ``Content-Encoding: gzip``; level 1 keeps encode near disk speed."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    return compressor.compress(payload) + compressor.flush()


SEGMENTATION_BLOCK = (8, 8, 8)


def encode_compressed_segmentation(data: np.ndarray, block: tuple[int, int, int] = SEGMENTATION_BLOCK) -> bytes:
    """Neuroglancer's compressed_segmentation of uint32/uint64 labels, block size given as (x, y, z).

    The (c, z, y, x) C-order array, transposed, is the Fortran-order [x, y, z, c] the format wants.
    """
    import compressed_segmentation  # here, like imagecodecs

    labels = np.transpose(data, (3, 2, 1, 0))
    return bytes(compressed_segmentation.compress(labels, block_size=block, order="F"))
