"""Which cells of the spatial index serve which annotations, kept up to date as annotations come and go: the
level assignment of the ``current`` view, as pure code (the database side is ``annotations.spatial_rows``).

The rule (upstream ``annotations.md``, "Spatial index"), as kept here:

* every annotation is served at exactly one level, in every cell of that level its bounding box meets
  (cells are closed boxes), so along every chain of cells from level 0 to a finest cell it meets, it is
  served exactly once;
* a cell above the finest level serves at most ``limit`` annotations; the finest level serves all that
  reach it;
* a cell holds the annotations with the smallest sample keys (a fixed uniform random number of each
  annotation) among those that meet it and no coarser cell took: a uniform random subsample of what its
  coarser cells left, whatever order annotations arrive in.

Placing a batch goes coarse to fine. At each level the batch's annotations (sorted by key) meet cells; where
a cell would overflow, the cell keeps its ``limit`` smallest keys: the largest of its incumbents are evicted
(and sink with the batch to the next level) and the batch's largest go on down. Only the incumbents that
can be evicted are read: each cell's count and an upper bound of its keys (``CellCount``) say how many, and
those are read largest first (``CellState.largest``). A batch of n annotations so reads about as many rows
as it evicts, not the cells it meets.

Taking an annotation out leaves its cells one short: ``refill`` takes up the smallest key of each such
cell's children (the smallest of all below it, when each cell holds the smallest keys of what is left),
which leaves that child one short in turn, and so on down.

An annotation that meets several cells of a level is placed there only if every one of them keeps it, and
taken up by a refill only if every one has room; when a cell evicts such an incumbent, it leaves all its
cells of that level, so its other cells may be left below their limit. This only loosens the third point (a
cell then holds fewer than it could, until later annotations fill it); the first two always hold.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from annotations.cells import LevelPlan
from annotations.gradual import array

Boxes = Callable[[list[bytes]], tuple[np.ndarray, np.ndarray]]  # records -> their bounding boxes (n x 3 each)
Incumbent = tuple[float, int, bytes]  # sample key, annotation id, record


@dataclass(frozen=True, slots=True)
class CellCount:
    """How many annotations a cell (above the finest level) serves, and no key of them is above ``max_key``."""

    count: int
    max_key: float


EMPTY = CellCount(0, -1.0)


class CellState(Protocol):
    """What placing reads of the stored index (one layer and type)."""

    def counts(self, level: int, cells: Collection[int]) -> dict[int, CellCount]:
        """The stored counts of these cells (absent: empty)."""

    def largest(self, level: int, wanted: Mapping[int, int]) -> dict[int, list[Incumbent]]:
        """Per cell, its ``wanted[cell]`` incumbents with the largest (key, id), largest first."""

    def smallest(self, level: int, cells: Collection[int]) -> dict[int, Incumbent]:
        """Per cell that holds any, its incumbent with the smallest (key, id)."""

    def apply(self, changes: Changes) -> None:
        """Store ``changes`` (refilling reads what it changed, a step at a time)."""


@dataclass
class Batch:
    """Annotations to place: keys, ids, encoded records and bounding boxes, sorted by (key, id)."""

    keys: np.ndarray  # float64
    ids: np.ndarray  # int64
    records: np.ndarray  # bytes (objects): taken and joined as arrays, not a Python loop an item
    lower: np.ndarray  # n x 3 float64
    upper: np.ndarray

    @classmethod
    def of(cls, keys: Iterable[float], ids: Iterable[int], records: Iterable[bytes], lower: Iterable[Iterable[float]],
           upper: Iterable[Iterable[float]]) -> Batch:
        batch = cls(np.fromiter(keys, dtype=np.float64), np.fromiter(ids, dtype=np.int64), objects(list(records)),
                    array(list(lower), np.float64, 3), array(list(upper), np.float64, 3))
        return batch.take(np.lexsort((batch.ids, batch.keys)))

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Batch:
        return Batch(self.keys[rows], self.ids[rows], self.records[rows], self.lower[rows], self.upper[rows])


@dataclass
class Changes:
    """What placing (or removing) changes in the stored index."""

    removed: list[tuple[int, int, float, int]] = field(default_factory=list)  # level, cell, key, id
    added: list[tuple[int, int, float, int, bytes]] = field(default_factory=list)  # level, cell, key, id, record
    counts: dict[tuple[int, int], CellCount] = field(default_factory=dict)  # (level, cell) -> new count


@dataclass
class Met:
    """Which cells of one level each of n bounding boxes meets: most meet one (``single``), the others several."""

    single: np.ndarray  # per box: the code of its one cell, or -1
    several: dict[int, list[int]]  # box -> the codes of its cells, for boxes that meet more than one

    def of(self, row: int) -> list[int]:
        return self.several[row] if row in self.several else [int(self.single[row])]


def objects(items: list[bytes]) -> np.ndarray:
    """``items`` as a one-dimensional array of objects."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def cells_of(plan: LevelPlan, level: int, lower: np.ndarray, upper: np.ndarray) -> Met:
    """The cells of ``level`` (as ``LevelPlan.level_code``) each bounding box meets."""
    first, last = plan.cells_met(level, lower, upper)
    one = np.all(first == last, axis=1)
    single = np.where(one, plan.level_codes(level, first), -1)
    several = {}
    for row in np.flatnonzero(~one).tolist():
        ranges = [range(a, b + 1) for a, b in zip(first[row].tolist(), last[row].tolist(), strict=True)]
        several[row] = plan.level_codes(level, np.array(list(itertools.product(*ranges)), dtype=np.int64)).tolist()
    return Met(single, several)


