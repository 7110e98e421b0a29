"""The spatial-index plan and view spellings: pure code, no database."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from annotations.cells import CellKey, LevelPlan
from annotations.errors import InvalidView
from annotations.views import View


@pytest.mark.parametrize("upper", [(1000.0, 800.0, 400.0), (2500.0, 2500.0, 1.0), (100000.0, 50.0, 50.0)])
def test_levels_tile_the_bounds_and_every_cell_is_one_code_range(upper: tuple[float, float, float]) -> None:
    plan = LevelPlan.for_bounds((0.0, 0.0, 0.0), upper)
    assert plan.levels[0].grid_shape == (1, 1, 1)
    for level, spec in enumerate(plan.levels):
        size = plan.chunk_size(level)
        assert all(g * s == pytest.approx(max(u, 1.0)) for g, s, u in zip(spec.grid_shape, size, upper, strict=True))
    finest = plan.finest
    codes = {plan.code(cell.coords) for cell in plan.all_cells(len(plan.levels) - 1)}
    assert codes == set(range(2 ** sum(finest.bits)))  # one code per finest cell, none wasted
    rng = random.Random(5)
    for _ in range(500):
        point = [rng.uniform(0, u) for u in upper]
        code = plan.code_of(point)
        for level, spec in enumerate(plan.levels):
            coords = tuple(int(p // s) if s else 0 for p, s in zip(point, plan.chunk_size(level), strict=True))
            coords = tuple(min(c, g - 1) for c, g in zip(coords, spec.grid_shape, strict=True))
            low, high = plan.code_range(CellKey(level, coords))  # type: ignore[arg-type]
            assert low <= code <= high
        chain = plan.ancestry(CellKey(len(plan.levels) - 1, plan.finest_coords(point)))
        assert [cell.level for cell in chain] == list(range(len(plan.levels)))


def test_cell_keys_have_one_spelling_and_stay_in_the_grid() -> None:
    plan = LevelPlan.for_bounds((0.0, 0.0, 0.0), (1000.0, 800.0, 400.0))
    assert str(CellKey.parse(plan, 1, "1_0_0")) == "1_0_0"
    for level, text in ((0, "1_0_0"), (1, "01_0_0"), (1, "0_0"), (1, "-1_0_0"), (99, "0_0_0"), (1, "0_0_0_")):
        with pytest.raises(InvalidView):
            CellKey.parse(plan, level, text)


def test_views_round_trip_in_one_spelling() -> None:
    view = View(as_of=datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC), author="ann", label="synapse")
    assert View.parse(str(view)) == view and str(View()) == "current" and View.parse("current") == View()
    assert str(view) == "as_of=1735787045000006,author=ann,label=synapse"
    for text in ("author=ann,as_of=1", "as_of=01", "author=a,author=b", "colour=red", "", "as_of=1e3"):
        with pytest.raises(InvalidView):
            View.parse(text)
