"""Requests of the route-table fuzzer (tests/fuzzing.py): one valid request per route and method, built from the
route table and the test data, then one mutation of it; each made from the seed and its index alone."""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from tests.fuzzing_values import (
    AUTHORIZATIONS,
    CONTENT_TYPES,
    COOKIES,
    ETAGS,
    HOSTILE_BODIES,
    HOSTILE_CHUNK_NAMES,
    HOSTILE_FRAGMENTS,
    HOSTILE_KEYS,
    HOSTILE_SEGMENTS,
    NOT_AN_OBJECT,
    NOT_JSON_FRAGMENTS,
    ODD_METHODS,
    RANGES,
    STANDARD_METHODS,
)
from tests.fuzzing_world import GROUP, OPEN_DATASETS, World, fill
from viewer.apidoc import operation
from viewer.app import Route
from viewer.rules import WRITE_METHODS
from viewer.server import MAX_CHUNKS

# --- requests ------------------------------------------------------------------------------------------------------


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value


@dataclass
class Fuzzed:
    """One request as it goes on the wire, and what to expect of the server."""

    index: int
    route: str
    method: str
    mutation: str
    auth: str
    groups: dict[str, str]
    path: str
    query: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes | None = None
    version: bytes = b"HTTP/1.1"
    newline: bytes = b"\r\n"
    target: bytes | None = None  # the request-target as sent, when a mutation spells it itself
    payload: bytes | None = None  # the bytes after the head, when a mutation frames the body itself
    after: bytes = b""  # more requests on the same connection (pipelined), or bytes that follow
    methods: list[str] = field(default_factory=list)  # the method of each answer expected
    half_close: bool = False
    sealed: bool = False  # a write to a sealed dataset: its mutation must break it
    before: str = ""  # the request answered last on the same connection
    may_go_unanswered: bool = False  # an incomplete request: the server may close without an answer

    def header(self, name: str, value: str | bytes) -> None:
        self.headers.append((_bytes(name), _bytes(value)))

    def drop(self, name: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower().encode()]

    def request_target(self) -> bytes:
        if self.target is not None:
            return self.target
        return _bytes(self.path) + (b"?" + _bytes(self.query) if self.query else b"")

    def wire(self) -> bytes:
        headers = list(self.headers)
        if self.payload is None and self.body is not None:
            headers.append((b"Content-Length", str(len(self.body)).encode()))
        head = [_bytes(self.method) + b" " + self.request_target() + b" " + self.version]
        head += [name + b": " + value for name, value in headers]
        payload = self.payload if self.payload is not None else (self.body or b"")
        return self.newline.join(head) + self.newline * 2 + payload + self.after

    def expected_methods(self) -> list[str]:
        """The method of each answer expected, as a client reads it (``HEAD `` with a stray space is a HEAD)."""
        return [method.split(" ", 1)[0] for method in self.methods or [self.method]]

    def reproducer(self, seed: int) -> dict[str, Any]:
        """Enough to send it again: the seed and index, and the request itself, cut short."""
        return {
            "seed": seed, "index": self.index, "route": self.route, "mutation": self.mutation, "auth": self.auth,
            "method": self.method[:40], "target": self.request_target()[:300].decode("latin-1"),
            "headers": [(k[:60].decode("latin-1"), v[:120].decode("latin-1")) for k, v in self.headers][:30],
            "body_prefix": repr((self.payload if self.payload is not None else self.body or b"")[:300]),
            "wire_prefix": repr(self.wire()[:600]), "half_close": self.half_close, "after_on_connection": self.before,
        }

    @property
    def write(self) -> bool:
        return self.method in WRITE_METHODS


# --- valid requests from the route table ---------------------------------------------------------------------------


def examples(route: Route, method: str) -> list[Any]:
    """The body examples the method's ``@op`` body model declares (none: the method takes no JSON body)."""
    model = operation(route.handler, method).body
    if model is None:
        return []
    return list(model.model_config.get("json_schema_extra", {}).get("examples", []))  # type: ignore[union-attr]


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def valid_query(model: type[BaseModel] | None, rng: random.Random) -> dict[str, str]:
    if model is None:
        return {}
    schema = _schema(model)
    required = set(schema.get("required", []))
    values = {}
    for name, prop in schema.get("properties", {}).items():
        if name not in required and rng.random() < 0.4:
            continue
        if "enum" in prop:
            values[name] = str(rng.choice(prop["enum"]))
        elif "const" in prop:
            values[name] = str(prop["const"])
        else:
            values[name] = "fuzz" + str(rng.randrange(100))
    return values