def place(plan: LevelPlan, state: CellState, batch: Batch, bounds: Boxes) -> Changes:
    """Place ``batch`` (annotations not in the index) in the index ``state`` holds; ``bounds`` decodes stored
    records' bounding boxes (of incumbents that sink). Returns the changes to store."""
    changes = Changes()
    finest = len(plan.levels) - 1
    pending = batch
    for level in range(len(plan.levels)):
        if not len(pending):
            break
        met = cells_of(plan, level, pending.lower, pending.upper)
        if level == finest:
            _add(changes, level, pending, met, np.ones(len(pending), dtype=bool))
            break
        pending = _level(plan, level, state, pending, met, changes, bounds)
    return changes


def _add(changes: Changes, level: int, batch: Batch, met: Met, stays: np.ndarray) -> None:
    """Entries for the rows of ``batch`` that ``stays`` marks, in every cell of theirs."""
    rows = np.flatnonzero(stays & (met.single >= 0))
    changes.added.extend(zip(itertools.repeat(level), met.single[rows].tolist(), batch.keys[rows].tolist(),
                             batch.ids[rows].tolist(), batch.records[rows].tolist(), strict=False))
    for row, codes in met.several.items():
        if stays[row]:
            key, annotation_id, record = float(batch.keys[row]), int(batch.ids[row]), batch.records[row]
            changes.added.extend((level, cell, key, annotation_id, record) for cell in codes)


