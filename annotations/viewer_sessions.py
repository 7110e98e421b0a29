"""Server-owned viewer state, in the database, with the generations of Neuroglancer's state sync.

A generation is an opaque string; a client's update is stored as ``<clientId>/<g>`` so that
the event stream never echoes a client's own change back to it. Updates are compare-and-set
on the generation, so several server processes agree on one order of changes.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from annotations.errors import SessionNotFound, StaleGeneration
from annotations.models import ViewerSession, utcnow
from annotations.viewer_layers import held_by_layer


@dataclass(frozen=True, slots=True)
class SessionState:
    token: str
    dataset_id: int | None
    state: dict[str, Any]
    generation: str
    config: dict[str, Any]
    config_generation: str
    account_id: int | None = None  # who opened it (None: anonymous); the session acts with its rights
    view_key: str = ""  # its public name in its view layers' URLs (``editing=<key>`` views)


def _server_generation() -> str:
    return "server/" + secrets.token_hex(8)


class ViewerSessions:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def create(
        self, dataset_id: int | None, state: dict[str, Any], config: dict[str, Any], account_id: int | None = None,
        view_key: str | None = None,
    ) -> SessionState:
        """A new session opened by ``account_id`` (None: anonymous); its token is its credential, ``view_key``
        (made here if not given) its public name in the URLs of its view layers."""
        token = secrets.token_urlsafe(18)
        row = ViewerSession(
            token=token,
            view_key=view_key or secrets.token_hex(8),
            dataset_id=dataset_id,
            account_id=account_id,
            state=state,
            held=held_by_layer(state),
            generation=_server_generation(),
            config=config,
            config_generation=_server_generation(),
        )
        with self.sessions.begin() as session:
            session.add(row)
        return self.get(token)

    def get(self, token: str) -> SessionState:
        with self.sessions() as session:
            row = session.get(ViewerSession, token)
            if row is None:
                raise SessionNotFound(f"no viewer session {token!r}")
            return SessionState(
                row.token, row.dataset_id, row.state, row.generation, row.config, row.config_generation,
                row.account_id, row.view_key or "",
            )

    def owner(self, token: str) -> tuple[int | None, int | None]:
        """(dataset id, account id) of a session: what access checks need, never changed after creation."""
        with self.sessions() as session:
            row = session.execute(
                select(ViewerSession.dataset_id, ViewerSession.account_id).where(ViewerSession.token == token)
            ).first()
            if row is None:
                raise SessionNotFound(f"no viewer session {token!r}")
            return row[0], row[1]

    def generations(self, token: str) -> tuple[str, str]:
        """(state generation, config generation): the cheap poll behind the event stream."""
        with self.sessions() as session:
            row = session.execute(
                select(ViewerSession.generation, ViewerSession.config_generation).where(
                    ViewerSession.token == token
                )
            ).first()
            if row is None:
                raise SessionNotFound(f"no viewer session {token!r}")
            return row[0], row[1]

    def set_state(
        self, token: str, state: dict[str, Any], *, generation: str | None = None, expected: str | None = None
    ) -> str:
        """Store ``state``; with ``expected``, only if that is still the current generation.

        Returns the new generation. Raises StaleGeneration or SessionNotFound.
        """
        new_generation = generation or _server_generation()
        with self.sessions.begin() as session:
            query = update(ViewerSession).where(ViewerSession.token == token)
            if expected is not None:
                query = query.where(ViewerSession.generation == expected)
            result = session.execute(
                query.values(state=state, held=held_by_layer(state), generation=new_generation, updated_at=utcnow())
            )
            if result.rowcount == 0:
                if session.get(ViewerSession, token) is None:
                    raise SessionNotFound(f"no viewer session {token!r}")
                raise StaleGeneration(f"session {token!r} has moved past generation {expected!r}")
        return new_generation

    def update_state(
        self, token: str, change: Callable[[dict[str, Any]], dict[str, Any]], *, attempts: int = 8
    ) -> tuple[str, dict[str, Any]]:
        """Apply ``change`` to the current state, retrying if another writer got in first.

        Returns (generation, state). ``change`` may raise to abandon the update.
        """
        for _ in range(attempts):
            current = self.get(token)
            state = change(current.state)
            try:
                return self.set_state(token, state, expected=current.generation), state
            except StaleGeneration:
                continue
        raise StaleGeneration(f"session {token!r} kept changing; try again")

    def tokens_for_dataset(self, dataset_id: int, *, active_within_days: float | None = None) -> list[str]:
        """Sessions showing the dataset; with ``active_within_days``, only those changed since."""
        with self.sessions() as session:
            query = select(ViewerSession.token).where(ViewerSession.dataset_id == dataset_id)
            if active_within_days is not None:
                since = utcnow() - timedelta(days=active_within_days)
                query = query.where(ViewerSession.updated_at >= since)
            return list(session.scalars(query))

    def set_config(self, token: str, config: dict[str, Any]) -> str:
        new_generation = _server_generation()
        with self.sessions.begin() as session:
            result = session.execute(
                update(ViewerSession)
                .where(ViewerSession.token == token)
                .values(config=config, config_generation=new_generation, updated_at=utcnow())
            )
            if result.rowcount == 0:
                raise SessionNotFound(f"no viewer session {token!r}")
        return new_generation
