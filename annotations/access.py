"""Who may do what: the one policy module.

Every request resolves one ``Actor`` (anonymous, an account signed in with a cookie, or an account
using an API token). ``require`` answers "may this actor do this to this dataset" and raises:

- ``DatasetNotFound`` when the actor may not even read the dataset: a private dataset does not
  exist for outsiders, with the same message as one that really does not exist;
- ``NotAuthenticated`` when the actor is anonymous and signing in could help;
- ``Forbidden`` when the actor is known and may read the dataset but not do this.

``visible_clause`` is the same rule as a SQL filter, for listings. No Tornado here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, delete, exists, false, or_, select, true
from sqlalchemy.orm import Session, sessionmaker

from annotations.errors import AccountNotFound, DatasetNotFound, Forbidden, InvalidAccess, NotAuthenticated
from annotations.models import Account, Dataset, Membership

MAX_ID = 2**31 - 1
_CANONICAL_ID = re.compile(r"(?:0|[1-9][0-9]{0,9})", re.ASCII)


class AccountRole(StrEnum):
    """An account's role on the whole server."""

    ADMIN = "admin"  # everything
    CURATOR = "curator"  # may also create datasets, and is their curator
    ANNOTATOR = "annotator"  # reads public datasets and those it is a member of


class DatasetRole(StrEnum):
    """An account's role on one dataset (a membership)."""

    VIEWER = "viewer"
    ANNOTATOR = "annotator"
    CURATOR = "curator"


class Action(StrEnum):
    """What a request does. Dataset actions need a dataset; the others are server-wide."""

    READ = "read"  # see the dataset: pages, JSON, pixels, transforms, sessions
    ANNOTATE = "annotate"  # add and change own annotations
    CURATE = "curate"  # change metadata, transforms, reference image, members, visibility
    ANYONE = "anyone"  # server-wide: no account needed
    SIGNED_IN = "signed_in"  # server-wide: any account
    CREATE_DATASETS = "create_datasets"  # server-wide: curators and admins
    MANAGE_ACCOUNTS = "manage_accounts"  # server-wide: admins


