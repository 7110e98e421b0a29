"""``bodies.parse_list`` (a bulk body parsed a slice at a time) gives what ``bodies.parse`` gives: the same value,
or the same BadRequest, whatever the objects' text holds (cuts inside strings) and however the body is spaced."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest

from viewer import bodies
from viewer.errors import BadRequest

TRICKY = ['}, {', '},{"type": "point"}', '"}', "\\", "]}", '{"annotations": [', "\u00e9\u4e2d", ""]


def outcome(call: Any) -> Any:
    try:
        return call()
    except BadRequest as refused:
        return ("refused", refused.message)


def item(rng: random.Random) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "point", "point": [rng.uniform(0, 100) for _ in range(3)],
                             "description": rng.choice(TRICKY) * rng.randint(0, 3)}
    if rng.random() < 0.3:
        value["properties"] = {"nested": [{"a": 1}, {"b": [2, {"c": 3}]}]}
    return value


@pytest.mark.parametrize("seed", range(30))
def test_slices_give_the_whole_bodys_value(seed: int) -> None:
    rng = random.Random(seed)
    items = [item(rng) for _ in range(rng.randint(0, 300))]
    spacing = rng.choice([None, 1, "  "])
    data = json.dumps({"annotations": items}, indent=spacing).encode() if spacing else orjson.dumps(
        {"annotations": items})
    slice_bytes = rng.choice([1, 40, 500, 1 << 20])
    expected = outcome(lambda: bodies.parse(data, max_values=10**6))
    assert outcome(lambda: bodies.parse_list(data, "annotations", max_values=10**6,
                                             slice_bytes=slice_bytes)) == expected
    assert expected == {"annotations": items}


@pytest.mark.parametrize("data", [
    b'{"annotations": [{"a": 1}, {"b": NaN}]}', b'{"annotations": [{"a": 1}, {"b": 2}], "x": 1}',
    b'{"annotations": [{"a": 1}], "annotations": [{"b": 2}]}', b'{"annotations": [{"a": 1},, {"b": 2}]}',
    b'{"annotations": [{"a": 1}, {"b": "\xff"}]}', b'{"annotations": []}', b'{"annotations": [ ]}',
    b'{"annotations": [1, 2, 3]}', b'[{"a": 1}, {"b": 2}]', b'{"annotations": [{"a": 1}, {"b": 2}]} x',
    b'{"annotations": [{"a": [[[[[[1]]]]]]}, {"b": 2}]}', b'{"annotations": [' + b'{"a": 1},' * 30 + b'{"a": 1}]}',
])
def test_refusals_and_odd_shapes_are_as_a_whole_parse(data: bytes) -> None:
    limits = {"max_values": 50, "max_depth": 6}
    assert outcome(lambda: bodies.parse_list(data, "annotations", slice_bytes=4, **limits)) == \
        outcome(lambda: bodies.parse(data, **limits))
