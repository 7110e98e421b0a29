"""Large batches handled a slice at a time, letting other threads take the interpreter lock between slices.

A bulk create holds 100,000 annotations as millions of Python objects. Some steps over them run in C without
ever letting go of the interpreter lock: converting a list to a NumPy array, sorting, and freeing a list (each
element's objects freed in one cascade). Done at once, each held every other client of the server for 50 to
200 ms (``tests/test_stall.py``); a slice of ``SLICE`` items holds it for a few milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

SLICE = 10_000  # items between two chances for other threads to run


def release(*lists: list[Any]) -> None:
    """Empty ``lists`` a slice at a time (their items freed as they go)."""
    for items in lists:
        while items:
            del items[-SLICE:]
            time.sleep(0)


def array(rows: Sequence[Any], dtype: Any, width: int | None = None) -> np.ndarray:
    """``np.array(rows)`` as ``dtype`` (``width`` values a row, or one value a row), a slice at a time."""
    shape = (-1,) if width is None else (-1, width)
    parts = []
    for start in range(0, len(rows), SLICE):
        parts.append(np.asarray(rows[start:start + SLICE], dtype=dtype).reshape(shape))
        time.sleep(0)
    return np.concatenate(parts) if parts else np.zeros((0,) if width is None else (0, width), dtype=dtype)
