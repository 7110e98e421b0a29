"""Which annotations a request selects: a view (as of a time, by author, label, update time), written in one
canonical spelling inside the precomputed URL so that caches key on it, and parsed back. Pure code."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime

from annotations.errors import InvalidView

CURRENT = "current"  # the view without filters
# A viewer session's view layers: ``current`` without what that session's edit layers hold
# (``annotations.viewer_layers``); the session's view key, then a revision that changes the URL when needed.
EDITING = re.compile(r"editing=([0-9a-f]{16})(?:\.[1-9][0-9]{0,8})?", re.ASCII)
_PART = re.compile(r"(as_of|author|label|since|until)=([A-Za-z0-9_.\-]{1,64})", re.ASCII)
_MICROS = re.compile(r"0|[1-9][0-9]{0,16}", re.ASCII)
MAX_MICROS = 253402300799999999  # 9999-12-31T23:59:59.999999Z


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch (UTC)."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    from datetime import timedelta

    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


@dataclass(frozen=True, slots=True)
class View:
    """Filters: ``as_of`` (the layer as it was then), ``author`` (account name of the current version),
    ``label``, and ``since``/``until`` (the current version written in [since, until))."""

    as_of: datetime | None = None
    author: str | None = None
    label: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, text: str) -> View:
        """``current`` or ``key=value`` parts joined by ``,`` in key order; times in epoch microseconds."""
        if text == CURRENT:
            return cls()
        values: dict[str, object] = {}
        for part in text.split(","):
            match = _PART.fullmatch(part)
            if match is None:
                raise InvalidView(f"{part[:80]!r} is not a view filter (as_of, author, label, since, until)")
            key, value = match.groups()
            if key in values:
                raise InvalidView(f"filter {key} is given twice")
            if key in ("as_of", "since", "until"):
                if _MICROS.fullmatch(value) is None or int(value) > MAX_MICROS:
                    raise InvalidView(f"{key} is microseconds since 1970 (UTC), not {value!r}")
                values[key] = from_micros(int(value))
            else:
                values[key] = value
        view = cls(**values)  # type: ignore[arg-type]
        if str(view) != text:
            raise InvalidView(f"write this view as {str(view)!r} (one spelling per view, for caches)")
        return view

    def __str__(self) -> str:
        parts = []
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            parts.append(f"{field.name}={to_micros(value) if isinstance(value, datetime) else value}")
        return ",".join(parts) or CURRENT
