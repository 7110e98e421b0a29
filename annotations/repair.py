"""Finding and quarantining stored values that cannot be used (``lamella check [--repair]``).

Older versions stored what Python's json module writes for non-finite floats, bare ``NaN`` and
``Infinity`` (PostgreSQL's JSON type refuses those, but takes literals such as ``1e400``, which
read back as infinity), and transforms that today's checks refuse. Everything is read as the
raw stored text and parsed leniently here, so that a bad row is reported, never a crash.

- A bad transform is quarantined: ``quarantined_at`` and ``quarantine_reason`` set, the row kept
  as history and never current (``Transforms.current_for``), one transaction per row.
- A viewer session's state or config with non-finite numbers is kept as found, raw text, in
  ``quarantined_documents`` (kind ``viewer_state`` / ``viewer_config``, ref = the session token)
  and replaced by ``sanitized`` (see there) under a new generation, so open viewers pick it up;
  compare-and-set on the generation, like every other state change, in one transaction.

Whether a transform is geometrically usable (singular, ill-conditioned, out of bounds) is the
pixel library's judgement, not the database's: it is passed in as ``checker`` (``lamella check``
passes ``tiling.transforms.transform_problem``, the check the server applies before storing),
which keeps this package free of numpy, scipy and the pixel library, as it has been.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, select, update
from sqlalchemy.orm import Session, sessionmaker

from annotations.errors import StaleGeneration
from annotations.models import Dataset, Image, ImageTransform, QuarantinedDocument, ViewerSession, utcnow
from annotations.viewer_sessions import _server_generation

# (kind, dimensions, matrix, landmarks, residuals, rms) -> why the transform cannot be used, or None.
TransformChecker = Callable[[str, int, Any, Any, Any, Any], str | None]
# What replaces a document that is not even JSON (only SQLite can hold one).
EMPTY = {"state": {"layers": []}, "config": {}}
_BATCH = 100
_DIGITS = 4000  # json's default int() refuses more than 4300 digits


@dataclass(frozen=True)
class BadTransform:
    id: int
    dataset: str
    image: str
    reason: str


@dataclass(frozen=True)
class BadDocument:
    token: str  # the viewer session
    dataset: str | None
    part: str  # "state" or "config"
    reason: str

    @property
    def kind(self) -> str:
        return f"viewer_{self.part}"


@dataclass(frozen=True)
class Repair:
    """What ``repair_session`` did: the new generation and the paths of the values it removed."""

    generation: str
    removed: list[str]


class Unreadable(ValueError):
    """Stored text that is not JSON, even leniently read."""


def lenient_loads(text: str | None) -> Any:
    """Stored JSON text as Python, accepting NaN, Infinity and integers of any length (very long: inf)."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_int=lambda digits: int(digits) if len(digits) <= _DIGITS else float(digits))
    except (ValueError, RecursionError) as error:
        raise Unreadable(f"the stored text is not JSON ({error})") from None


