"""Who is asking, and may they: one actor per request, and the route's rule applied to it.

Credentials and access facts are looked up in the database and kept per process for at most
``ACCESS_CACHE_SECONDS``: a revoked token, a disabled account, an ended sign-in, a membership or
visibility change reaches every server process within that time. The caches are bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from tornado.httputil import HTTPServerRequest

from annotations.access import ANONYMOUS, Action, Actor, DatasetAccess, require
from annotations.accounts import Accounts, Credential
from annotations.errors import DatasetNotFound, NotAuthenticated, SessionNotFound, SharedViewNotFound

ACCESS_CACHE_SECONDS = 5.0
CACHE_ENTRIES = 20_000
SIGN_IN_COOKIE = "lamella_signin"
T = TypeVar("T")
Call = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class SessionAccess:
    """A viewer session's owner and, when it shows one, its dataset."""

    token: str
    owner: Actor
    dataset: DatasetAccess | None


class _Cache:
    """A bounded cache whose entries last ``ttl`` seconds, that also remembers refusals (so a bad token costs
    one lookup per period). Each entry carries its own deadline, so a hit is one dict look-up and one clock read
    (a chunk request makes one or two). When full, the entry stored longest ago goes: every entry is reloaded
    within ``ttl``, so that is also the one nearest to expiry."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[Any, tuple[float, bool, Any]] = {}
        self._loading: dict[Any, asyncio.Future[tuple[float, bool, Any]]] = {}
        self._generation = 0  # ``clear`` counts up: a load begun before it is not kept

    def _found(self, key: Any) -> tuple[float, bool, Any] | None:
        found = self._entries.get(key)
        if found is not None and found[0] <= time.monotonic():
            return None
        return found

    def _store(self, key: Any, found: tuple[float, bool, Any]) -> None:
        entries = self._entries
        entries.pop(key, None)  # stored again: it goes to the end of the order
        while len(entries) >= CACHE_ENTRIES:
            del entries[next(iter(entries))]
        entries[key] = found

    def peek(self, key: Any) -> Any:
        """The cached value (raising a cached refusal), or None when not cached."""
        found = self._found(key)
        if found is None:
            return None
        _, ok, value = found
        if not ok:
            raise value
        return value

    async def get(self, key: Any, load: Callable[[], Awaitable[T]], remember: tuple[type[Exception], ...]) -> T:
        """The cached value, else ``load()``'s (one load per key at a time: requests that miss while it runs
        wait for it instead of each asking the database)."""
        found = self._found(key)
        if found is None:
            loading = self._loading.get(key)
            if loading is None:
                loading = self._loading[key] = asyncio.ensure_future(self._load(key, load, remember))
                loading.add_done_callback(_retrieved)  # a failure nobody waits for any more is not logged as lost
            found = await asyncio.shield(loading)
        _, ok, value = found
        if not ok:
            raise value
        return value

    async def _load(self, key: Any, load: Callable[[], Awaitable[Any]], remember: tuple[type[Exception], ...]
                    ) -> tuple[float, bool, Any]:
        generation = self._generation
        deadline = time.monotonic() + self.ttl  # from before the look-up: never older than ``ttl``
        try:
            found = (deadline, True, await load())
        except remember as error:
            found = (deadline, False, error)
        finally:
            if self._generation == generation:
                self._loading.pop(key, None)
        if self._generation == generation:  # not cleared meanwhile (what it read may predate the change)
            self._store(key, found)
        return found

    def clear(self) -> None:
        self._entries.clear()
        self._loading.clear()
        self._generation += 1


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class Identity:
    """Resolves each request's actor and checks it against route rules (cached per process)."""

    def __init__(self, accounts: Accounts, access: Any, viewer_sessions: Any, call: Call,
                 ttl: float = ACCESS_CACHE_SECONDS, shared_views: Any = None) -> None:
        self.accounts = accounts
        self.access = access
        self.viewer_sessions = viewer_sessions
        self.shared_views = shared_views
        self.call = call
        self.ttl = ttl
        self._credentials = _Cache(ttl)
        self._datasets = _Cache(ttl)
        self._sessions = _Cache(ttl)
        self._owners = _Cache(ttl)
        self._shared = _Cache(ttl)

    def known_actor(self, request: HTTPServerRequest) -> Actor | None:
        """The actor without a database lookup or a coroutine, when that is possible: no credential, or a bearer
        token whose account is cached (the hot path of every chunk request). None: ask ``actor``."""
        headers = request.headers  # ``in`` first: a missing header costs ``get`` a raised KeyError
        if "Authorization" not in headers:
            # The cookies are parsed only when the header may hold the sign-in one.
            return None if "Cookie" in headers and SIGN_IN_COOKIE in headers["Cookie"] \
                and SIGN_IN_COOKIE in request.cookies else ANONYMOUS
        key = _token_key(headers["Authorization"])
        credential: Credential | None = None if key is None else self._credentials.peek(key)
        if credential is None or (credential.expires_at is not None and credential.expires_at <= datetime.now(UTC)):
            return None
        return credential.actor

    def known_dataset(self, actor: Actor, action: Action, ref: str) -> DatasetAccess | None:
        """``dataset`` from the cache alone (None when not cached): no coroutine on the hot path."""
        access = self._datasets.peek((ref, actor.account_id))
        if access is not None:
            require(actor, action, access)
        return access

    async def actor(self, request: HTTPServerRequest, cookie_secret: str | None) -> Actor:
        """The request's actor: a bearer token's account, a signed-in browser's account, or anonymous.

        A malformed, unknown, revoked or expired token is NotAuthenticated (scripts should fail
        loudly); an ended browser sign-in is simply anonymous (public pages keep working).
        """
        header = request.headers.get("Authorization")
        if header is not None:
            key = _token_key(header)
            if key is None:
                raise NotAuthenticated("the Authorization header must be 'Bearer <API token>'")
            secret = header.strip().partition(" ")[2].strip()
            return await self._credential(key, lambda: self.call(self.accounts.token_actor, secret))
        secret = signed_cookie(request, cookie_secret)
        if secret is None:
            return ANONYMOUS
        key = ("cookie", hashlib.sha256(secret.encode()).hexdigest())
        try:
            return await self._credential(key, lambda: self.call(self.accounts.web_session_actor, secret))
        except NotAuthenticated:
            return ANONYMOUS

    async def _credential(self, key: Any, load: Callable[[], Awaitable[Credential]]) -> Actor:
        credential: Credential = await self._credentials.get(key, load, (NotAuthenticated,))
        if credential.expires_at is not None and credential.expires_at <= datetime.now(UTC):
            raise NotAuthenticated("this credential has expired")
        return credential.actor

    async def dataset(self, actor: Actor, action: Action, ref: str | int) -> DatasetAccess:
        """The dataset's access facts once ``actor`` may do ``action`` to it (else the policy's error)."""
        access: DatasetAccess = await self._datasets.get(
            (str(ref), actor.account_id), lambda: self.call(self.access.dataset_access, actor, ref), (DatasetNotFound,)
        )
        require(actor, action, access)
        return access

    async def session(self, token: str, action: Action) -> SessionAccess:
        """A viewer session's owner and dataset once the owner may do ``action`` there.

        The unguessable token is the credential; the session acts with its owner's current rights.
        A session whose owner may no longer read its dataset, or whose owner is disabled, is not found.
        """
        dataset_id, account_id = await self._sessions.get(
            token, lambda: self.call(self.viewer_sessions.owner, token), (SessionNotFound,)
        )
        owner = ANONYMOUS
        if account_id is not None:
            found = await self._owners.get(account_id, lambda: self.call(self.accounts.actor_by_id, account_id), ())
            if found is None:
                raise SessionNotFound(f"no viewer session {token!r}")
            owner = found
        if dataset_id is None:
            return SessionAccess(token, owner, None)
        try:
            access = await self.dataset(owner, action, dataset_id)
        except DatasetNotFound:
            raise SessionNotFound(f"no viewer session {token!r}") from None
        return SessionAccess(token, owner, access)

    async def shared_view(self, actor: Actor, action: Action, code: str) -> DatasetAccess:
        """The dataset of a shared view once ``actor`` may do ``action`` to it. A view of a dataset the actor
        may not read is not found, as one that does not exist (the code confirms nothing)."""
        dataset_id = await self._shared.get(code, lambda: self.call(self.shared_views.dataset_of, code),
                                            (SharedViewNotFound,))
        try:
            return await self.dataset(actor, action, dataset_id)
        except DatasetNotFound:
            raise SharedViewNotFound(f"no shared view {code!r}") from None

    def forget(self) -> None:
        """Drop every cached decision of this process (after a change made through it)."""
        for cache in (self._credentials, self._datasets, self._sessions, self._owners, self._shared):
            cache.clear()


def _token_key(header: str) -> tuple[str, str] | None:
    """The credential cache's key of an ``Authorization: Bearer …`` header (None: not that form)."""
    scheme, _, secret = header.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        return None
    return "token", hashlib.sha256(secret.encode(errors="replace")).hexdigest()


def signed_cookie(request: HTTPServerRequest, cookie_secret: str | None) -> str | None:
    """The sign-in secret from a validly signed cookie, else None."""
    from tornado.web import decode_signed_value

    morsel = request.cookies.get(SIGN_IN_COOKIE)
    if morsel is None or not cookie_secret:
        return None
    value = decode_signed_value(cookie_secret, SIGN_IN_COOKIE, morsel.value, max_age_days=31)
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None