def coverage_problems(route_list: list[Route], contexts: list[dict[str, str]]) -> list[str]:
    """Routes the fuzzer cannot make a valid request for: a path group no context fills, a body without examples."""
    problems = []
    for route in route_list:
        groups = set(GROUP.findall(route.pattern))
        fitting = [c for c in contexts if groups <= c.keys() and ("transform_id" in c) == ("transform_id" in groups)]
        if not fitting:
            problems.append(f"{route.name}: no test-data values for path groups {sorted(groups)}")
        elif not all(re.fullmatch(route.pattern, fill(route.pattern, c)) for c in fitting):
            problems.append(f"{route.name}: test-data values that do not match its pattern")
        for method in route.rule.methods:
            if operation(route.handler, method).body is not None and not examples(route, method):
                problems.append(f"{route.name} {method}: its body model declares no examples")
    return problems


# --- mutations -----------------------------------------------------------------------------------------------------


@dataclass
class Maker:
    """Builds request number ``index``: a valid request for its route, then one mutation."""

    world: World
    seed: int
    route_list: list[Route]

    def __post_init__(self) -> None:
        self.pairs = [(route, method) for route in self.route_list for method in route.rule.allowed_methods]
        self.by_name = {route.name: route for route in self.route_list}

    def make(self, index: int) -> Fuzzed:
        rng = random.Random(f"{self.seed}/{index}")
        route, method = self.pairs[index % len(self.pairs)]
        family_name, _, mutate = rng.choices(MUTATIONS, weights=[weight for _, weight, _ in MUTATIONS])[0]
        # Writes that may still succeed go to open datasets; a write to a sealed one is mutated to break it
        # (see the module's docstring).
        contexts = self.world.eligible(route)
        if method in WRITE_METHODS and family_name in BENIGN_FAMILIES:
            contexts = [c for c in contexts if self.open(c)] or contexts
        context = dict(rng.choice(contexts))
        auth = rng.choice(["anonymous", "admin", "cookie"])
        request = self.valid(index, route, method, context, auth, rng)
        request.sealed = method in WRITE_METHODS and not self.open(context)
        if request.sealed and family_name == "body" and operation(route.handler, method).body is None:
            family_name, mutate = "path", mutate_path  # a body it does not read cannot break it
        label = mutate(self, request, route, rng)
        request.mutation = f"{family_name}:{label}"
        return request

    def open(self, context: dict[str, str]) -> bool:
        return context["dataset_ref"] in OPEN_DATASETS

    def valid(self, index: int, route: Route, method: str, context: dict[str, str], auth: str,
              rng: random.Random) -> Fuzzed:
        request = Fuzzed(index, route.name, method, "", auth, context, fill(route.pattern, context))
        request.header("Host", self.world.host)
        query = valid_query(operation(route.handler, method).query, rng)
        request.query = "&".join(f"{k}={v}" for k, v in query.items())
        self.authenticate(request, auth)
        if route.rule.xsrf == "always":  # sign-in: the _xsrf cookie echoed in the header
            request.header("Cookie", "_xsrf=66757a7a")
            request.header("X-XSRFToken", "66757a7a")
        bodies = examples(route, method)
        if bodies:
            request.body = json.dumps(rng.choice(bodies)).encode()
            request.header("Content-Type", "application/json")
        elif method in WRITE_METHODS and rng.random() < 0.5:
            request.body = b""
        return request

    def authenticate(self, request: Fuzzed, auth: str) -> None:
        if auth == "admin":
            request.header("Authorization", f"Bearer {self.world.admin_token}")
        elif auth == "cookie":  # a browser's sign-in, without the XSRF header its writes need
            request.header("Cookie", f"lamella_signin={self.world.signin_cookie}")

    def seed_value(self, request: Fuzzed) -> Any:
        route = self.by_name[request.route]
        found = examples(route, request.method)
        return json.loads(request.body) if found and request.body else {"a": [1, "b", {"c": None}]}


def _paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*at, key))
    elif isinstance(value, list):
        for number, child in enumerate(value):
            yield from _paths(child, (*at, number))


def _replace(value: Any, at: tuple[Any, ...], new: Any) -> Any:
    if not at:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[at[0]] = _replace(value[at[0]], at[1:], new)  # type: ignore[index]
    return copy


