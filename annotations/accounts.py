"""Accounts and their credentials: Argon2id passwords, API tokens, browser sign-ins, sign-in throttling.

Nothing here stores or logs a password or a token in clear: passwords are kept as Argon2id hashes
(argon2-cffi), API tokens and sign-in cookies as SHA-256 digests of 256-bit random secrets
(compared by digest lookup, so no secret-dependent comparison runs in Python). Verifying a password
costs about 0.1 s of CPU: callers run it off the event loop.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from annotations.access import AccountRole, Actor, check_role
from annotations.catalog import UtcDatetime, as_utc
from annotations.errors import (
    AccountNotFound,
    BadCredentials,
    InvalidAccess,
    NameTaken,
    NotAuthenticated,
    TokenNotFound,
    TooManyAttempts,
)
from annotations.models import Account, ApiToken, SignInFailure, WebSession, utcnow

if TYPE_CHECKING:
    from argon2 import PasswordHasher

ACCOUNT_NAME = re.compile(r"[a-z][a-z0-9_.\-]{0,63}", re.ASCII)
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
TOKEN_PREFIX = "lmt_"  # so that a leaked token is recognisable (secret scanners, logs)
TOKEN_TEXT = re.compile(r"lmt_[A-Za-z0-9_\-]{43}", re.ASCII)  # 32 random bytes, base64url
SIGN_IN_DAYS = 14
LAST_USED_RESOLUTION = timedelta(seconds=60)  # last_used_at is written at most this often per token


@dataclass(frozen=True, slots=True)
class ThrottleRules:
    """Failed sign-ins counted over ``window``, per account name and per client address.

    From ``slow_after`` failures on, each attempt waits 1, 2, 4 … seconds (at most ``max_delay``)
    before it is checked; from ``refuse_after`` failures on, attempts are refused (HTTP 429) until
    the oldest counted failure leaves the window. A successful sign-in clears the account's count.
    """

    window: timedelta = timedelta(minutes=15)
    account_slow_after: int = 3
    account_refuse_after: int = 10
    address_slow_after: int = 10
    address_refuse_after: int = 30
    max_delay: float = 8.0


THROTTLE = ThrottleRules()


class AccountRecord(BaseModel):
    id: int
    name: str
    email: str | None
    role: str
    disabled: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime

    def actor(self, via: str) -> Actor:
        return Actor(account_id=self.id, name=self.name, role=self.role, via=via)  # type: ignore[arg-type]


class TokenRecord(BaseModel):
    id: int
    account: str
    label: str
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
    last_used_at: UtcDatetime | None
    revoked_at: UtcDatetime | None


@dataclass(frozen=True, slots=True)
class Credential:
    """A resolved credential: the actor, and until when it may be trusted without asking again."""

    actor: Actor
    expires_at: datetime | None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_account_name(name: str) -> str:
    if not isinstance(name, str) or ACCOUNT_NAME.fullmatch(name) is None:
        raise InvalidAccess(
            f"account name {name!r} must start with a lowercase letter and use only a-z, 0-9, '.', '_' and '-'"
        )
    return name


def check_password(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidAccess(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def _hasher() -> PasswordHasher:
    from argon2 import PasswordHasher

    return PasswordHasher()  # Argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile)


def _record(row: Account) -> AccountRecord:
    return AccountRecord.model_validate(row, from_attributes=True)


def _token_record(row: ApiToken, account: str) -> TokenRecord:
    return TokenRecord(id=row.id, account=account, label=row.label, created_at=row.created_at,
                       expires_at=row.expires_at, last_used_at=row.last_used_at, revoked_at=row.revoked_at)


class Accounts:
    def __init__(self, sessions: sessionmaker[Session], throttle: ThrottleRules = THROTTLE) -> None:
        self.sessions = sessions
        self.throttle = throttle
        self._hasher: PasswordHasher | None = None
        self._dummy_hash: str | None = None

    @property
    def hasher(self) -> PasswordHasher:
        if self._hasher is None:
            self._hasher = _hasher()
            # Unknown accounts are checked against this, so they cost the same time as known ones.
            self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._hasher

    # Accounts

    def create(self, name: str, role: str, *, email: str | None = None, password: str | None = None) -> AccountRecord:
        check_account_name(name)
        check_role(role, AccountRole)
        if email is not None and (len(email) > 254 or EMAIL.fullmatch(email) is None):
            raise InvalidAccess(f"{email!r} is not an e-mail address")
        password_hash = self.hasher.hash(check_password(password)) if password is not None else None
        now = utcnow()
        try:
            with self.sessions.begin() as session:
                row = Account(name=name, role=role, email=email, password_hash=password_hash, disabled=False,
                              created_at=now, updated_at=now)
                session.add(row)
                session.flush()
                return _record(row)
        except IntegrityError:
            raise NameTaken(f"there is already an account {name!r}") from None

    def list(self) -> list[AccountRecord]:
        with self.sessions() as session:
            return [_record(row) for row in session.scalars(select(Account).order_by(Account.name))]

    def get(self, name: str) -> AccountRecord:
        with self.sessions() as session:
            return _record(self._find(session, name))

    def get_by_id(self, account_id: int) -> AccountRecord | None:
        with self.sessions() as session:
            row = session.get(Account, account_id)
            return None if row is None else _record(row)

    def set_disabled(self, name: str, disabled: bool = True) -> AccountRecord:
        """Disable (or enable) an account; a disabled account's sign-ins end and its tokens stop working."""
        with self.sessions.begin() as session:
            row = self._find(session, name)
            row.disabled = disabled
            row.updated_at = utcnow()
            if disabled:
                session.execute(delete(WebSession).where(WebSession.account_id == row.id))
            return _record(row)

    def set_password(self, name: str, password: str) -> None:
        password_hash = self.hasher.hash(check_password(password))
        with self.sessions.begin() as session:
            row = self._find(session, name)
            row.password_hash = password_hash
            row.updated_at = utcnow()
            session.execute(delete(WebSession).where(WebSession.account_id == row.id))

    @staticmethod
    def _find(session: Session, name: str) -> Account:
        row = session.scalars(select(Account).where(Account.name == name)).first()
        if row is None:
            raise AccountNotFound(f"no account {name!r}")
        return row

    # Passwords and throttling

    def check_throttle(self, name: str, address: str) -> float:
        """Seconds to wait before checking this attempt; raises TooManyAttempts when refused outright."""
        rules = self.throttle
        now = utcnow()
        since = now - rules.window
        with self.sessions() as session:
            delay = 0.0
            for subject, slow_after, refuse_after in (
                (f"account:{name[:200]}", rules.account_slow_after, rules.account_refuse_after),
                (f"address:{address[:200]}", rules.address_slow_after, rules.address_refuse_after),
            ):
                count, oldest = session.execute(
                    select(func.count(), func.min(SignInFailure.failed_at)).where(
                        SignInFailure.subject == subject, SignInFailure.failed_at >= since
                    )
                ).one()
                if count >= refuse_after:
                    retry = (as_utc(oldest) + rules.window - now).total_seconds()
                    raise TooManyAttempts("too many failed sign-ins; try again later", max(1.0, retry))
                if count >= slow_after:
                    delay = max(delay, min(rules.max_delay, 2.0 ** (count - slow_after)))
            return delay

    def authenticate(self, name: str, password: str, address: str) -> AccountRecord:
        """The account if ``password`` is its password and it is enabled; else BadCredentials (and a failure
        is counted). Costs one Argon2id verification either way."""
        from argon2.exceptions import InvalidHashError, VerificationError

        with self.sessions() as session:
            row = session.scalars(select(Account).where(Account.name == name)).first() if name else None
            stored = row.password_hash if row is not None else None
        hasher = self.hasher
        try:
            hasher.verify(stored or self._dummy_hash, password)  # type: ignore[arg-type]
            ok = stored is not None and row is not None and not row.disabled
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None:
            self._record_failure(name, address)
            raise BadCredentials("unknown account, wrong password or disabled account")
        with self.sessions.begin() as session:
            session.execute(delete(SignInFailure).where(SignInFailure.subject == f"account:{name[:200]}"))
            if hasher.check_needs_rehash(stored):  # type: ignore[arg-type]
                session.execute(update(Account).where(Account.id == row.id)
                                .values(password_hash=hasher.hash(password)))
        return _record(row)

    def _record_failure(self, name: str, address: str) -> None:
        now = utcnow()
        with self.sessions.begin() as session:
            session.execute(delete(SignInFailure).where(SignInFailure.failed_at < now - self.throttle.window))
            session.add_all([SignInFailure(subject=f"account:{name[:200]}", failed_at=now),
                             SignInFailure(subject=f"address:{address[:200]}", failed_at=now)])

    # Browser sign-ins

    def open_web_session(self, account_id: int, days: int = SIGN_IN_DAYS) -> str:
        """A new sign-in for the account; returns the secret the cookie carries."""
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        with self.sessions.begin() as session:
            session.execute(delete(WebSession).where(WebSession.expires_at < now))
            session.add(WebSession(secret_hash=digest(secret), account_id=account_id, created_at=now,
                                   expires_at=now + timedelta(days=days)))
        return secret

    def close_web_session(self, secret: str) -> None:
        with self.sessions.begin() as session:
            session.execute(delete(WebSession).where(WebSession.secret_hash == digest(secret)))

    def web_session_actor(self, secret: str) -> Credential:
        """The account behind a sign-in cookie; NotAuthenticated if it ended, expired or is disabled."""
        with self.sessions() as session:
            row = session.execute(
                select(Account, WebSession.expires_at)
                .join(WebSession, WebSession.account_id == Account.id)
                .where(WebSession.secret_hash == digest(secret))
            ).first()
            if row is None:
                raise NotAuthenticated("this sign-in has ended; sign in again")
            account, expires_at = row
            expires_at = as_utc(expires_at)
            if expires_at <= utcnow() or account.disabled:
                raise NotAuthenticated("this sign-in has ended; sign in again")
            return Credential(_record(account).actor("cookie"), expires_at)

    # API tokens

    def create_token(self, name: str, *, label: str = "", expires_days: int | None = None) -> tuple[str, TokenRecord]:
        """A new token for account ``name``: (the secret, shown once; its record)."""
        if expires_days is not None and not 1 <= expires_days <= 3650:
            raise InvalidAccess("a token expires after 1 to 3650 days")
        if len(label) > 200:
            raise InvalidAccess("a token label has at most 200 characters")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        with self.sessions.begin() as session:
            account = self._find(session, name)
            if account.disabled:
                raise InvalidAccess(f"account {name!r} is disabled")
            row = ApiToken(account_id=account.id, token_hash=digest(secret), label=label, created_at=now,
                           expires_at=now + timedelta(days=expires_days) if expires_days else None)
            session.add(row)
            session.flush()
            return secret, _token_record(row, name)

    def tokens(self, name: str | None = None) -> list[TokenRecord]:
        """Tokens of one account (or of all), newest first."""
        with self.sessions() as session:
            query = select(ApiToken, Account.name).join(Account, Account.id == ApiToken.account_id)
            if name is not None:
                query = query.where(Account.name == name)
            return [_token_record(row, account) for row, account in session.execute(query.order_by(ApiToken.id.desc()))]

    def revoke_token(self, token_id: int, *, owner: str | None = None) -> TokenRecord:
        """Revoke a token (only one of ``owner``'s when given); TokenNotFound otherwise."""
        with self.sessions.begin() as session:
            found = session.execute(
                select(ApiToken, Account.name).join(Account, Account.id == ApiToken.account_id)
                .where(ApiToken.id == token_id if 0 < token_id <= 2**31 - 1 else ApiToken.id.is_(None))
            ).first()
            if found is None or (owner is not None and found[1] != owner):
                raise TokenNotFound(f"no token {token_id}")
            row, account = found
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _token_record(row, account)

    def token_actor(self, secret: str) -> Credential:
        """The account behind a bearer token; NotAuthenticated if malformed, unknown, revoked, expired or
        its account is disabled."""
        if TOKEN_TEXT.fullmatch(secret) is None:
            raise NotAuthenticated("malformed API token")
        now = utcnow()
        with self.sessions() as session:
            row = session.execute(
                select(ApiToken, Account).join(Account, Account.id == ApiToken.account_id)
                .where(ApiToken.token_hash == digest(secret))
            ).first()
            if row is None:
                raise NotAuthenticated("unknown API token")
            token, account = row
            expires_at = as_utc(token.expires_at) if token.expires_at else None
            if token.revoked_at is not None:
                raise NotAuthenticated("this API token was revoked")
            if expires_at is not None and expires_at <= now:
                raise NotAuthenticated("this API token has expired")
            if account.disabled:
                raise NotAuthenticated("this API token's account is disabled")
            actor = _record(account).actor("token")
            stale = token.last_used_at is None or as_utc(token.last_used_at) < now - LAST_USED_RESOLUTION
            token_id = token.id
        if stale:
            with self.sessions.begin() as session:
                session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
        return Credential(actor, expires_at)

    def actor_by_id(self, account_id: int) -> Actor | None:
        """The current actor of an account (None if it no longer exists or is disabled)."""
        record = self.get_by_id(account_id)
        if record is None or record.disabled:
            return None
        return record.actor("session")
