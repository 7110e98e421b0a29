"""Hostile input never breaks Lamella: every JSON body and query model the server accepts, property-tested.

The models are found by walking the route table (``viewer.app.routes``) and each handler method's
declared operation (``viewer.apidoc.operation``), so a new model joins these tests by itself. Each
model is checked through the path the handlers take (``bodies.parse``, then ``bodies.validate``):

* values generated from the model's own JSON schema (the one the OpenAPI document publishes) are
  accepted, and what the model dumps is accepted again as an equal model;
* anything else — arbitrary JSON, raw bytes, NaN and Infinity, lone surrogates, invalid UTF-8, deep
  nesting, huge numbers, NUL — is either a model or BadRequest, never another exception, and the
  message names no Python exception or internal function.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import math
import os
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from viewer import bodies
from viewer.apidoc import operation
from viewer.app import routes
from viewer.errors import BadRequest

# Per model (round trips, spoiled bodies), and over all models at once (garbage); LAMELLA_EXAMPLES=2000 hunts longer.
EXAMPLES = settings(max_examples=int(os.environ.get("LAMELLA_EXAMPLES", "100")), deadline=None)
MORE_EXAMPLES = settings(max_examples=3 * int(os.environ.get("LAMELLA_EXAMPLES", "100")), deadline=None)


def declared_models() -> dict[str, tuple[type[BaseModel], str]]:
    """Every body and query model a route declares: name -> (model, "body" or "query")."""
    found: dict[str, tuple[type[BaseModel], str]] = {}
    for route in routes():
        for method in route.rule.methods:
            declared = operation(route.handler, method)
            for kind, model in (("body", declared.body), ("query", declared.query)):
                if model is not None:
                    found[model.__name__] = (model, kind)
    return found


MODELS = declared_models()
BODY_MODELS = [model for model, kind in MODELS.values() if kind == "body"]
QUERY_MODELS = [model for model, kind in MODELS.values() if kind == "query"]
ALL_MODELS = [model for model, _ in MODELS.values()]


def test_the_walk_finds_the_models() -> None:
    """A guard on the walk itself: it sees the models we know of (others join without being named here)."""
    assert {"StateMessage", "SessionStateBody", "TransformBody", "LandmarksBody", "NewDatasetBody",
            "DatasetChangesBody", "SignInBody", "EventsQuery", "TransformQuery"} <= set(MODELS)
    assert len(BODY_MODELS) >= 10 and len(QUERY_MODELS) >= 2


# --- values from a JSON schema ----------------------------------------------------------------

# JSON text cannot carry a lone surrogate through a strict parser: the generator leaves them out
# (the garbage tests below send them).
TEXT = st.characters(codec="utf-8")
LONG = 300  # longest generated string, list or object (the boundary itself is drawn when it is shorter)
INT64 = (-(2**63), 2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers(*INT64) | finite | st.text(TEXT, max_size=20)
any_json = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(TEXT, max_size=10), inner, max_size=4), max_leaves=20)
# What a hostile client sends: any text (lone surrogates too), integers no double holds, NUL.
hostile_text = st.text(st.characters(), max_size=30) | st.sampled_from(["\x00", "a\x00", "\ud800", "NaN", "1e400"])
hostile_scalars = (st.none() | st.booleans() | st.integers() | st.integers(10**300, 10**400) | finite
                   | hostile_text)
hostile_json = st.recursive(hostile_scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(hostile_text, inner, max_size=4), max_leaves=30)


def _sizes(low: int, high: int | None) -> st.SearchStrategy[tuple[int, int]]:
    """(min, max) sizes to draw: mostly short, sometimes exactly at the schema's bounds."""
    cap = min(high if high is not None else LONG, low + LONG)
    choices = [st.just((low, min(cap, low + 8))), st.just((low, low))]
    if high is not None and high <= LONG:
        choices.append(st.just((high, high)))
    return st.one_of(choices)


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if schema.get("format") == "date":
        return st.dates().map(lambda day: day.isoformat())
    if schema.get("format") == "date-time":
        return st.datetimes(timezones=st.just(datetime.UTC)).map(lambda moment: moment.isoformat())
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if "pattern" in schema:
        pattern = schema["pattern"]
        return st.from_regex(pattern, fullmatch=True).filter(
            lambda text: low <= len(text) <= (high if high is not None else math.inf))
    return _sizes(low, high).flatmap(lambda size: st.text(TEXT, min_size=size[0], max_size=size[1]))


