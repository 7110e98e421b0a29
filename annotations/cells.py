"""The spatial index of a precomputed annotation layer: its levels, its cell keys and their Morton codes.

Pure code (no database). Levels go coarse to fine as the format asks (upstream
``src/datasource/precomputed/annotations.md``, "spatial"): level 0 is one cell over the layer's bounds,
each next level halves the cells along the axes that are at least half as long as the longest, so cells
stay roughly cubic, and ``grid_shape * chunk_size = upper_bound - lower_bound`` holds at every level.

Every stored annotation carries the Morton code of the finest cell holding its anchor. Code bits are laid
out so that the bits a coarser level drops are the lowest ones: each cell of every level is then one
contiguous range of codes, which a B-tree index on (layer, code) answers on SQLite and PostgreSQL alike.
A cell of any level is named in the database by its first finest code (``level_code``).

A cell is a closed box, as the format's cells are: an annotation meets every cell its bounding box touches,
so a point on a boundary between cells meets them all (``cells_met``). The vectorised forms take NumPy arrays
of many annotations at once and compute exactly what the scalar forms do.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from annotations.errors import InvalidView

MAX_CODE_BITS = 18  # the finest level has at most 2^18 cells (64³ for a cube)
MIN_CELL_NM = 32.0  # and no cell smaller than this along its longest side
DEFAULT_LIMIT = 2000  # annotations per cell above the finest level
_CELL = re.compile(r"(0|[1-9][0-9]{0,5})_(0|[1-9][0-9]{0,5})_(0|[1-9][0-9]{0,5})", re.ASCII)


@dataclass(frozen=True, slots=True)
class CellKey:
    """One spatial-index cell name, ``i_j_k`` (grid coordinates x, y, z), in its one canonical spelling."""

    level: int
    coords: tuple[int, int, int]

    @classmethod
    def parse(cls, plan: LevelPlan, level: int, text: str) -> CellKey:
        """The cell ``text`` of ``level``; InvalidView if malformed or outside the level's grid."""
        if not 0 <= level < len(plan.levels):
            raise InvalidView(f"no spatial level {level}")
        match = _CELL.fullmatch(text)
        if match is None:
            raise InvalidView(f"{text[:40]!r} is not a cell name i_j_k")
        coords = (int(match.group(1)), int(match.group(2)), int(match.group(3)))
        grid = plan.levels[level].grid_shape
        if any(c >= g for c, g in zip(coords, grid, strict=True)):
            raise InvalidView(f"cell {text} is outside level {level}'s grid {grid}")
        return cls(level, coords)

    def __str__(self) -> str:
        return "_".join(str(c) for c in self.coords)


@dataclass(frozen=True, slots=True)
class Level:
    bits: tuple[int, int, int]  # grid_shape = 2 ** bits per axis

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return tuple(1 << b for b in self.bits)  # type: ignore[return-value]


