"""Request bodies: strict JSON only, bounded in size, depth and count, and parsed off the event loop when large.

Strict means what a browser's ``JSON.parse`` accepts and what we can store: no NaN or Infinity,
no number that overflows a double, no lone surrogate, valid UTF-8 (orjson refuses all of these).
Every value that crosses HTTP is checked here before any service sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from typing import Annotated, Any

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from annotations.names import NoNulSchema, no_nul
from viewer.errors import BadRequest

MAX_DEPTH = 64  # Neuroglancer states nest about 8 levels
# Values in one document. Each step that materializes a parsed document (orjson, pydantic, the database's
# json.dumps) holds the interpreter lock for up to half a microsecond a value: 250,000 values held every
# other client for up to 190 ms (tests/test_stall.py). 60,000 values is a state of some 8,000 point annotations.
MAX_VALUES = 60_000
OFFLOAD_BYTES = 64 * 1024  # larger bodies are parsed and validated in a worker thread


_paused = 0
_paused_lock = threading.Lock()


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No cyclic garbage collection while a large body becomes objects: a body of a million values makes
    the collector walk them all, holding the interpreter lock (and every other client) for 100+ ms. Nested
    and concurrent uses share one pause; what they leave behind is collected when the last one ends."""
    global _paused
    with _paused_lock:
        _paused += 1
        gc.disable()
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0:
                gc.enable()


def validate_items(adapter: TypeAdapter[list[Any]], items: list[Any], field: str, slice_size: int = 2000) -> list[Any]:
    """``items`` validated by ``adapter`` a slice at a time (call in a worker thread): one validation of
    100,000 items holds the interpreter lock for 70 ms, a slice for about 1 ms. BadRequest names items by
    their index in the whole list."""
    validated: list[Any] = []
    for start in range(0, len(items), slice_size):
        try:
            validated += adapter.validate_python(items[start:start + slice_size])
        except ValidationError as error:
            raise _bad_request(error, lambda loc, at=start: (field, at + loc[0], *loc[1:]) if loc else (field,)) \
                from None
        time.sleep(0)  # let the event loop's thread take the lock between slices
    return validated