def from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under ``schema``, for the subset of JSON Schema pydantic writes for our models."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return st.one_of([from_schema(option, defs) for option in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind is None:
        return any_json
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(max(schema.get("minimum", INT64[0]), INT64[0]),
                           min(schema.get("maximum", INT64[1]), INT64[1]))
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=False, allow_infinity=False) | st.integers(
            max(low, -(2**53)) if low is not None else -(2**53), min(high, 2**53) if high is not None else 2**53)
    if kind == "string":
        return _string(schema)
    if kind == "array":
        items = from_schema(schema.get("items", {}), defs)
        return _sizes(schema.get("minItems", 0), schema.get("maxItems")).flatmap(
            lambda size: st.lists(items, min_size=size[0], max_size=size[1]))
    if kind == "object":
        return _object(schema, defs)
    raise NotImplementedError(f"JSON schema type {kind!r}: teach tests/test_bodies.py to generate it")


def _object(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties = schema.get("properties", {})
    if properties:
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {name: from_schema(sub, defs) for name, sub in properties.items() if name in required},
            optional={name: from_schema(sub, defs) for name, sub in properties.items() if name not in required},
        )
    names_schema = {"type": "string", **schema.get("propertyNames", {})}
    if "patternProperties" in schema:  # pydantic's spelling of keys with a pattern: {pattern: values}
        [(pattern, extra)] = schema["patternProperties"].items()
        names_schema["pattern"] = pattern
    else:
        extra = schema.get("additionalProperties", True)
    values = any_json if extra in (True, {}) else from_schema(extra, defs)
    names = _string(names_schema)
    high = min(schema.get("maxProperties", 4), 4)
    return st.dictionaries(names, values, max_size=high)