MARK = "\u2603fuzz\u2603"


def _swap(value: Any, rng: random.Random, fragments: list[str]) -> tuple[bytes, str]:
    """``value`` as JSON text with one node replaced by a hostile fragment."""
    paths = list(_paths(value))
    at = rng.choice(paths)
    fragment = rng.choice(fragments)
    text = json.dumps(_replace(value, at, MARK), ensure_ascii=False)
    label = "/".join(map(str, at)) or "root"
    return text.replace(json.dumps(MARK, ensure_ascii=False), fragment, 1).encode("utf-8", "surrogatepass"), \
        f"swap {label} -> {fragment[:24]}"


def mutate_path(maker: Maker, request: Fuzzed, route: Route, rng: random.Random) -> str:
    groups = GROUP.findall(route.pattern)
    choice = rng.random()
    if groups and choice < 0.7:
        group = rng.choice(groups)
        old = request.groups[group]
        if group == "chunk_name" and rng.random() < 0.6:
            new = rng.choice(HOSTILE_CHUNK_NAMES)
        elif group == "key" and rng.random() < 0.6:
            new = rng.choice(HOSTILE_KEYS)
        elif group == "dataset_ref" and rng.random() < 0.3:
            others = ["nope", "DEMO", "demo-", "a" * 65] + (list(maker.world.images) if not request.write else [])
            new = rng.choice(others)
        elif group in ("token", "transform_id", "token_id") and rng.random() < 0.3:
            new = rng.choice(["A" * 20, "9876543210", "0", "99999999999", "1" * 64, "²"])
        else:
            new = rng.choice(HOSTILE_SEGMENTS).replace("{v}", old)
        values = {**request.groups, group: new}
        request.path = fill(route.pattern, values)
        return f"{group}={new[:30]!r}"
    edits: list[tuple[str, Callable[[str], str]]] = [
        ("trailing slash", lambda p: p + "/"), ("double slashes", lambda p: p.replace("/", "//")),
        ("dot segments", lambda p: "/./" + p.lstrip("/") + "/../" + p.rsplit("/", 1)[-1]),
        ("upper case", str.upper), ("no leading slash", lambda p: p.lstrip("/")),
        ("long path", lambda p: p + "/" + "a" * 10_000), ("encoded slashes", lambda p: p.replace("/", "%2F")),
        ("fragment", lambda p: p + "#x"), ("backslashes", lambda p: p.replace("/", "\\")),
        ("encoded everything", lambda p: "".join(f"%{b:02X}" for b in p.encode())),
    ]
    if choice < 0.85:
        name, edit = rng.choice(edits)
        request.path = edit(request.path)
        return name
    forms = [("asterisk", b"*"), ("absolute", b"http://evil.example" + request.request_target()),
             ("absolute same host", b"http://" + maker.world.host.encode() + request.request_target()),
             ("authority", maker.world.host.encode()), ("empty", b""), ("spaces", b"/ a b")]
    name, target = rng.choice(forms)
    request.target = target
    return name


def mutate_query(maker: Maker, request: Fuzzed, route: Route, rng: random.Random) -> str:
    garbage = ["a=%ff", "c=" + "x" * 70_000, "format=x", "format=json&format=mobie", "%00", "&" * 1000, "c[]=1",
               "c=%ED%A0%80", "history=2", "history=01", "c=a%00b", "=", "c", "c=" + "%" * 10, "gs=" + "9" * 5000,
               ";;;", "c=\xff", "c=²", "+=+", "format=" + "json" * 10_000]
    extra = rng.choice(garbage)
    request.query = f"{request.query}&{extra}" if request.query and rng.random() < 0.5 else extra
    return extra[:30]


def mutate_method(maker: Maker, request: Fuzzed, route: Route, rng: random.Random) -> str:
    allowed = set(route.rule.allowed_methods) | {"OPTIONS"}
    others = [m for m in STANDARD_METHODS if m not in allowed] + ODD_METHODS
    request.method = rng.choice(others)
    return request.method[:20]


