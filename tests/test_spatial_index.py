"""The level assignment of the spatial index (``annotations.spatial_index``): pure code against an index held
in memory. Batches of points and of boxes that span cells arrive in different orders and are removed again
(and the room they leave refilled); after every step every annotation is served at exactly one level in every
cell of it that it meets, no cell above the finest holds more than its limit, the stored counts are the
cells' and their key bounds hold; with points only each cell holds exactly the smallest keys of what its
coarser cells left."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Collection, Mapping

import numpy as np
import pytest

from annotations.cells import LevelPlan
from annotations.spatial_index import EMPTY, Batch, CellCount, Changes, Incumbent, cells_of, place, refill

UPPER = (256.0, 256.0, 128.0)


class Memory:
    """An index in dictionaries: entries by (level, cell) and the counts table."""

    def __init__(self, plan: LevelPlan) -> None:
        self.plan = plan
        self.entries: dict[tuple[int, int], dict[int, tuple[float, bytes]]] = defaultdict(dict)
        self.stored: dict[tuple[int, int], CellCount] = {}
        self.where: dict[int, set[tuple[int, int]]] = defaultdict(set)
        self.reads = 0

    def counts(self, level: int, cells: Collection[int]) -> dict[int, CellCount]:
        return {cell: self.stored[(level, cell)] for cell in cells if (level, cell) in self.stored}

    def largest(self, level: int, wanted: Mapping[int, int]) -> dict[int, list[Incumbent]]:
        out = {}
        for cell, n in wanted.items():
            rows = sorted(((k, i, r) for i, (k, r) in self.entries[(level, cell)].items()), reverse=True)[:n]
            self.reads += len(rows)
            out[cell] = rows
        return out

    def smallest(self, level: int, cells: Collection[int]) -> dict[int, Incumbent]:
        return {cell: min((k, i, r) for i, (k, r) in self.entries[(level, cell)].items())
                for cell in cells if self.entries.get((level, cell))}

    def apply(self, changes: Changes) -> None:
        for level, cell, _, annotation_id in changes.removed:
            del self.entries[(level, cell)][annotation_id]
            self.where[annotation_id].remove((level, cell))
        for level, cell, key, annotation_id, record in changes.added:
            assert annotation_id not in self.entries[(level, cell)]
            self.entries[(level, cell)][annotation_id] = (key, record)
            self.where[annotation_id].add((level, cell))
        self.stored.update(changes.counts)

    def level_of(self, annotation_id: int) -> tuple[int, list[int]]:
        found = self.where[annotation_id]
        levels = {level for level, _ in found}
        assert len(levels) == 1, (annotation_id, found)
        return levels.pop(), sorted(cell for _, cell in found)


def box_record(lower: list[float], upper: list[float]) -> bytes:
    return np.array([*lower, *upper], dtype=np.float32).tobytes()


def bounds(records: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    values = np.frombuffer(b"".join(records), dtype=np.float32).astype(np.float64).reshape(-1, 6)
    return values[:, :3], values[:, 3:]


def random_box(rng: random.Random, spread: float) -> tuple[list[float], list[float]]:
    centre = [rng.uniform(0, u) for u in UPPER]
    if rng.random() < 0.05:  # exactly on a cell boundary
        centre[0] = 64.0
    half = [rng.uniform(0, spread) for _ in UPPER]
    lower = [float(np.float32(max(c - h, 0.0))) for c, h in zip(centre, half, strict=True)]
    upper = [float(np.float32(min(c + h, u))) for c, h, u in zip(centre, half, UPPER, strict=True)]
    return lower, upper


def check(memory: Memory, alive: dict[int, tuple[float, list[float], list[float]]], exact: bool) -> None:
    plan = memory.plan
    finest = len(plan.levels) - 1
    for annotation_id, (_, lower, upper) in alive.items():
        level, cells = memory.level_of(annotation_id)
        met = cells_of(plan, level, np.array([lower]), np.array([upper])).of(0)
        assert cells == sorted(met), annotation_id
    held = {i for entries in memory.entries.values() for i in entries}
    assert held == set(alive)
    for (level, cell), entries in memory.entries.items():
        if level == finest:
            continue
        stored = memory.stored.get((level, cell), EMPTY)
        assert stored.count == len(entries) <= plan.limit, (level, cell)
        assert all(key <= stored.max_key for key, _ in entries.values())
    if not exact:
        return
    # Each cell: the smallest keys of those that meet it and sit at a finer level or in it.
    ids = sorted(alive)
    lowers = np.array([alive[i][1] for i in ids])
    uppers = np.array([alive[i][2] for i in ids])
    at = {i: memory.level_of(i)[0] for i in ids}
    for level in range(finest):
        below: dict[int, list[tuple[float, int]]] = defaultdict(list)
        met = cells_of(plan, level, lowers, uppers)
        for row, annotation_id in enumerate(ids):
            if at[annotation_id] >= level:
                for cell in met.of(row):
                    below[cell].append((alive[annotation_id][0], annotation_id))
        for cell_key in plan.all_cells(level):
            cell = plan.level_code(cell_key)
            expected = {i for _, i in sorted(below[cell])[:plan.limit]}
            assert set(memory.entries[(level, cell)]) == expected, (level, cell)


def add(memory: Memory, alive: dict[int, tuple[float, list[float], list[float]]], rng: random.Random,
        first_id: int, count: int, spread: float, region: float = 1.0) -> None:
    keys, ids, records, lowers, uppers = [], [], [], [], []
    for annotation_id in range(first_id, first_id + count):
        lower, upper = random_box(rng, spread)
        lower, upper = [v * region for v in lower], [v * region for v in upper]
        key = rng.random()
        alive[annotation_id] = (key, lower, upper)
        keys.append(key)
        ids.append(annotation_id)
        records.append(box_record(lower, upper))
        lowers.append(lower)
        uppers.append(upper)
    memory.apply(place(memory.plan, memory, Batch.of(keys, ids, records, lowers, uppers), bounds))


def remove(memory: Memory, alive: dict[int, tuple[float, list[float], list[float]]], annotation_id: int) -> None:
    key, _, _ = alive.pop(annotation_id)
    level, cells = memory.level_of(annotation_id)
    changes = Changes(removed=[(level, cell, key, annotation_id) for cell in cells])
    if level < len(memory.plan.levels) - 1:
        stored = memory.counts(level, cells)
        changes.counts = {(level, cell): CellCount(stored[cell].count - 1, stored[cell].max_key) for cell in cells}
    memory.apply(changes)
    refill(memory.plan, memory, bounds, level, cells)


@pytest.mark.parametrize("seed", range(4))
def test_points_in_any_order_fill_cells_with_the_smallest_keys(seed: int) -> None:
    rng = random.Random(seed)
    plan = LevelPlan.for_bounds((0.0, 0.0, 0.0), UPPER, limit=5, max_code_bits=6)
    memory, alive = Memory(plan), {}
    # A batch from one corner first, then the rest: the corner does not keep the coarse cells.
    add(memory, alive, rng, 1, 200, 0.0, region=0.25)
    check(memory, alive, exact=True)
    next_id = 201
    for size in (1, 3, 50, 400, 7):
        add(memory, alive, rng, next_id, size, 0.0)
        next_id += size
        check(memory, alive, exact=True)
        for annotation_id in rng.sample(sorted(alive), 40):  # taken out, the room refilled from below
            remove(memory, alive, annotation_id)
        check(memory, alive, exact=True)


@pytest.mark.parametrize("seed", range(4))
def test_spanning_boxes_and_removals_keep_limits_and_exactly_once(seed: int) -> None:
    rng = random.Random(100 + seed)
    plan = LevelPlan.for_bounds((0.0, 0.0, 0.0), UPPER, limit=4, max_code_bits=6)
    memory, alive = Memory(plan), {}
    next_id = 1
    for step in range(12):
        size = rng.choice([1, 5, 40, 150])
        add(memory, alive, rng, next_id, size, rng.choice([0.0, 10.0, 70.0]))
        next_id += size
        check(memory, alive, exact=False)
        for annotation_id in rng.sample(sorted(alive), min(len(alive), rng.randint(0, 30))):
            remove(memory, alive, annotation_id)
        check(memory, alive, exact=False)
        assert alive or step < 2


def test_a_full_index_reads_about_what_it_evicts() -> None:
    """A batch reads the incumbents it may evict, not every incumbent of the cells it meets."""
    rng = random.Random(7)
    plan = LevelPlan.for_bounds((0.0, 0.0, 0.0), UPPER, limit=20, max_code_bits=12, min_cell_nm=8.0)
    memory, alive = Memory(plan), {}
    add(memory, alive, rng, 1, 20_000, 0.0)
    assert len(plan.levels) == 5
    memory.reads = 0
    add(memory, alive, rng, 20_001, 1000, 0.0)
    check(memory, alive, exact=False)
    held_above = sum(len(e) for (level, _), e in memory.entries.items() if level < len(plan.levels) - 1)
    assert memory.reads < 3 * 1000 < held_above, (memory.reads, held_above)
