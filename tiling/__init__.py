"""Pixels and storage: opening OME-Zarr with tensorstore, building pyramids, encoding chunks.

This package never imports the web layer; it raises the errors in ``tiling.errors``.
"""