def mutate_header(maker: Maker, request: Fuzzed, route: Route, rng: random.Random) -> str:
    admin, cookie = maker.world.admin_token, maker.world.signin_cookie
    kind = rng.choice(["range", "etag", "content-type", "authorization", "cookie", "forwarded", "host", "encoding",
                       "expect", "connection", "huge", "many", "duplicate", "odd name", "if-modified", "xsrf"])
    if kind == "range":
        request.header("Range", rng.choice(RANGES))
    elif kind == "etag":
        request.header(rng.choice(["If-None-Match", "If-Match", "If-Range"]), rng.choice(ETAGS))
    elif kind == "content-type":
        request.drop("Content-Type")
        request.header("Content-Type", rng.choice(CONTENT_TYPES))
    elif kind == "authorization":
        request.drop("Authorization")
        request.header("Authorization", rng.choice(AUTHORIZATIONS).replace("{admin}", admin))
    elif kind == "cookie":
        request.header("Cookie", rng.choice(COOKIES).replace("{cookie}", cookie))
    elif kind == "forwarded":
        name = rng.choice(["X-Forwarded-For", "X-Real-Ip", "X-Forwarded-Proto", "X-Scheme", "Forwarded"])
        request.header(name, rng.choice(["", "\xff", "a" * 5000, "1.2.3.4, ::1, garbage", "javascript", "https, http",
                                         "999.999.999.999", "[::1]:80", "for=\"_x\";proto=https"]))
    elif kind == "host":
        request.drop("Host")
        value = rng.choice([None, "\xff", "a" * 10_000, "a:b:c", "[::1", "evil.example", "", "127.0.0.1:99999",
                            "host name", "\u00e9.example"])
        if value is not None:
            request.header("Host", value)
    elif kind == "encoding":
        request.header("Accept-Encoding", rng.choice(["gzip;q=0", "*", "gzip, gzip", "x" * 5000, "br;q=2", "gzip;"]))
    elif kind == "expect":
        request.header("Expect", rng.choice(["100-continue", "garbage", "100-CONTINUE"]))
    elif kind == "connection":
        request.header("Connection", rng.choice(["close", "keep-alive, Upgrade", "Upgrade", "TE", "\xff"]))
        if rng.random() < 0.5:
            request.header("Upgrade", rng.choice(["websocket", "h2c", "HTTP/2.0"]))
    elif kind == "huge":  # over the 64 KiB the server takes in a request's head
        request.header("X-Pad", "a" * rng.choice([40_000, 66_000, 70_000, 150_000]))
    elif kind == "many":
        for number in range(rng.choice([100, 1000, 3000])):
            request.header(f"X-N{number}", "v")
    elif kind == "duplicate":
        name = rng.choice(["Content-Type", "Authorization", "Range", "Cookie", "Host", "If-None-Match",
                           "X-XSRFToken"])
        values = {"Authorization": [f"Bearer {admin}", "Bearer garbage"], "Range": ["bytes=0-1", "bytes=2-3"],
                  "Cookie": [f"lamella_signin={cookie}", "lamella_signin=x"], "Host": ["a", "b"]}
        for value in values.get(name, ["application/json", "text/plain"]):
            request.header(name, value)
    elif kind == "odd name":
        request.header(rng.choice(["X Y", "X-\xc4", "X-A\t", "X-Ä", "(x)", "X-" + "N" * 5000]), "v")
    elif kind == "if-modified":
        request.header("If-Modified-Since", rng.choice(["garbage", "Thu, 01 Jan 1970 00:00:00 GMT",
                                                        "Fri, 31 Dec 99999 23:59:59 GMT", "0", "-1"]))
    else:
        request.header("Cookie", "_xsrf=" + rng.choice(["a", "2|00|00|0", "2|x|y|z", "\xff", "1" * 5000]))
        request.header("X-XSRFToken", rng.choice(["a", "b", "2|00|00|0", ""]))
    return kind