@functools.cache
def schema_values(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    schema = model.model_json_schema()
    return from_schema(schema, schema.get("$defs", {}))


# --- the handlers' path ---------------------------------------------------------------------

INTERNAL = re.compile(r"Error\b|Exception|Traceback|Value error|Assertion failed|function-(?:before|after|wrap|plain)"
                      r"|constrained-|object at 0x|<class|File \"|validation errors? for|errors\.pydantic\.dev")


def accept(model: type[BaseModel], kind: str, value: Any) -> BaseModel:
    """What a handler makes of ``value``: a JSON body is sent as text and parsed; a query is a dict of text."""
    if kind == "query":
        return bodies.validate(model, value)
    return bodies.validate(model, bodies.parse(orjson.dumps(value)))


def outcome(model: type[BaseModel], data: bytes) -> BaseModel | BadRequest:
    """``data`` as a body of ``model``: the model, or the BadRequest the client is shown (nothing else)."""
    try:
        return bodies.validate(model, bodies.parse(data))
    except BadRequest as refused:
        assert refused.status_code == 400 and refused.code == "bad_request"
        assert refused.message and not INTERNAL.search(refused.message), refused.message
        assert len(refused.message) < 4000
        return refused


def ids(models: list[type[BaseModel]]) -> list[str]:
    return [model.__name__ for model in models]


# Rules a model checks that JSON Schema cannot say: a schema-valid value may be refused for these only.
# LayerIn and LayerChanges: unique ids of types, labels, properties and relationships; enum values and labels in
# pairs, within the property's type, none for colours; a default of the property's type; the id alphabets; "label".
_LAYER_RULES = re.compile(r"is named twice|enum_values and enum_labels|have no enum values|is outside|"
                          r"must match \[a-z\]|is reserved|must be 1 to 64 letters|is not #rrggbb|expected an integer|"
                          r"expected a number|expected #rrggbb|not one of its enum values|not a finite float32")
# Citizen Science: distinct labels, lower < upper of a region, a mark's fields by its type, marks or "nothing here".
_CROWD_RULES = re.compile(r"labels must be distinct|needs 0 <= lower < upper|mark has|mark something|"
                          r"has no marks")
BEYOND_SCHEMA = {"LayerIn": _LAYER_RULES, "LayerChanges": _LAYER_RULES, "ProjectIn": _CROWD_RULES,
                 "ProjectChanges": _CROWD_RULES, "GoldTaskIn": _CROWD_RULES, "SubmissionIn": _CROWD_RULES,
                 "SubmittedOut": _CROWD_RULES}


@pytest.mark.parametrize("model", ALL_MODELS, ids=ids(ALL_MODELS))
@EXAMPLES
@given(data=st.data())
def test_schema_values_round_trip(model: type[BaseModel], data: st.DataObject) -> None:
    kind = MODELS[model.__name__][1]
    value = data.draw(schema_values(model), label="value")
    try:
        accepted = accept(model, kind, value)
    except BadRequest as refused:
        rule = BEYOND_SCHEMA.get(model.__name__)
        if rule is None or not rule.search(refused.message):
            raise
        return
    # What a client would send back: the fields it set (a PATCH model's defaults mean "unchanged", and
    # DatasetChangesBody refuses null for its title although null is its default).
    dumped = accepted.model_dump(mode="json", exclude_unset=True)
    assert accept(model, kind, dumped) == accepted


@MORE_EXAMPLES
@given(model=st.sampled_from(BODY_MODELS), value=hostile_json | st.dictionaries(hostile_text, hostile_json, max_size=6))
def test_any_json_value_is_a_model_or_bad_request(model: type[BaseModel], value: Any) -> None:
    outcome(model, json.dumps(value).encode())


@st.composite
def spoiled(draw: st.DrawFn, model: type[BaseModel]) -> Any:
    """A schema-valid body with one value somewhere in it replaced by another JSON value, or removed."""
    value = draw(schema_values(model))
    node = value
    while True:
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) \
            if isinstance(node, list) else []
        if not children:
            return value
        key, child = draw(st.sampled_from(children))
        if isinstance(child, dict | list) and child and draw(st.booleans()):
            node = child
            continue
        if isinstance(node, dict) and draw(st.booleans()):
            del node[key]
        else:
            node[key] = draw(hostile_json)
        return value


@pytest.mark.parametrize("model", BODY_MODELS, ids=ids(BODY_MODELS))
@EXAMPLES
@given(data=st.data())
def test_one_wrong_value_is_a_model_or_bad_request(model: type[BaseModel], data: st.DataObject) -> None:
    outcome(model, json.dumps(data.draw(spoiled(model))).encode())


@MORE_EXAMPLES
@given(model=st.sampled_from(BODY_MODELS), data=st.binary(max_size=200) | st.text(st.characters(), max_size=100).map(
    lambda text: text.encode("utf-8", "surrogatepass")))
def test_any_bytes_are_a_model_or_bad_request(model: type[BaseModel], data: bytes) -> None:
    outcome(model, data)


@pytest.mark.parametrize("model", QUERY_MODELS, ids=ids(QUERY_MODELS))
@EXAMPLES
@given(query=st.dictionaries(st.text(TEXT, max_size=8) | st.sampled_from(["c", "gs", "gc", "format", "history"]),
                             st.text(TEXT, max_size=300), max_size=5))
def test_any_query_is_a_model_or_bad_request(model: type[BaseModel], query: dict[str, str]) -> None:
    try:
        bodies.validate(model, query)
    except BadRequest as refused:
        assert not INTERNAL.search(refused.message), refused.message