def parse(data: bytes, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> Any:
    """The JSON value of ``data`` (an empty body is null), or BadRequest saying what is wrong."""
    if not data:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the request body is not strict JSON: {error}") from None
    check_shape(value, max_depth=max_depth, max_values=max_values)
    return value


def check_shape(value: Any, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> None:
    """BadRequest if ``value`` nests deeper than ``max_depth`` or holds more than ``max_values`` values."""
    _count([value], 1, max_depth, max_values, 0)


def _count(children: Any, depth: int, max_depth: int, max_values: int, total: int) -> int:
    """``total`` plus the number of ``children`` (values at ``depth``; the document is at 1) and of all they hold.
    Recursion stops at ``max_depth``; lists of scalars cost one type test a value."""
    total += len(children)
    if total > max_values:
        raise BadRequest(f"the document holds more than {max_values} values")
    for child in children:
        kind = type(child)
        if kind is dict or kind is list:
            if depth > max_depth:
                raise BadRequest(f"the document nests deeper than {max_depth} levels")
            total = _count(child.values() if kind is dict else child, depth + 1, max_depth, max_values, total)
    return total


# A body ``{"<field>": [{…}, {…}, …]}`` split between two objects of its list (``parse_list``).
_LIST_TAIL = re.compile(rb"\s*\]\s*\}\s*\Z")
_BETWEEN_OBJECTS = re.compile(rb"\}\s*,\s*\{")
LIST_SLICE_BYTES = 256 * 1024


def parse_list(data: bytes, field: str, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES,
               slice_bytes: int = LIST_SLICE_BYTES) -> Any:
    """``parse(data)`` for a body that is one object holding one list of objects, ``{"<field>": […]}``, parsed a
    slice of about ``slice_bytes`` at a time (call it in a worker thread): one parse of 10 MB holds the
    interpreter lock, and every other client, for 100 ms; a slice for about 2 ms.

    The body is cut only between two objects of the list (``}`` ``,`` ``{``), each slice parsed as a list of
    its own. A slice that does not parse (a cut inside a string, or a body of another shape) makes the whole
    body parse at once: the same value or the same BadRequest as ``parse``. A slice that does parse was cut
    where the whole body is between two objects, since its text from a true boundary forms whole values.
    """
    head = re.match(rb'\A\s*\{\s*"' + re.escape(field.encode()) + rb'"\s*:\s*\[\s*', data)
    tail = _LIST_TAIL.search(data, max(0, len(data) - 4096))  # from anywhere, a search walks the whole body
    if head is None or tail is None or tail.start() < head.end():
        return parse(data, max_depth=max_depth, max_values=max_values)
    items: list[Any] = []
    total, position, end = 2, head.end(), tail.start()  # the document and its list are two values
    while position < end:
        cut = _BETWEEN_OBJECTS.search(data, min(position + slice_bytes, end), end)
        stop = end if cut is None else cut.start() + 1
        try:
            part = orjson.loads(b"[" + data[position:stop] + b"]")
        except orjson.JSONDecodeError:
            return parse(data, max_depth=max_depth, max_values=max_values)
        total = _count(part, 3, max_depth, max_values, total)
        items += part
        position = end if cut is None else cut.end() - 1
        time.sleep(0)  # let the event loop's thread take the lock between slices
    return {field: items}


async def parse_async(data: bytes, **limits: int) -> Any:
    if len(data) > OFFLOAD_BYTES:
        return await asyncio.to_thread(parse, data, **limits)
    return parse(data, **limits)


def validate(model: type[BaseModel], value: Any) -> Any:
    """``value`` as ``model``, or BadRequest listing each problem (field path and what is wrong)."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise _bad_request(error) from None


def _bad_request(error: ValidationError, place: Callable[[tuple[Any, ...]], tuple[Any, ...]] = tuple) -> BadRequest:
    """BadRequest listing each problem (at most 10): where (``place`` maps pydantic's location) and what."""
    problems = dict.fromkeys(f"{_where(place(e['loc']))}: {_what(e)}" for e in error.errors()[:10])
    return BadRequest("; ".join(problems))


# Pydantic names the member of a union that failed by its schema (``function-before[_a_number(),
# constrained-int]``): Python function names, not a field path.
_UNION_MEMBER = re.compile(r"[a-z]+(?:-[a-z]+)*\[.*\]|constrained-[a-z]+", re.DOTALL)
_LOC_PART = 64  # characters of one path part (a key of the client's) in a message


def _where(loc: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in loc if not (isinstance(part, str) and _UNION_MEMBER.fullmatch(part))]
    return ".".join(part if len(part) <= _LOC_PART else part[:_LOC_PART] + "…" for part in parts) or "body"


def _what(error: Any) -> str:
    """Pydantic's message, in JSON's words and without Python's ("Value error, …", a model's class name)."""
    if error["type"] in ("value_error", "assertion_error") and "error" in error.get("ctx", {}):
        return str(error["ctx"]["error"])
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return "Input should be an object"
    return str(error["msg"])


async def validate_async(model: type[BaseModel], value: Any, size: int) -> Any:
    if size > OFFLOAD_BYTES:
        return await asyncio.to_thread(validate, model, value)
    return validate(model, value)


def dumps(document: Any) -> str:
    """Strict JSON text (a non-finite number is a bug: ValueError, never a bare NaN on the wire)."""
    return json.dumps(document, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _a_number(value: Any) -> Any:
    """JSON numbers only: pydantic would also take "3" or true where the schema says number."""
    if isinstance(value, str | bool):
        raise ValueError("expected a number")
    return value


def _text_only(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


# Body fields typed as JSON Schema reads them: no coercion from strings or booleans.
Flag = StrictBool
Number = Annotated[float, BeforeValidator(_a_number)]
Day = Annotated[date, BeforeValidator(_text_only)]  # YYYY-MM-DD


def Integer(ge: int | None = None, le: int | None = None) -> Any:
    """An integer field (3.0 counts, as in JSON Schema; "3" and true do not)."""
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_a_number)]


def Text(max_length: int, min_length: int = 0) -> Any:
    """A string field: bounded, without NUL (which PostgreSQL cannot store; its JSON schema says so)."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length), AfterValidator(no_nul),
                     NoNulSchema()]
