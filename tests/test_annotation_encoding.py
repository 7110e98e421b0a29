"""The precomputed annotation encoder, checked by decoding with Neuroglancer's own reader: pure code, files on
disk, no database and no server."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from neuroglancer.read_precomputed_annotations import AnnotationReader

from annotations.annotation_encoding import Entry, Layout
from annotations.cells import LevelPlan
from annotations.layer_specs import ANNOTATION_TYPES, LayerSpec
from tests.annotation_reading import from_reader, from_record

# One uint32 only, declared first: the wheel's reader gives uint32 an alignment of 3 (write_annotations.
# _PROPERTY_DTYPES), so it misreads a uint32 that follows another 4-byte property.
SPEC = LayerSpec.model_validate({
    "types": list(ANNOTATION_TYPES),
    "labels": [{"id": "synapse"}, {"id": "vesicle"}],
    "properties": [{"id": "score", "type": "uint32"}, {"id": "tint", "type": "rgb"},
                   {"id": "confidence", "type": "float32"}, {"id": "kind", "type": "uint8", "enum_values": [1, 2],
                                                              "enum_labels": ["pre", "post"]},
                   {"id": "count", "type": "int16"}, {"id": "offset", "type": "int32"},
                   {"id": "glow", "type": "rgba"}, {"id": "small", "type": "int8"}, {"id": "wide", "type": "uint16"}],
    "relationships": ["bodies", "cells"],
})
LOWER, UPPER = (0.0, 0.0, 0.0), (1000.0, 800.0, 400.0)


def random_record(rng: random.Random, kind: str, annotation_id: int) -> dict[str, Any]:
    def point() -> list[float]:
        return [rng.uniform(0, u) for u in UPPER]

    record: dict[str, Any] = {"id": annotation_id, "type": kind}
    if kind == "point":
        record["point"] = point()
    elif kind in ("line", "axis_aligned_bounding_box"):
        record["point_a"], record["point_b"] = point(), point()
    elif kind == "ellipsoid":
        record["center"], record["radii"] = point(), [rng.uniform(0, 50) for _ in range(3)]
    else:
        record["points"] = [point() for _ in range(rng.randint(2, 6))]
    properties: dict[str, Any] = {"score": rng.randint(0, 2**32 - 1), "confidence": rng.random(),
                                  "kind": rng.choice([1, 2]), "count": rng.randint(-2**15, 2**15 - 1),
                                  "offset": rng.randint(-2**31, 2**31 - 1), "tint": f"#{rng.randrange(2**24):06x}",
                                  "glow": f"#{rng.randrange(2**32):08x}", "small": rng.randint(-128, 127),
                                  "wide": rng.randint(0, 2**16 - 1)}
    record["properties"] = {k: v for k, v in properties.items() if rng.random() < 0.8}  # missing ones are 0
    record["label"] = rng.choice([None, "synapse", "vesicle"])
    record["segments"] = {name: sorted(rng.sample(range(1, 2**63), rng.randint(0, 3)))
                          for name in ("bodies", "cells") if rng.random() < 0.7}
    return record


def entry(record: dict[str, Any]) -> Entry:
    names = {"point": ("point",), "line": ("point_a", "point_b"), "axis_aligned_bounding_box": ("point_a", "point_b"),
             "ellipsoid": ("center", "radii")}.get(record["type"])
    geometry = [v for p in record["points"] for v in p] if names is None else [v for n in names for v in record[n]]
    return Entry(record["id"], geometry, record["label"], record["properties"], record["segments"])


@pytest.mark.parametrize("kind", ANNOTATION_TYPES)
def test_neuroglancers_reader_decodes_what_we_encode(kind: str, tmp_path: Path) -> None:
    rng = random.Random(kind)
    records = [random_record(rng, kind, i) for i in rng.sample(range(1, 2**40), 40)]
    layout = Layout.of(SPEC, kind)
    plan = LevelPlan.for_bounds(LOWER, UPPER)
    info = layout.info(LOWER, UPPER, plan)
    (tmp_path / "info").write_text(json.dumps(info))
    for folder in ("by_id", "spatial0", "rel_bodies", "rel_cells"):
        (tmp_path / folder).mkdir()
    for record in records:
        (tmp_path / "by_id" / str(record["id"])).write_bytes(layout.encode_by_id(entry(record)))
    (tmp_path / "spatial0" / "0_0_0").write_bytes(layout.encode_list([entry(r) for r in records]))
    (tmp_path / "spatial0" / "0_0_1").write_bytes(layout.encode_list([]))
    related = [r for r in records if r["segments"].get("bodies")]
    segment = related[0]["segments"]["bodies"][0]
    (tmp_path / "rel_bodies" / str(segment)).write_bytes(layout.encode_list([entry(r) for r in related[:1]]))

    reader = AnnotationReader(f"file://{tmp_path}/")
    assert [p["id"] for p in reader.metadata["properties"]][:3] == ["score", "confidence", "offset"]
    assert reader.annotation_type == kind and len(reader.spatial) == len(plan.levels)
    labels = ["synapse", "vesicle"]
    for record in records:
        assert from_reader(reader.by_id[record["id"]], kind, info) == from_record(record, info, labels, True)
    cell = [from_reader(a, kind, info) for a in reader.spatial[0][(0, 0, 0)]]
    assert cell == [from_record(r, info, labels, False) for r in records]
    assert reader.spatial[0][(0, 0, 1)] == []
    assert [from_reader(a, kind, info) for a in reader.relationships["bodies"][segment]] == \
        [from_record(related[0], info, labels, False)]


def test_properties_are_listed_in_encoding_order() -> None:
    layout = Layout.of(SPEC, "point")
    assert [(f.id, f.alignment) for f in layout.properties] == [
        ("score", 4), ("confidence", 4), ("offset", 4), ("count", 2), ("wide", 2), ("tint", 1), ("kind", 1),
        ("glow", 1), ("small", 1), ("label", 1)]
    assert len(layout.encode(Entry(1, [1.0, 2.0, 3.0], None, {}, {}))) == 12 + 12 + 4 + 12  # padded to 4


def test_many_labels_take_a_uint16(tmp_path: Path) -> None:
    labels = [f"l{i}" for i in range(300)]
    spec = LayerSpec.model_validate({"types": ["point"], "labels": [{"id": label} for label in labels]})
    layout = Layout.of(spec, "point")
    assert [(f.id, f.type) for f in layout.properties] == [("label", "uint16")]
    info = layout.info(LOWER, UPPER, LevelPlan.for_bounds(LOWER, UPPER))
    (tmp_path / "info").write_text(json.dumps(info))
    (tmp_path / "by_id").mkdir()
    record = {"id": 7, "type": "point", "point": [1.0, 2.0, 3.0], "label": "l299", "properties": {}, "segments": {}}
    (tmp_path / "by_id" / "7").write_bytes(layout.encode_by_id(entry(record)))
    decoded = AnnotationReader(f"file://{tmp_path}/").by_id[7]
    assert from_reader(decoded, "point", info) == from_record(record, info, labels, True)
    assert int(decoded.props[0]) == 300