def mutate_body(maker: Maker, request: Fuzzed, route: Route, rng: random.Random) -> str:
    value = maker.seed_value(request)
    if request.body is None or "Content-Type" not in {k.decode() for k, _ in request.headers}:
        request.header("Content-Type", "application/json")
    choice = rng.random()
    if request.sealed:  # only what no handler can take: not JSON, not UTF-8, or nested too deep
        if choice < 0.3:
            request.body, label = _swap(value, rng, NOT_JSON_FRAGMENTS)
        elif choice < 0.6:
            request.body = rng.choice(NOT_AN_OBJECT)
            label = f"body {request.body[:20]!r}"
        else:
            text = json.dumps(value).encode()
            at = rng.randrange(len(text))
            request.body = text[:at] + rng.choice([b"", b"\xff", b"\x00", b"\xed\xa0\x80"])
            label = f"cut at {at}"
        return label
    if choice < 0.45:
        request.body, label = _swap(value, rng, HOSTILE_FRAGMENTS)
    elif choice < 0.55 and isinstance(value, dict) and value:
        key = rng.choice(list(value))
        kind = rng.choice(["drop", "unknown", "duplicate", "nul key", "huge key"])
        text = json.dumps({k: v for k, v in value.items() if k != key}) if kind == "drop" else json.dumps(value)
        if kind == "unknown":
            text = text[:-1] + ', "unknown\\u0000": [1]}'
        elif kind == "duplicate":
            text = text[:-1] + f', "{key}": {{"x": [[]]}}}}'
        elif kind == "nul key":
            text = "{" + f'"{key}\\u0000": 1, ' + text[1:]
        elif kind == "huge key":
            text = "{" + '"' + "k" * 70_000 + '": 1, ' + text[1:]
        request.body = text.encode()
        label = f"{kind} {key}"
    elif choice < 0.75:
        request.body = rng.choice(HOSTILE_BODIES)
        label = f"body {request.body[:20]!r}"
    elif choice < 0.85:
        text = json.dumps(value).encode()
        cut = rng.randrange(len(text)) if text else 0
        request.body = text[:cut]
        label = f"truncated at {cut}"
    elif choice < 0.93:
        text = json.dumps(value).encode()
        at = rng.randrange(len(text) + 1)
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\x00", b"\xf4\x90\x80\x80"])
        request.body = text[:at] + bad + text[at:]
        label = f"bytes {bad!r} at {at}"
    else:  # around the route's limit, in valid JSON (the excess is whitespace)
        text = json.dumps(value).encode()
        limit = route.rule.body_limit
        size = rng.choice([limit, limit + 1]) if limit <= 1 << 20 else rng.choice([len(text) + 100_000, limit + 1])
        request.body = text + b" " * max(0, size - len(text))
        label = f"{len(request.body)} bytes"
    return label


def _chunked(body: bytes, size: int, extension: bytes = b"", upper: bool = False, zeros: int = 0,
             trailer: bytes = b"") -> bytes:
    """``body`` in chunks of ``size`` bytes (the last may be shorter)."""
    def line(length: int) -> bytes:
        number = f"{length:x}".upper() if upper else f"{length:x}"
        return b"0" * zeros + number.encode() + extension + b"\r\n"

    whole, rest = divmod(len(body), size)
    framed = [line(size) + body[at:at + size] + b"\r\n" for at in range(0, whole * size, size)] if size > 1 else \
        [line(1) + body[at:at + 1] + b"\r\n" for at in range(whole)]
    if rest:
        framed.append(line(rest) + body[whole * size:] + b"\r\n")
    return b"".join(framed) + b"0" + extension + b"\r\n" + trailer + b"\r\n"


FRAMINGS = [  # kinds of framing mutation, and how often (a chunk costs the server about 10 us)
    ("chunked", 10), ("chunk extensions", 10), ("many chunks", 2), ("too many chunks", 0.5), ("bad chunk", 10),
    ("both framings", 10),
    ("coding", 10), ("length spelling", 10), ("short length", 10), ("long length", 10), ("expect", 10),
    ("pipelined", 10), ("half-closed", 10), ("http/1.0", 10), ("version", 10), ("bare newlines", 10),
]