def _level(plan: LevelPlan, level: int, state: CellState, pending: Batch, met: Met, changes: Changes,
           bounds: Boxes) -> Batch:
    """Place what of ``pending`` this level keeps; returns what goes on down (with the evicted incumbents)."""
    limit = plan.limit
    n = len(pending)
    keys, ids = pending.keys, pending.ids
    # The cells met, numbered 0..m-1: ``where`` is each single box's cell number.
    several_cells = sorted({cell for codes in met.several.values() for cell in codes})
    cells = np.unique(np.concatenate([met.single[met.single >= 0], np.array(several_cells, dtype=np.int64)]))
    number = {cell: i for i, cell in enumerate(cells.tolist())}
    where = np.full(n, -1, dtype=np.int64)
    singles = np.flatnonzero(met.single >= 0)
    where[singles] = np.searchsorted(cells, met.single[singles])
    stored = state.counts(level, cells.tolist())
    count = np.array([stored[c].count if c in stored else 0 for c in cells.tolist()], dtype=np.int64)
    max_key = np.array([stored[c].max_key if c in stored else -1.0 for c in cells.tolist()])
    # A box may stay in a full cell only below the cell's largest key (an upper bound: ``CellCount``).
    eligible = np.zeros(n, dtype=bool)
    eligible[singles] = (count[where[singles]] < limit) | (keys[singles] <= max_key[where[singles]])
    contenders = np.bincount(where[eligible & (where >= 0)], minlength=len(cells))
    several_eligible: dict[int, bool] = {}
    for row, codes in met.several.items():
        numbers = [number[c] for c in codes]
        ok = all(count[i] < limit or keys[row] <= max_key[i] for i in numbers)
        several_eligible[row] = ok
        if ok:
            for i in numbers:
                contenders[i] += 1
    extra = count + contenders - limit
    over = np.flatnonzero(extra > 0)
    # Where a cell overflows: its (key, id) threshold (what is below stays) and the incumbents it evicts.
    wanted = {int(cells[i]): int(min(extra[i] + 1, count[i])) for i in over.tolist() if count[i] > 0}
    threshold_key, threshold_id, new_max, evicted = _overflow(
        over, extra, count, max_key, state.largest(level, wanted), number, where, eligible, several_eligible, met,
        keys, ids)
    below = np.zeros(n, dtype=bool)
    cell_of = np.maximum(where, 0)
    below[singles] = (keys[singles] < threshold_key[cell_of[singles]]) | (
        (keys[singles] == threshold_key[cell_of[singles]]) & (ids[singles] < threshold_id[cell_of[singles]]))
    stays = eligible & below
    for row, codes in met.several.items():
        stays[row] = several_eligible[row] and all(
            (keys[row], ids[row]) < (threshold_key[number[c]], threshold_id[number[c]]) for c in codes)
    _add(changes, level, pending, met, stays)
    delta = np.bincount(where[stays & (where >= 0)], minlength=len(cells))
    placed_max = np.full(len(cells), -1.0)
    np.maximum.at(placed_max, where[stays & (where >= 0)], keys[stays & (where >= 0)])
    for row, codes in met.several.items():
        if stays[row]:
            for cell in codes:
                delta[number[cell]] += 1
                placed_max[number[cell]] = max(placed_max[number[cell]], keys[row])
    top = np.where(np.isin(np.arange(len(cells)), over), new_max, np.maximum(max_key, placed_max))
    counts = {int(cells[i]): [int(count[i] + delta[i]), float(top[i])]
              for i in np.flatnonzero((delta != 0) | (top != max_key)).tolist()}
    # Evicted incumbents leave every cell of this level they met.
    sinking = _sinking(evicted, bounds)
    if len(sinking):
        gone = cells_of(plan, level, sinking.lower, sinking.upper)
        for row in range(len(sinking)):
            key, annotation_id = float(sinking.keys[row]), int(sinking.ids[row])
            for cell in gone.of(row):
                changes.removed.append((level, cell, key, annotation_id))
                if cell not in counts:
                    now = stored.get(cell) or state.counts(level, [cell]).get(cell, EMPTY)
                    stored[cell] = now
                    counts[cell] = [now.count, now.max_key]
                counts[cell][0] -= 1
    for cell, (new_count, bound) in counts.items():
        changes.counts[(level, cell)] = CellCount(new_count, bound)
    rest = pending.take(np.flatnonzero(~stays))
    if not len(sinking):
        return rest
    both = Batch(np.concatenate([rest.keys, sinking.keys]), np.concatenate([rest.ids, sinking.ids]),
                 np.concatenate([rest.records, sinking.records]), np.concatenate([rest.lower, sinking.lower]),
                 np.concatenate([rest.upper, sinking.upper]))
    return both.take(np.lexsort((both.ids, both.keys)))


