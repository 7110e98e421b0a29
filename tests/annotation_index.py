"""Check a layer's stored spatial index (``annotation_cell_entries`` and ``annotation_cell_counts``) against its
current versions, straight from the database: every current annotation served at exactly one level, in every
cell of that level it meets, with its record as the encoder writes it; nothing else; no cell above the finest
over the limit; the counts and key bounds right."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import Engine, text

from annotations.annotation_encoding import Entry, Layout
from annotations.cells import LevelPlan
from annotations.layer_specs import ANNOTATION_TYPES, LayerSpec
from annotations.spatial_index import cells_of


def _json(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


def check_index(engine: Engine, layer_id: int) -> int:
    """Assert the layer's index is right; returns how many entries it holds."""
    with engine.connect() as connection:
        layer = connection.execute(text("SELECT spec, lower_bound, upper_bound, cell_limit FROM annotation_layers "
                                        "WHERE id = :id"), {"id": layer_id}).one()
        spec = LayerSpec.model_validate(_json(layer.spec))
        plan = LevelPlan.for_bounds(tuple(_json(layer.lower_bound)), tuple(_json(layer.upper_bound)),
                                    layer.cell_limit)
        current = connection.execute(text(
            "SELECT annotation_id, kind, sample_key, geometry, label, properties, x0, y0, z0, x1, y1, z1 "
            "FROM annotation_versions WHERE layer_id = :id AND valid_to IS NULL AND deleted = :no"),
            {"id": layer_id, "no": False}).all()
        entries = connection.execute(text(
            "SELECT kind, level, cell, sample_key, annotation_id, record FROM annotation_cell_entries "
            "WHERE layer_id = :id"), {"id": layer_id}).all()
        counts = {(row.kind, row.level, row.cell): (row.count, row.max_key) for row in connection.execute(text(
            "SELECT kind, level, cell, count, max_key FROM annotation_cell_counts WHERE layer_id = :id"),
            {"id": layer_id})}
    finest = len(plan.levels) - 1
    served: dict[int, set[tuple[int, int]]] = defaultdict(set)
    per_cell: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    records: dict[int, bytes] = {}
    for kind, level, cell, key, annotation_id, record in entries:
        served[annotation_id].add((level, cell))
        per_cell[(kind, level, cell)].append(key)
        assert records.setdefault(annotation_id, bytes(record)) == bytes(record), annotation_id
    assert set(served) == {row.annotation_id for row in current}
    for row in current:
        levels = {level for level, _ in served[row.annotation_id]}
        assert len(levels) == 1, (row.annotation_id, served[row.annotation_id])
        level = levels.pop()
        met = cells_of(plan, level, np.array([[row.x0, row.y0, row.z0]]), np.array([[row.x1, row.y1, row.z1]]))
        assert {cell for _, cell in served[row.annotation_id]} == set(met.of(0)), row.annotation_id
        layout = Layout.of(spec, row.kind)
        assert records[row.annotation_id] == layout.encode(
            Entry(row.annotation_id, _json(row.geometry), row.label, _json(row.properties), {}))
    for (kind, level, cell), keys in per_cell.items():
        if level == finest:
            continue
        count, max_key = counts[(kind, level, cell)]
        assert count == len(keys) <= plan.limit, (ANNOTATION_TYPES[kind], level, cell)
        assert max(keys) <= max_key
    for (kind, level, cell), (count, _) in counts.items():
        assert count == len(per_cell.get((kind, level, cell), [])), (kind, level, cell)
    return len(entries)
