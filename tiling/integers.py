"""Whole numbers read from untrusted text (URLs, headers), in one canonical spelling each.

Python's ``int()`` and ``str.isdigit()`` accept more than ASCII digits ('٣' is 3, '²' passes
``isdigit`` but not ``int``), leading zeros, '+' and surrounding whitespace, and ``int()``
refuses more than 4300 digits with a plain ValueError. A number that names something (a chunk,
a scale, a byte) must have exactly one spelling, so that one thing has one URL and one cache
entry, and anything else must fail with the caller's own error.
"""

from __future__ import annotations


def parse_natural(text: str, maximum: int, error: type[Exception], what: str = "number") -> int:
    """``text`` as a whole number in ``0..maximum``: ASCII digits, no sign, no leading zero.

    Raises ``error`` (the caller's domain error) for anything else, including other spellings
    of allowed values such as "007", "+7", " 7" or an Arabic-Indic 7. The length is checked first, so
    ``int()`` never sees more digits than ``maximum`` has.
    """
    return _digits(text, text, maximum, error, what)


def parse_integer(text: str, bound: int, error: type[Exception], what: str = "number") -> int:
    """``text`` as a whole number in ``-bound..bound``: as ``parse_natural``, with '-' allowed (not "-0")."""
    if not text.startswith("-"):
        return _digits(text, text, bound, error, what)
    value = _digits(text[1:], text, bound, error, what)
    if value == 0:
        raise error(f"{what} '-0' is spelt '0'")
    return -value


def _digits(digits: str, text: str, maximum: int, error: type[Exception], what: str) -> int:
    if not (digits.isascii() and digits.isdigit()) or len(digits) > len(str(maximum)):
        raise error(f"{what} {clip(text)} is not a whole number up to {maximum} in ASCII digits")
    if len(digits) > 1 and digits[0] == "0":
        raise error(f"{what} {clip(text)} has a leading zero")
    value = int(digits)
    if value > maximum:
        raise error(f"{what} {clip(text)} is larger than {maximum}")
    return value


def clip(text: str, limit: int = 40) -> str:
    """``repr(text)`` shortened to about ``limit`` characters, for error messages that echo input."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"