def mutate_framing(maker: Maker, request: Fuzzed, route: Route, rng: random.Random) -> str:
    body = request.body if request.body is not None else b'{"a": 1}'
    kind = rng.choices(FRAMINGS, weights=[weight for _, weight in FRAMINGS])[0][0]
    if kind in ("chunked", "chunk extensions", "many chunks", "too many chunks", "bad chunk", "both framings",
                "coding"):
        request.drop("Content-Length")
        request.header("Transfer-Encoding", "chunked")
        if kind == "chunked":
            size = max(rng.choice([1, 7, 100, 4096, 70_000]), -(-len(body) // 300))  # at most 300 chunks
            request.payload = _chunked(body, size, upper=rng.random() < 0.5, zeros=rng.choice([0, 0, 5]))
        elif kind == "chunk extensions":
            extension = rng.choice([b";a=b", b";" + b"x" * 40, b'; q="1"'])
            request.payload = _chunked(body, max(50, -(-len(body) // 300)), extension=extension,
                                       trailer=rng.choice([b"", b"X-Trailer: 1\r\n"]))
        elif kind in ("many chunks", "too many chunks"):  # one byte a chunk (too many: more than the server takes)
            padded = body + b" " * max(0, (MAX_CHUNKS if kind == "many chunks" else 70_000) - len(body))
            request.payload = _chunked(padded, 1)
        elif kind == "bad chunk":
            request.payload = rng.choice([b"zz\r\nabc\r\n0\r\n\r\n", b"-1\r\na\r\n0\r\n\r\n", b"f" * 30 + b"\r\n",
                                          b"5\r\nab\r\n0\r\n\r\n", b"3\r\nabcXX0\r\n\r\n", b"0" * 100 + b"1\r\na\r\n",
                                          b"3\r\nabc\r\n0\r\nX\r\n", b"0x3\r\nabc\r\n0\r\n\r\n",
                                          b"3 \r\nabc\r\n0\r\n\r\n"])
            request.may_go_unanswered = request.half_close = True  # a malformed chunk may leave the server waiting
        elif kind == "both framings":
            request.header("Content-Length", str(len(body)))
            request.payload = _chunked(body, max(10, -(-len(body) // 300)))
        else:
            request.drop("Transfer-Encoding")
            request.header("Transfer-Encoding", rng.choice(["Chunked", "chunked, chunked", "gzip, chunked", "identity",
                                                             " chunked", "chunked;q=1", "x" * 1000]))
            request.payload = _chunked(body, max(10, -(-len(body) // 300)))
            request.may_go_unanswered = request.half_close = True
        return kind
    if kind == "length spelling":
        request.body = body
        request.payload = body
        request.header("Content-Length", rng.choice([f"000{len(body)}", f"+{len(body)}", f" {len(body)} ",
                                                     f"{len(body)}, {len(body)}", f"{len(body)}.0", f"0x{len(body):x}",
                                                     "²"]))
        request.half_close = request.may_go_unanswered = True
        return kind
    if kind == "short length":  # the rest is read as the next request, and never completes
        request.payload = body
        request.header("Content-Length", str(len(body) // 2))
        request.half_close = True
        request.methods = [request.method, "GET"]
        request.may_go_unanswered = True
        return kind
    if kind == "long length":  # the body ends early: the client shuts down its side
        request.payload = body
        request.header("Content-Length", str(len(body) + 100))
        request.half_close = request.may_go_unanswered = True
        return kind
    if kind == "expect":
        request.body = body
        request.header("Expect", "100-continue")
        return kind
    if kind in ("pipelined", "half-closed"):
        others = [b"GET /api/me HTTP/1.1\r\nHost: x\r\n\r\n",
                  b"GET /api/datasets/demo/images/em/precomputed/info HTTP/1.1\r\nHost: x\r\n\r\n",
                  b"HEAD /api/datasets HTTP/1.1\r\nHost: x\r\n\r\n"]
        picked = [rng.choice(others) for _ in range(rng.randrange(1, 4))]
        request.after = b"".join(picked)
        request.methods = [request.method] + [p.split(b" ", 1)[0].decode() for p in picked]
        request.half_close = kind == "half-closed"
        return f"{kind} x{len(picked) + 1}"
    if kind == "http/1.0":
        request.version = b"HTTP/1.0"
        if rng.random() < 0.5:
            request.drop("Host")
        if rng.random() < 0.5:
            request.header("Connection", "keep-alive")
        return kind
    if kind == "version":
        request.version = rng.choice([b"HTTP/2.0", b"HTTP/1.1 x", b"HTTP/01.1", b"http/1.1", b"HTTP/1.9", b"HTTP/1",
                                      b"HTTP/0.9", b"HTTP/1.1\x00", b"HTTP/" + b"1" * 1000])
        return request.version[:12].decode("latin-1")
    request.newline = b"\n"
    return kind


def mutate_nothing(maker: Maker, request: Fuzzed, route: Route, rng: random.Random) -> str:
    return "valid"


Mutation = Callable[[Maker, Fuzzed, Route, random.Random], str]
MUTATIONS: list[tuple[str, int, Mutation]] = [
    ("none", 6, mutate_nothing), ("path", 14, mutate_path), ("query", 5, mutate_query), ("method", 6, mutate_method),
    ("header", 20, mutate_header), ("body", 32, mutate_body), ("framing", 12, mutate_framing),
]
# Families whose requests may still be valid writes (a header or a framing changes nothing a handler reads;
# a query argument may be ignored); path, method and body mutations are meant to break the request.
BENIGN_FAMILIES = {"none", "header", "framing", "query"}