def _overflow(over: np.ndarray, extra: np.ndarray, count: np.ndarray, max_key: np.ndarray,
              largest: dict[int, list[Incumbent]], number: dict[int, int], where: np.ndarray, eligible: np.ndarray,
              several_eligible: dict[int, bool], met: Met, keys: np.ndarray, ids: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, tuple[float, bytes]]]:
    """Where cells overflow, which of their incumbents (read) and contenders go: in each such cell the union of
    both, largest (key, id) first, drops its first ``extra`` (the cell's excess). Returns per cell number the
    (key, id) threshold (what is below it stays), the cells' new key bounds, and the evicted incumbents.

    All overflowing cells at once, as one table sorted by NumPy: a layer of millions has thousands of them at
    each coarse level, and a sort each would cost more than the sorting itself."""
    m = len(extra)
    overflowing = np.zeros(m, dtype=bool)
    overflowing[over] = True
    # Incumbents read (row -1), then the contenders of overflowing cells: single-cell boxes and spanning ones.
    read = [(number[cell], key, annotation_id) for cell, rows in largest.items() for key, annotation_id, _ in rows]
    records = {annotation_id: (key, record) for rows in largest.values() for key, annotation_id, record in rows}
    single_rows = np.flatnonzero(eligible & (where >= 0) & overflowing[np.maximum(where, 0)])
    spanning = [(number[cell], row) for row, ok in several_eligible.items() if ok for cell in met.several[row]
                if overflowing[number[cell]]]
    spanning_rows = np.array([row for _, row in spanning], dtype=np.int64)
    cell = np.concatenate([np.array([c for c, _, _ in read], dtype=np.int64), where[single_rows],
                           np.array([c for c, _ in spanning], dtype=np.int64)])
    key = np.concatenate([np.array([k for _, k, _ in read], dtype=np.float64), keys[single_rows],
                          keys[spanning_rows]])
    ident = np.concatenate([np.array([a for _, _, a in read], dtype=np.int64), ids[single_rows],
                            ids[spanning_rows]])
    row = np.concatenate([np.full(len(read), -1, dtype=np.int64), single_rows, spanning_rows])
    order = np.lexsort((-ident, -key, cell))  # by cell, largest (key, id) first
    cell, key, ident, row = cell[order], key[order], ident[order], row[order]
    starts = np.searchsorted(cell, over)
    place = np.arange(len(cell)) - starts[np.searchsorted(over, cell)]  # position within its cell
    excess = extra[cell]
    last_dropped = place == excess - 1
    threshold_key = np.full(m, np.inf)
    threshold_id = np.zeros(m, dtype=np.int64)
    threshold_key[cell[last_dropped]] = key[last_dropped]
    threshold_id[cell[last_dropped]] = ident[last_dropped]
    first_kept = place == excess
    kept_key = np.full(m, -1.0)
    kept_key[cell[first_kept]] = key[first_kept]
    has_kept = np.zeros(m, dtype=bool)
    has_kept[cell[first_kept]] = True
    incumbent_kept = np.zeros(m, dtype=bool)
    incumbent_kept[cell[(place >= excess) & (row < 0)]] = True
    all_read = np.bincount(cell[row < 0], minlength=m) == count
    new_max = max_key.copy()
    new_max[over] = np.where((has_kept & (all_read | incumbent_kept))[over], kept_key[over], threshold_key[over])
    evicted: dict[int, tuple[float, bytes]] = {}
    for annotation_id in ident[(place < excess) & (row < 0)].tolist():
        evicted[annotation_id] = records[annotation_id]
    return threshold_key, threshold_id, new_max, evicted


def _sinking(evicted: dict[int, tuple[float, bytes]], bounds: Boxes) -> Batch:
    records = [record for _, record in evicted.values()]
    lower, upper = bounds(records)
    return Batch(np.array([key for key, _ in evicted.values()], dtype=np.float64),
                 np.array(list(evicted), dtype=np.int64), objects(records), lower, upper)


REFILL_STEPS = 64  # annotations a refill takes up at most, for one change


def refill(plan: LevelPlan, state: CellState, bounds: Boxes, level: int, cells: Iterable[int],
           steps: int = REFILL_STEPS) -> int:
    """Fill the room in ``cells`` of ``level`` (left by annotations taken out) from below, cell by cell down
    the levels, storing each step through ``state``. Returns the number of annotations taken up."""
    finest = len(plan.levels) - 1
    queue = deque((level, cell) for cell in cells)
    taken = 0
    while queue and taken < steps:
        level, cell = queue.popleft()
        if level >= finest or state.counts(level, [cell]).get(cell, EMPTY).count >= plan.limit:
            continue
        heads = state.smallest(level + 1, plan.child_codes(level, cell))
        if not heads:
            continue
        key, annotation_id, record = min(heads.values())
        lower, upper = bounds([record])
        above = cells_of(plan, level, lower, upper).of(0)
        room = state.counts(level, above)
        if any(room.get(c, EMPTY).count >= plan.limit for c in above):
            continue  # a box that meets a full cell of this level stays where it is
        below = cells_of(plan, level + 1, lower, upper).of(0)
        changes = Changes(removed=[(level + 1, c, key, annotation_id) for c in below],
                          added=[(level, c, key, annotation_id, record) for c in above])
        for c in above:
            now = room.get(c, EMPTY)
            changes.counts[(level, c)] = CellCount(now.count + 1, max(now.max_key, key))
        if level + 1 < finest:
            for c, now in state.counts(level + 1, below).items():
                changes.counts[(level + 1, c)] = CellCount(now.count - 1, now.max_key)
        state.apply(changes)
        taken += 1
        queue.extend((level + 1, c) for c in below)
    return taken