HOSTILE_TEXTS = [
    b"NaN", b"Infinity", b"-Infinity", b'{"s": NaN}', b'{"s": {"x": Infinity}}', b"[1e400]", b"-1e400",
    b"1" * 5000, b'{"g": ' + b"9" * 400 + b"}", b'{"s": {"x": 1e-400}}',
    b'"\\ud800"', b'{"s": {"\\udfff": 1}}', b'{"c": "\\ud800\\u0041"}', b'"\xed\xa0\x80"',  # lone surrogates
    b'"\xff"', b'"\xc0\xaf"', b'"\xe2\x82"', b"\xef\xbb\xbf{}", b"\x00", b'{"c": "a\\u0000b"}',  # bad UTF-8, BOM, NUL
    b'{"name": "x\\u0000", "password": "\\u0000"}', b'{"state": {}, "generation": "\\u0000"}',
    b"[" * 65 + b"]" * 65, b"[" * 100_000, b'{"a":' * 1000 + b"1" + b"}" * 1000,
    b'{"s": ' + b'{"a": ' * 70 + b"{}" + b"}" * 70 + b', "g": 1, "pg": "", "c": "c"}',
    b"[" + b"0," * 250_000 + b"0]", b'{"a": 1, "a": 2}', b"{} []", b"", b" ", b"{", b"tru", b"01", b"1.", b".5",
    b'{"matrix": [[1e308, 1e308, 1e308, 1e308]], "note": "' + b"x" * 3000 + b'"}',
    b'{"layers": {"' + b"k" * 100_000 + b'": {"window": 1}}}',
]


@pytest.mark.parametrize("data", HOSTILE_TEXTS, ids=range(len(HOSTILE_TEXTS)))
def test_hostile_bodies(data: bytes) -> None:
    for model in BODY_MODELS:
        outcome(model, data)


@pytest.mark.parametrize("data", [b"NaN", b"[1e400]", b'"\\ud800"', b'"\xff"', b"[" * 100_000, b"[" * 65 + b"]" * 65,
                                  b"[" + b"0," * 250_000 + b"0]"])
def test_hostile_bodies_are_refused_by_parse(data: bytes) -> None:
    with pytest.raises(BadRequest):
        bodies.parse(data)
    with pytest.raises(BadRequest):  # large ones are parsed in a worker thread: the same answer
        asyncio.run(bodies.parse_async(data + b" " * bodies.OFFLOAD_BYTES))


def test_nul_text_is_refused_where_it_would_be_stored() -> None:
    from viewer.handlers.accounts import SignInBody

    refused = outcome(SignInBody, b'{"name": "x\\u0000", "password": "p"}')
    assert isinstance(refused, BadRequest) and refused.message == "name: text may not contain NUL characters"


# --- parse and check_shape ------------------------------------------------------------------


@EXAMPLES
@given(any_json)
def test_parse_round_trip(value: Any) -> None:
    assert bodies.parse(json.dumps(value).encode()) == value
    assert bodies.parse(orjson.dumps(value)) == value


def _depth_and_count(value: Any, depth: int = 1) -> tuple[int, int]:
    """The reference: (deepest container level, number of values), as check_shape counts them."""
    if isinstance(value, dict | list):
        children = list(value.values() if isinstance(value, dict) else value)
        below = [_depth_and_count(child, depth + 1) for child in children]
        return max([depth, *(d for d, _ in below)]), 1 + sum(n for _, n in below)
    return 0, 1


@EXAMPLES
@given(st.recursive(st.integers(0, 9) | st.none(),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("ab", max_size=2), inner,
                                                                               max_size=3), max_leaves=30),
       st.integers(1, 6), st.integers(1, 40))
def test_check_shape_refuses_exactly_too_deep_or_too_many(value: Any, max_depth: int, max_values: int) -> None:
    depth, count = _depth_and_count(value)
    expected_ok = depth <= max_depth and count <= max_values
    try:
        bodies.check_shape(value, max_depth=max_depth, max_values=max_values)
    except BadRequest as refused:
        assert not expected_ok, refused.message
    else:
        assert expected_ok


def test_check_shape_of_a_very_deep_value_is_bad_request_not_recursion() -> None:
    value: Any = []
    for _ in range(200_000):
        value = [value]
    with pytest.raises(BadRequest) as refused:
        bodies.check_shape(value)
    assert refused.value.message == "the document nests deeper than 64 levels"
