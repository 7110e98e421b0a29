"""Dataset and image names: checked without touching the database (nor importing SQLAlchemy)."""

from __future__ import annotations

import re
from typing import Any

from annotations.errors import InvalidMetadata

NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,63}$")


def check_name(name: str, what: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidMetadata(
            f"{what} name {name!r} must start with a lowercase letter and use only a-z, 0-9, _ and -"
        )
    return name


def no_nul(text: str) -> str:
    """Text the databases can store: PostgreSQL refuses NUL characters in text."""
    if "\x00" in text:
        raise ValueError("text may not contain NUL characters")
    return text


NO_NUL_PATTERN = r"^[^\u0000]*$"  # JSON Schema (ECMA-262) and Python alike


class NoNulSchema:
    """Pydantic metadata saying in the JSON schema what ``no_nul`` checks (a pattern NUL never matches)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema["pattern"] = NO_NUL_PATTERN
        return schema