DATASET_ACTIONS = frozenset({Action.READ, Action.ANNOTATE, Action.CURATE})
MEMBER_RIGHTS: dict[str, frozenset[Action]] = {
    DatasetRole.VIEWER: frozenset({Action.READ}),
    DatasetRole.ANNOTATOR: frozenset({Action.READ, Action.ANNOTATE}),
    DatasetRole.CURATOR: frozenset({Action.READ, Action.ANNOTATE, Action.CURATE}),
}
VISIBILITIES = ("public", "private")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is asking. ``via``: no credential, a sign-in cookie, a bearer token, or a viewer session (its owner)."""

    account_id: int | None = None
    name: str | None = None
    role: str | None = None
    via: Literal["anonymous", "cookie", "token", "session"] = "anonymous"

    @property
    def signed_in(self) -> bool:
        return self.account_id is not None

    @property
    def is_admin(self) -> bool:
        return self.role == AccountRole.ADMIN


ANONYMOUS = Actor()


@dataclass(frozen=True, slots=True)
class DatasetAccess:
    """What the policy needs to know of one dataset for one actor."""

    id: int
    name: str
    visibility: str
    release_date: date | None
    member_role: str | None  # the actor's membership, if any

    def public(self, today: date | None = None) -> bool:
        return is_public(self.visibility, self.release_date, today)


def today_utc() -> date:
    return datetime.now(UTC).date()


def is_public(visibility: str, release_date: date | None, today: date | None = None) -> bool:
    """Public datasets, and private ones whose release date has come (UTC), are readable by anyone."""
    if visibility == "public":
        return True
    return release_date is not None and release_date <= (today or today_utc())


def dataset_rights(actor: Actor, access: DatasetAccess, today: date | None = None) -> frozenset[Action]:
    if actor.is_admin:
        return DATASET_ACTIONS
    rights: frozenset[Action] = frozenset()
    if access.public(today):
        rights |= {Action.READ}
    if actor.signed_in and access.member_role is not None:
        rights |= MEMBER_RIGHTS.get(access.member_role, frozenset())
    return rights


def may(actor: Actor, action: Action, access: DatasetAccess | None = None) -> bool:
    try:
        require(actor, action, access)
    except (DatasetNotFound, NotAuthenticated, Forbidden):
        return False
    return True


def require(actor: Actor, action: Action, access: DatasetAccess | None = None) -> None:
    """Return if ``actor`` may do ``action`` (to ``access``'s dataset for dataset actions), else raise."""
    if action is Action.READ and access is not None and access.visibility == "public":
        return  # anyone reads a public dataset (every chunk request asks this)
    if action not in DATASET_ACTIONS:
        _require_server_wide(actor, action)
        return
    if access is None:
        raise ValueError(f"{action} needs a dataset")
    rights = dataset_rights(actor, access)
    if action in rights:
        return
    if Action.READ not in rights:
        raise not_found(access.name)
    if not actor.signed_in:
        raise NotAuthenticated(f"sign in to {action} dataset {access.name!r}")
    raise Forbidden(f"{actor.name!r} may not {action} dataset {access.name!r}")


def require_maker_or_curator(actor: Actor, access: DatasetAccess, maker: int | None) -> None:
    """Return if ``actor`` may change something ``maker`` (an account id) made in the dataset: its maker
    while they may annotate there, anyone who curates it; else raise as ``require`` does."""
    if maker is not None and maker == actor.account_id and may(actor, Action.ANNOTATE, access):
        return
    require(actor, Action.CURATE, access)


def _require_server_wide(actor: Actor, action: Action) -> None:
    if action == Action.ANYONE:
        return
    if not actor.signed_in:
        raise NotAuthenticated("sign in first (a browser sign-in, or an API token as 'Authorization: Bearer …')")
    if action == Action.SIGNED_IN or actor.is_admin:
        return
    if action == Action.CREATE_DATASETS and actor.role == AccountRole.CURATOR:
        return
    raise Forbidden(f"{actor.name!r} ({actor.role}) may not {action.replace('_', ' ')}")


def not_found(ref: str | int) -> DatasetNotFound:
    """The one message for a dataset that does not exist and for one the actor may not see."""
    return DatasetNotFound(f"no dataset {str(ref)!r}")


def visible_clause(actor: Actor, today: date | None = None) -> ColumnElement[bool]:
    """SQL: the datasets ``actor`` may read (the same rule as ``require(actor, Action.READ, …)``)."""
    if actor.is_admin:
        return true()
    today = today or today_utc()
    public = or_(
        Dataset.visibility == "public",
        and_(Dataset.release_date.is_not(None), Dataset.release_date <= today),
    )
    if not actor.signed_in:
        return public
    member = exists().where(Membership.dataset_id == Dataset.id, Membership.account_id == actor.account_id)
    return or_(public, member)


def dataset_where(ref: str | int) -> ColumnElement[bool]:
    """SQL: the dataset named by ``ref`` (its id in canonical decimal, or its name)."""
    text = str(ref)
    if text[:1].isdigit():  # names start with a letter
        if _CANONICAL_ID.fullmatch(text) is None or int(text) > MAX_ID:
            return false()
        return Dataset.id == int(text)
    return Dataset.name == text


def check_role(role: str, roles: type[StrEnum]) -> str:
    values = [r.value for r in roles]
    if role not in values:
        raise InvalidAccess(f"unknown role {role!r}; choose one of {', '.join(values)}")
    return role


def check_visibility(visibility: str) -> str:
    if visibility not in VISIBILITIES:
        raise InvalidAccess(f"unknown visibility {visibility!r}; choose public or private")
    return visibility


def parse_release_date(text: str | None) -> date | None:
    """``YYYY-MM-DD`` (or None); anything else is InvalidAccess."""
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text, re.ASCII):
        raise InvalidAccess(f"release date {text!r} is not YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidAccess(f"release date {text!r} is not a real day") from None


class MemberRecord(BaseModel):
    account: str
    role: str


class AccessRecord(BaseModel):
    """A dataset's visibility as stored and as it is today."""

    dataset: str
    visibility: str
    release_date: date | None
    public: bool


class Access:
    """Dataset access facts in the database: visibility, release dates and memberships."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def dataset_access(self, actor: Actor, ref: str | int) -> DatasetAccess:
        """The facts ``require`` needs about dataset ``ref`` for ``actor``; DatasetNotFound if absent."""
        with self.sessions() as session:
            row = session.execute(
                select(Dataset.id, Dataset.name, Dataset.visibility, Dataset.release_date).where(dataset_where(ref))
            ).first()
            if row is None:
                raise not_found(ref)
            role = None
            if actor.account_id is not None:
                role = session.scalar(
                    select(Membership.role).where(
                        Membership.dataset_id == row.id, Membership.account_id == actor.account_id
                    )
                )
            return DatasetAccess(row.id, row.name, row.visibility, row.release_date, role)

    def set_visibility(self, ref: str | int, visibility: str, release_date: date | None = None) -> AccessRecord:
        """Make a dataset public or private; a private one may carry the day it becomes public."""
        check_visibility(visibility)
        if visibility == "public" and release_date is not None:
            raise InvalidAccess("a release date is for private datasets (they become public on that day)")
        with self.sessions.begin() as session:
            dataset = session.scalars(select(Dataset).where(dataset_where(ref))).first()
            if dataset is None:
                raise not_found(ref)
            dataset.visibility = visibility
            dataset.release_date = release_date
            return AccessRecord(dataset=dataset.name, visibility=visibility, release_date=release_date,
                                public=is_public(visibility, release_date))

    def members(self, ref: str | int) -> list[MemberRecord]:
        with self.sessions() as session:
            dataset_id = self._dataset_id(session, ref)
            rows = session.execute(
                select(Account.name, Membership.role)
                .join(Account, Account.id == Membership.account_id)
                .where(Membership.dataset_id == dataset_id)
                .order_by(Account.name)
            )
            return [MemberRecord(account=name, role=role) for name, role in rows]

    def set_member(self, ref: str | int, account_name: str, role: str) -> MemberRecord:
        """Give ``account_name`` ``role`` on the dataset (replacing any role it had there)."""
        check_role(role, DatasetRole)
        with self.sessions.begin() as session:
            dataset_id = self._dataset_id(session, ref)
            account = self._account(session, account_name)
            membership = session.get(Membership, (dataset_id, account.id))
            if membership is None:
                session.add(Membership(dataset_id=dataset_id, account_id=account.id, role=role))
            else:
                membership.role = role
        return MemberRecord(account=account_name, role=role)

    def remove_member(self, ref: str | int, account_name: str) -> bool:
        """Remove the account's membership; False if it had none."""
        with self.sessions.begin() as session:
            dataset_id = self._dataset_id(session, ref)
            account = self._account(session, account_name)
            result = session.execute(
                delete(Membership).where(Membership.dataset_id == dataset_id, Membership.account_id == account.id)
            )
            return bool(result.rowcount)

    @staticmethod
    def _dataset_id(session: Session, ref: str | int) -> int:
        dataset_id = session.scalar(select(Dataset.id).where(dataset_where(ref)))
        if dataset_id is None:
            raise not_found(ref)
        return dataset_id

    @staticmethod
    def _account(session: Session, name: str) -> Account:
        account = session.scalars(select(Account).where(Account.name == name)).first()
        if account is None:
            raise AccountNotFound(f"no account {name!r}")
        return account
