"""Shared views: frozen copies of a viewer state behind a short code, stored in ``shared_views``.

A copy never changes once made; opening it starts a new viewer session from it (``viewer_annotations``).
Who may open it is who may read its dataset: the code alone grants nothing more.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from annotations.catalog import UtcDatetime
from annotations.errors import SharedViewNotFound
from annotations.models import SharedView, utcnow

CODE = re.compile(r"[A-Za-z0-9_\-]{8,32}")
CODE_BYTES = 8  # 11 characters of base64url: 64 random bits


class SharedViewRecord(BaseModel):
    code: str
    dataset_id: int
    state: dict[str, Any]
    created_by: int | None
    created_at: UtcDatetime


class SharedViews:
    """The stored copies (blocking; the web layer runs it in its database threads)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def create(self, dataset_id: int, state: dict[str, Any], created_by: int | None) -> SharedViewRecord:
        code = secrets.token_urlsafe(CODE_BYTES)
        with self.sessions.begin() as session:
            row = SharedView(code=code, dataset_id=dataset_id, state=state, created_by=created_by,
                             created_at=utcnow())
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, code: str) -> SharedViewRecord:
        """The copy behind ``code``; SharedViewNotFound if there is none."""
        if CODE.fullmatch(code) is None:
            raise SharedViewNotFound(f"no shared view {code[:40]!r}")
        with self.sessions() as session:
            row = session.get(SharedView, code)
            if row is None:
                raise SharedViewNotFound(f"no shared view {code!r}")
            return _record(row)

    def dataset_of(self, code: str) -> int:
        """The dataset a copy shows (what access checks need; it never changes)."""
        return self.get(code).dataset_id


def _record(row: SharedView) -> SharedViewRecord:
    return SharedViewRecord(code=row.code, dataset_id=row.dataset_id, state=row.state, created_by=row.created_by,
                            created_at=row.created_at)