def is_finite(value: Any) -> bool:
    """False for NaN, ±infinity and integers beyond any float (which no client can read as a number)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) <= sys.float_info.max
    return True


def _step(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)


def non_finite_paths(value: Any, path: str = "") -> Iterator[str]:
    """The paths (``layers[2].annotations[0].point[1]``) of the non-finite numbers in ``value``."""
    stack = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            stack.extend((_step(where, str(key)), child) for key, child in reversed(list(item.items())))
        elif isinstance(item, list):
            stack.extend((_step(where, k), child) for k, child in reversed(list(enumerate(item))))
        elif not is_finite(item):
            yield where or "(the whole document)"


def _has_non_finite(value: Any) -> bool:
    return next(non_finite_paths(value), None) is not None


_DROP = object()


def _sanitize(value: Any, path: str, key: str | None, removed: list[str]) -> Any:
    if isinstance(value, dict):
        kept = {}
        for name, child in value.items():
            clean = _sanitize(child, _step(path, str(name)), str(name), removed)
            if clean is not _DROP:
                kept[name] = clean
        return kept
    if isinstance(value, list):
        if not _has_non_finite(value):
            return value
        if key != "annotations" and not any(isinstance(item, dict) for item in value):
            removed.append(path)  # numbers or nested lists (a point, a matrix, a range): all or nothing
            return _DROP
        items = []
        for k, item in enumerate(value):
            if isinstance(item, dict) and key != "annotations":
                items.append(_sanitize(item, _step(path, k), None, removed))
            elif _has_non_finite(item):
                removed.append(_step(path, k))  # an annotation is only as good as all its numbers
            else:
                items.append(item)
        return items
    if not is_finite(value):
        removed.append(path)
        return _DROP
    return value


def sanitized(document: Any, part: str = "state") -> tuple[Any, list[str]]:
    """``document`` without its non-finite numbers, and the paths of what was removed.

    Neuroglancer falls back to its own default for a member that is absent, so what holds a
    non-finite number is removed: an annotation (a landmark, a point) entirely, a member that is
    a number or a list of numbers (a position, a matrix, a range) as a whole; objects and lists
    of objects (layers) are kept and cleaned inside. The rest of what the user set is kept.
    A document that is nothing but a non-finite number becomes the empty state (or config).
    """
    removed: list[str] = []
    clean = _sanitize(document, "", None, removed)
    if clean is _DROP:
        clean = json.loads(json.dumps(EMPTY[part]))
    return clean, [path or "(the whole document)" for path in removed]


def document_problem(text: str | None) -> tuple[Any, str | None]:
    """(the parsed document, why it cannot be used or None) for a stored JSON text."""
    try:
        document = lenient_loads(text)
    except Unreadable as error:
        return None, str(error)
    paths = list(non_finite_paths(document))
    if not paths:
        return document, None
    more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    return document, f"non-finite numbers (NaN, infinity) at {', '.join(paths[:3])}{more}"


# Transforms


def find_bad_transforms(sessions: sessionmaker[Session], checker: TransformChecker | None = None) -> list[BadTransform]:
    """Transforms not yet quarantined that hold non-finite numbers or that ``checker`` refuses."""
    query = (
        select(
            ImageTransform.id, ImageTransform.kind, ImageTransform.dimensions,
            cast(ImageTransform.matrix, Text), cast(ImageTransform.landmarks, Text),
            cast(ImageTransform.residuals_nm, Text), ImageTransform.rms_nm, Dataset.name, Image.name,
        )
        .join(Image, Image.id == ImageTransform.image_id)
        .join(Dataset, Dataset.id == Image.dataset_id)
        .where(ImageTransform.quarantined_at.is_(None))
        .order_by(ImageTransform.id)
        .execution_options(yield_per=_BATCH)
    )  # fmt: skip
    bad = []
    with sessions() as session:
        for row in session.execute(query):
            reason = _transform_problem(row, checker)
            if reason is not None:
                bad.append(BadTransform(row[0], row[7], row[8], reason))
    return bad


def _transform_problem(row: Any, checker: TransformChecker | None) -> str | None:
    _, kind, dimensions, matrix_text, landmarks_text, residuals_text, rms, _, _ = row
    values = {}
    for name, text in (("matrix", matrix_text), ("landmarks", landmarks_text), ("residuals", residuals_text)):
        value, problem = document_problem(text)
        if problem is not None:
            return f"{name}: {problem}"
        values[name] = value
    if rms is not None and not is_finite(rms):
        return f"rms: {rms} is not a finite number"
    if checker is not None:
        return checker(kind, dimensions, values["matrix"], values["landmarks"], values["residuals"], rms)
    return None


def quarantine_transform(sessions: sessionmaker[Session], bad: BadTransform, now: datetime | None = None) -> bool:
    """Quarantine one transform in its own transaction; False if it was already (or is gone)."""
    with sessions.begin() as session:
        result = session.execute(
            update(ImageTransform)
            .where(ImageTransform.id == bad.id, ImageTransform.quarantined_at.is_(None))
            .values(quarantined_at=now or utcnow(), quarantine_reason=bad.reason)
        )
        return bool(result.rowcount)


# Viewer sessions


def _columns(part: str) -> tuple[Any, Any]:
    if part == "state":
        return ViewerSession.state, ViewerSession.generation
    if part == "config":
        return ViewerSession.config, ViewerSession.config_generation
    raise ValueError(f"part must be state or config, not {part!r}")


def find_bad_sessions(sessions: sessionmaker[Session]) -> list[BadDocument]:
    """Viewer sessions whose stored state or config is not JSON or holds non-finite numbers."""
    query = (
        select(ViewerSession.token, Dataset.name, cast(ViewerSession.state, Text), cast(ViewerSession.config, Text))
        .outerjoin(Dataset, Dataset.id == ViewerSession.dataset_id)
        .order_by(ViewerSession.created_at, ViewerSession.token)
        .execution_options(yield_per=_BATCH)
    )
    bad = []
    with sessions() as session:
        for token, dataset, state_text, config_text in session.execute(query):
            for part, text in (("state", state_text), ("config", config_text)):
                _, problem = document_problem(text)
                if problem is not None:
                    bad.append(BadDocument(token, dataset, part, problem))
    return bad


class _Moved(Exception):
    """The session changed between reading and writing: read again."""


def repair_session(sessions: sessionmaker[Session], bad: BadDocument, *, attempts: int = 8) -> Repair | None:
    """Keep the stored document in ``quarantined_documents`` and store its sanitized form.

    One transaction; compare-and-set on the generation, so a viewer's concurrent change is never
    lost (the repair reads again). None if the session is gone or its document is now usable.
    """
    column, generation_column = _columns(bad.part)
    for _ in range(attempts):
        try:
            with sessions.begin() as session:
                row = session.execute(
                    select(cast(column, Text), generation_column).where(ViewerSession.token == bad.token)
                ).first()
                if row is None:
                    return None
                text, generation = row
                document, problem = document_problem(text)
                if problem is None:
                    return None
                if document is None and text is not None:  # not JSON at all
                    fixed, removed = json.loads(json.dumps(EMPTY[bad.part])), ["(the whole document: not JSON)"]
                else:
                    fixed, removed = sanitized(document, bad.part)
                session.add(QuarantinedDocument(kind=bad.kind, ref=bad.token, document=text or "", reason=problem))
                new_generation = _server_generation()
                result = session.execute(
                    update(ViewerSession)
                    .where(ViewerSession.token == bad.token, generation_column == generation)
                    .values({column: fixed, generation_column: new_generation, ViewerSession.updated_at: utcnow()})
                )
                if result.rowcount != 1:
                    raise _Moved
                return Repair(new_generation, removed)
        except _Moved:
            continue
    raise StaleGeneration(f"viewer session {bad.token[:6]}… kept changing during its repair; run the repair again")