@dataclass(frozen=True)
class LevelPlan:
    """The levels of a layer's spatial index, from its bounds (nm, x y z), and the per-cell limit."""

    lower: tuple[float, float, float]
    upper: tuple[float, float, float]
    levels: tuple[Level, ...]
    limit: int = DEFAULT_LIMIT

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def for_bounds(lower: tuple[float, ...], upper: tuple[float, ...], limit: int = DEFAULT_LIMIT,
                   max_code_bits: int = MAX_CODE_BITS, min_cell_nm: float = MIN_CELL_NM) -> LevelPlan:
        extent = [max(u - lo, 0.0) for lo, u in zip(lower, upper, strict=True)]
        bits = [0, 0, 0]
        levels = [Level((0, 0, 0))]
        while sum(bits) < max_code_bits:
            chunk = [e / (1 << b) for e, b in zip(extent, bits, strict=True)]
            longest = max(chunk)
            if longest / 2 < min_cell_nm:
                break
            split = [a for a in range(3) if chunk[a] >= longest / 2 and chunk[a] > 0]
            split = split[: max_code_bits - sum(bits)]
            for axis in split:
                bits[axis] += 1
            levels.append(Level(tuple(bits)))  # type: ignore[arg-type]
        return LevelPlan(tuple(lower), tuple(upper), tuple(levels), limit)  # type: ignore[arg-type]

    @property
    def finest(self) -> Level:
        return self.levels[-1]

    def chunk_size(self, level: int) -> tuple[float, float, float]:
        """Cell size in nm (at least 1 along a flat axis, so that the info stays valid)."""
        return tuple(max(u - lo, 1.0) / (1 << b)  # type: ignore[return-value]
                     for lo, u, b in zip(self.lower, self.upper, self.levels[level].bits, strict=True))

    @functools.cached_property
    def _schedule(self) -> tuple[tuple[int, int], ...]:
        """(axis, bit) per code position, lowest first: the finest level's own bits lowest."""
        positions: list[tuple[int, int]] = []
        finest = self.finest.bits
        for fine, coarse in zip(self.levels[:0:-1], self.levels[-2::-1], strict=True):
            for axis in range(3):  # the bits of the finest coordinates this step of refinement adds
                for bit in range(finest[axis] - fine.bits[axis], finest[axis] - coarse.bits[axis]):
                    positions.append((axis, bit))
        return tuple(positions)

    def finest_coords(self, point: Sequence[float]) -> tuple[int, int, int]:
        """The finest cell holding ``point`` (clamped into the grid: the upper bound belongs to the last cell)."""
        coords = []
        for axis in range(3):
            size = self.chunk_size(len(self.levels) - 1)[axis]
            index = math.floor((point[axis] - self.lower[axis]) / size)
            coords.append(min(max(index, 0), self.finest.grid_shape[axis] - 1))
        return tuple(coords)  # type: ignore[return-value]

    def code(self, finest: Sequence[int]) -> int:
        value = 0
        for position, (axis, bit) in enumerate(self._schedule):
            value |= ((finest[axis] >> bit) & 1) << position
        return value

    def code_of(self, point: Sequence[float]) -> int:
        return self.code(self.finest_coords(point))

    def code_range(self, cell: CellKey) -> tuple[int, int]:
        """The finest codes (inclusive) inside ``cell``."""
        finest = self.finest.bits
        own = self.levels[cell.level].bits
        corner = [c << (f - o) for c, f, o in zip(cell.coords, finest, own, strict=True)]
        low_bits = sum(finest) - sum(own)
        low = self.code(corner)
        return low, low | ((1 << low_bits) - 1)

    def parent(self, cell: CellKey) -> CellKey:
        above = self.levels[cell.level - 1].bits
        own = self.levels[cell.level].bits
        coords = tuple(c >> (o - a) for c, o, a in zip(cell.coords, own, above, strict=True))
        return CellKey(cell.level - 1, coords)  # type: ignore[arg-type]

    def ancestry(self, cell: CellKey) -> list[CellKey]:
        """``cell`` and its ancestors, coarsest first."""
        chain = [cell]
        while chain[-1].level > 0:
            chain.append(self.parent(chain[-1]))
        return chain[::-1]

    def cells_covering(self, lower: Sequence[float], upper: Sequence[float], max_cells: int = 64) -> list[CellKey]:
        """Cells of the finest level with at most ``max_cells`` cells covering the box (for range look-ups)."""
        chosen: list[CellKey] = [CellKey(0, (0, 0, 0))]
        for level in range(1, len(self.levels)):
            size = self.chunk_size(level)
            grid = self.levels[level].grid_shape
            spans = []
            for axis in range(3):
                first = math.floor((lower[axis] - self.lower[axis]) / size[axis])
                last = math.floor((upper[axis] - self.lower[axis]) / size[axis])
                spans.append(range(min(max(first, 0), grid[axis] - 1), min(max(last, 0), grid[axis] - 1) + 1))
            if math.prod(len(s) for s in spans) > max_cells:
                break
            chosen = [CellKey(level, (i, j, k)) for i in spans[0] for j in spans[1] for k in spans[2]]
        return chosen

    def ranges_covering(self, lower: Sequence[float], upper: Sequence[float]) -> list[tuple[int, int]]:
        """Merged code ranges of the cells covering the box."""
        ranges = sorted(self.code_range(cell) for cell in self.cells_covering(lower, upper))
        merged: list[tuple[int, int]] = []
        for low, high in ranges:
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
            else:
                merged.append((low, high))
        return merged

    def level_code(self, cell: CellKey) -> int:
        """The cell's name in the database: its first finest code (unique within its level)."""
        return self.code_range(cell)[0]

    def child_codes(self, level: int, code: int) -> list[int]:
        """The level codes of the cells of ``level + 1`` inside the cell of ``level`` named ``code``: its code
        range split evenly (the bits a finer level adds are the highest it keeps)."""
        total, here, there = sum(self.finest.bits), sum(self.levels[level].bits), sum(self.levels[level + 1].bits)
        step = 1 << (total - there)
        return [code + k * step for k in range(1 << (there - here))]

    # Vectorised forms (NumPy arrays of many annotations)

    def codes(self, finest: np.ndarray) -> np.ndarray:
        """``code`` of each row of finest-level cell coordinates (n x 3 integers)."""
        finest = np.asarray(finest, dtype=np.int64).reshape(-1, 3)
        out = np.zeros(len(finest), dtype=np.int64)
        for position, (axis, bit) in enumerate(self._schedule):
            out |= ((finest[:, axis] >> bit) & 1) << position
        return out

    def finest_codes(self, points: np.ndarray) -> np.ndarray:
        """``code_of`` each row of ``points`` (n x 3, nm)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        finest = len(self.levels) - 1
        size = np.array(self.chunk_size(finest))
        grid = np.array(self.finest.grid_shape)
        coords = np.floor((points - np.array(self.lower)) / size)
        return self.codes(np.clip(coords, 0, grid - 1).astype(np.int64))

    def level_codes(self, level: int, coords: np.ndarray) -> np.ndarray:
        """``level_code`` of each row of cell coordinates of ``level`` (n x 3)."""
        shift = np.array([f - o for f, o in zip(self.finest.bits, self.levels[level].bits, strict=True)])
        return self.codes(np.asarray(coords, dtype=np.int64).reshape(-1, 3) << shift)

    def cells_met(self, level: int, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first and last cell coordinates of ``level`` (n x 3 each, inclusive) that each bounding box
        [lower, upper] meets: cell c spans [origin + c·size, origin + c·size + size], closed."""
        lower = np.asarray(lower, dtype=np.float64).reshape(-1, 3)
        upper = np.asarray(upper, dtype=np.float64).reshape(-1, 3)
        size = np.array(self.chunk_size(level))
        origin = np.array(self.lower)
        grid = np.array(self.levels[level].grid_shape)
        # The conditions are monotonic in c: step from just outside to the first (last) cell that holds.
        first = np.floor((lower - origin) / size).astype(np.int64) - 2
        last = np.floor((upper - origin) / size).astype(np.int64) + 2
        for _ in range(4):
            first = np.where(origin + first * size + size >= lower, first, first + 1)
            last = np.where(origin + last * size <= upper, last, last - 1)
        return np.clip(first, 0, grid - 1), np.clip(last, 0, grid - 1)

    def all_cells(self, level: int) -> Iterator[CellKey]:
        grid = self.levels[level].grid_shape
        for i in range(grid[0]):
            for j in range(grid[1]):
                for k in range(grid[2]):
                    yield CellKey(level, (i, j, k))
