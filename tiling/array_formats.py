"""A Zarr v2 array's metadata said in Zarr v3, over the same chunk files (nothing decoded or re-encoded).

Zarr v3 reads v2 chunk names through the ``v2`` chunk key encoding, and v2's usual compressors are v3 codecs
with the same bytes (zstd and gzip frames, Blosc containers). Filters, Fortran order and other compressors have
no byte-for-byte v3 form here: those arrays are refused, never converted.
"""

from __future__ import annotations

from typing import Any

from tiling.errors import InvalidMultiscale

V2_TYPES = {"b1": "bool", "u1": "uint8", "u2": "uint16", "u4": "uint32", "u8": "uint64", "i1": "int8",
            "i2": "int16", "i4": "int32", "i8": "int64", "f2": "float16", "f4": "float32", "f8": "float64"}
BLOSC_SHUFFLES = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}


def _codec(compressor: dict[str, Any], itemsize: int) -> dict[str, Any]:
    kind = compressor.get("id")
    if kind == "zstd":
        return {"name": "zstd", "configuration": {"level": int(compressor.get("level", 0)),
                                                   "checksum": bool(compressor.get("checksum", False))}}
    if kind == "gzip":
        return {"name": "gzip", "configuration": {"level": int(compressor.get("level", 1))}}
    if kind == "blosc":
        shuffle = int(compressor.get("shuffle", 1))
        if shuffle == -1:  # numcodecs' AUTOSHUFFLE: bit-shuffle for 1-byte items, byte-shuffle otherwise
            shuffle = 2 if itemsize == 1 else 1
        return {"name": "blosc", "configuration": {
            "cname": compressor.get("cname", "lz4"), "clevel": int(compressor.get("clevel", 5)),
            "shuffle": BLOSC_SHUFFLES[shuffle], "typesize": itemsize,
            "blocksize": int(compressor.get("blocksize", 0))}}
    raise InvalidMultiscale(f"the compressor {kind!r} has no byte-for-byte Zarr v3 codec here")


def v3_array_metadata(zarray: dict[str, Any], dimension_names: list[str]) -> dict[str, Any]:
    """The zarr.json of a v2 array (its .zarray) whose chunk files stay as they are.

    Raises:
        InvalidMultiscale: filters, Fortran order, an unknown data type or compressor.
    """
    dtype = zarray.get("dtype")
    if not isinstance(dtype, str) or len(dtype) < 3 or dtype[1:] not in V2_TYPES or dtype[0] not in "<>|":
        raise InvalidMultiscale(f"the Zarr v2 data type {dtype!r} has no Zarr v3 form here")
    if zarray.get("filters"):
        raise InvalidMultiscale("a Zarr v2 array with filters has no byte-for-byte Zarr v3 form here")
    if zarray.get("order", "C") != "C":
        raise InvalidMultiscale("a Zarr v2 array in Fortran order has no byte-for-byte Zarr v3 form here")
    itemsize = int(dtype[2:])
    data_type = V2_TYPES[dtype[1:]]
    codecs: list[dict[str, Any]] = [{"name": "bytes", "configuration": {"endian": "big" if dtype[0] == ">" else
                                                                         "little"}}]
    if zarray.get("compressor") is not None:
        codecs.append(_codec(zarray["compressor"], itemsize))
    fill = zarray.get("fill_value")
    if fill is None:
        fill = False if data_type == "bool" else 0
    return {
        "zarr_format": 3, "node_type": "array", "shape": list(zarray["shape"]), "data_type": data_type,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(zarray["chunks"])}},
        "chunk_key_encoding": {"name": "v2", "configuration": {"separator": zarray.get("dimension_separator", ".")}},
        "fill_value": fill, "codecs": codecs, "dimension_names": dimension_names,
    }
