"""Hostile values the route-table fuzzer (tests/fuzzing.py) puts in paths, headers and bodies."""

from __future__ import annotations

import orjson

HOSTILE_SEGMENTS = [
    "²", "①", "٣", "\uff11", "00{v}", "0000000000{v}", "9" * 5000, "%00", "{v}%00", "..", "%2e%2e", ".", "a" * 300,
    "{v}" + "x" * 256, "%ED%A0%80", "%F0%9F%98%80", "%C0%AF", "%2F", "{v}%2F..", "%", "%zz", "%%", "", " ", "%20",
    "{v}/", "-1", "0", "18446744073709551616", "9223372036854775808", "1e3", "0x1f", "nope", "{v}\x00", "\xff",
    "\u00e9", "{v};x=1", "{v}%3B", "+", "{v}#frag", "~", "%u0041", "\\..\\", "{v}\\",
]
HOSTILE_CHUNK_NAMES = [
    "0-64_0-64", "0-64_0-64_0-64_0-64", "64-0_0-64_0-64", "-64-0_0-64_0-64", "0-0_0-0_0-0", "0-65_0-64_0-64",
    "999936-1000000_0-64_0-64", "0-" + "9" * 400 + "_0-64_0-64", "0-64_0-64_0-6\uff14", "00-64_0-64_0-64", "0-64__0-64",
    "\uff10-64_0-64_0-64", "0-1e2_0-64_0-64", "0-64_0-64_0-64_", "0-64.0_0-64_0-64",
]
HOSTILE_KEYS = [
    "../zarr.json", "0/../../x", "%2e%2e/zarr.json", "/etc/passwd", "zarr.json/", "0/c/0/0/999999", "0/c/" + "9" * 900,
    "0/c/-1/0/0", "0/c/0/0/0/0", ".zgroup", "0//zarr.json", "0/./zarr.json", "0/c/0%2F0/0", "zarr.json%00",
    "0/c/²/0/0", "0/c/0.5/0/0",
]
HOSTILE_FRAGMENTS = [
    "[]", "{}", '""', '"x"', str(2**63), str(-(2**63) - 1), "9" * 400, "1e308", "1e-320", "-0.0", "NaN", "Infinity",
    "-Infinity", "true", "false", "null", "0", "-1", "1.5", '"\\ud800"', '"\\udfff\\ud800"', '"\\u0000"',
    '"' + "a" * 70_000 + '"', "1e400", "-1e400", '"²"', "[" * 500 + "]" * 500, '{"a":' * 500 + "1" + "}" * 500,
    "[" + ",".join(["0"] * 5000) + "]", '"2027-02-30"', '"0000-00-00"', '"\\n\\r\\t"', "1E2", "0.1e-999",
    '{"__proto__": {"x": 1}}', '"' + "\\u00e9" * 100 + '"', '"' + "\u202e" + "evil" + '"',
]
HOSTILE_BODIES: list[bytes] = [
    b"", b" ", b"\r\n", b"null", b"0", b'"text"', b"[]", b"{", b"}", b"{}{}", b"[1,]", b"{'a': 1}", b"NaN",
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b"\xef\xbb\xbf{}", b"\x00", b"{\x00}", b'{"a":"\xff"}',
    b'{"a":"\xc3\x28"}', b'{"a":"\xc0\xaf"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\\ud800"}', b"a=1&b=2",
    b"<xml/>", b"[" * 500 + b"]" * 500, b'{"a":' * 500 + b"1" + b"}" * 500, b"[" * 100_000,
    b"[" + b",".join([b"0"] * 300_000) + b"]", b'{"a": 1, "a": 2}', b"1" * 5000, b"-", b"1e99999",
    b'"' + b"\\" * 1001 + b'"',
]
NOT_JSON_FRAGMENTS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", '"\\ud800"', '"\\udfff\\ud800"',
                      "[" * 500 + "]" * 500, '{"a":' * 500 + "1" + "}" * 500, "'a'", "0x10", "+1", ".5", "01"]


def _an_object(body: bytes) -> bool:
    try:
        return isinstance(orjson.loads(body), dict)
    except orjson.JSONDecodeError:
        return False


NOT_AN_OBJECT = [body for body in HOSTILE_BODIES if not _an_object(body)]
RANGES = [
    "bytes=0-0", "bytes=-1", "bytes=0-", "bytes=5-2", "bytes=0-1,2-3", "bytes=" + "9" * 5000 + "-",
    "bytes=-" + "9" * 5000, "bytes=x-y", "bytes 0-1", "items=0-1", "bytes=--1", "bytes=1--2", "bytes= 0 - 1 ",
    "bytes=²-", "bytes=0-18446744073709551616", "", "bytes=", "bytes=-0", "bytes=00000000001-2", "bytes=1-1,",
    "bytes=" + ",".join(["0-0"] * 2000),
]
ETAGS = ["*", 'W/"x"', '"' * 1000, "\xff\xfe", ", , ,", ", ".join(['"x"'] * 3000), "W/", '""', 'W/W/"a"',
         "a" * 20_000]
CONTENT_TYPES = [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "multipart/form-data",
    "application/json; charset=latin-1", "application/json; charset=utf-16", "image/jpeg", "a" * 1000,
    "application/json;;;", "application/json; boundary=", "\xff/\xfe", "",
]
AUTHORIZATIONS = [
    "Bearer", "Bearer ", "Bearer lmt_" + "A" * 5000, "Bearer \xff\xfe", "Basic YWRtaW46YWRtaW4=", "Bearer a b c",
    "bearer {admin}", "Bearer {admin}x", "Bearer {admin}{admin}", "Negotiate YII=", "Bearer lmt_", "Bearer ²",
    "Bearer " + "lmt_" + "x" * 43, "{admin}", "Bearer\t{admin}", "Bearer  {admin}",
]
COOKIES = [
    "lamella_signin=garbage", "lamella_signin=2|1:0|10:1700000000|14:lamella_signin|4:YQ==|" + "0" * 64,
    "lamella_signin=" + "A" * 4000, "_xsrf=abc", "=; ;;=", "lamella_signin=\xff", "a" * 60_000 + "=1",
    "lamella_signin={cookie}x", "lamella_signin={cookie}; lamella_signin=garbage", "lamella_signin=\"{cookie}\"",
]
ODD_METHODS = ["TRACE", "CONNECT", "PROPFIND", "FOO", "get", "G\xc9T", "M" * 10_000, "PRI", "LINK", "QUERY",
               "HEAD ", "GET\x00"]
STANDARD_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
