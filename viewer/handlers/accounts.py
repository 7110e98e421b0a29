"""Who is asking: the signed-in account, browser sign-in and sign-out, and API tokens."""

from __future__ import annotations

import asyncio
from datetime import datetime

from pydantic import BaseModel

from annotations.accounts import SIGN_IN_DAYS, AccountRecord, TokenRecord
from viewer.apidoc import op
from viewer.bodies import Integer, Text
from viewer.handlers.base import BaseHandler
from viewer.identity import SIGN_IN_COOKIE


class SignInBody(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"name": "curie", "password": "correct horse battery"}]}}

    name: Text(64, min_length=1)  # type: ignore[valid-type]
    password: Text(1024, min_length=1)  # type: ignore[valid-type]


class NewTokenBody(BaseModel):
    model_config = {"json_schema_extra": {"examples": [{"label": "nightly export", "expires_days": 90}]}}

    label: Text(200) = ""  # type: ignore[valid-type]
    expires_days: Integer(1, 3650) | None = None  # type: ignore[valid-type]


class MeOut(BaseModel):
    signed_in: bool
    name: str | None
    role: str | None
    via: str  # anonymous | cookie | token


class AccountOut(BaseModel):
    name: str
    role: str
    email: str | None
    disabled: bool
    created_at: datetime


class AccountsOut(BaseModel):
    accounts: list[AccountOut]


class TokenOut(BaseModel):
    id: int
    account: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewTokenOut(TokenOut):
    token: str  # the secret: shown this once, stored only as a hash


class TokensOut(BaseModel):
    tokens: list[TokenOut]


def account_json(account: AccountRecord) -> AccountOut:
    return AccountOut.model_validate(account.model_dump())


def token_json(token: TokenRecord) -> TokenOut:
    return TokenOut.model_validate(token.model_dump())


class MeHandler(BaseHandler):
    """GET who the request is made as (for the page header and scripts)."""

    @op(summary="Who the request is made as", response=MeOut)
    async def get(self) -> None:
        actor = self.actor
        self.set_header("Cache-Control", "no-store")
        self.write_json(MeOut(signed_in=actor.signed_in, name=actor.name, role=actor.role, via=actor.via))


class SignInHandler(BaseHandler):
    """POST {"name", "password"}: a browser sign-in (a signed, HttpOnly, SameSite=Lax cookie).

    Failed attempts are counted per account and per address: from the 4th failure on an account
    (the 11th from an address) within 15 minutes each attempt waits 1, 2, 4 … 8 s, and from the
    10th (the 30th) attempts are refused with 429 until the window has passed.
    """

    @op(summary="Browser sign-in: sets the sign-in cookie (send the _xsrf cookie's value as X-XSRFToken)",
        body=SignInBody, response=AccountOut)
    async def post(self) -> None:
        body: SignInBody = await self.parse_body()
        accounts = self.services.accounts
        name, address = body.name.strip().lower(), self.request.remote_ip or "unknown"
        delay = await self.services.call(accounts.check_throttle, name, address)
        if delay:
            await asyncio.sleep(delay)
        account = await self.services.call(accounts.authenticate, name, body.password, address)
        secret = await self.services.call(accounts.open_web_session, account.id)
        self.set_signed_cookie(SIGN_IN_COOKIE, secret, expires_days=SIGN_IN_DAYS, httponly=True, samesite="Lax",
                               secure=self.request.protocol == "https", path="/")
        self.write_json(account_json(account))


class SignOutHandler(BaseHandler):
    """POST: end this browser's sign-in (the cookie, and its record in the database)."""

    @op(summary="End this browser's sign-in", status=204)
    async def post(self) -> None:
        from viewer.identity import signed_cookie

        secret = signed_cookie(self.request, self.settings.get("cookie_secret"))
        if secret is not None:
            await self.services.call(self.services.accounts.close_web_session, secret)
        self.clear_cookie(SIGN_IN_COOKIE, path="/")
        self.set_status(204)
        self.finish()


class TokensHandler(BaseHandler):
    """GET the actor's API tokens; POST {"label", "expires_days"} a new one (its secret is shown once)."""

    @op(summary="The actor's API tokens (never their secrets)", response=TokensOut)
    async def get(self) -> None:
        tokens = await self.services.call(self.services.accounts.tokens, self.actor.name)
        self.write_json(TokensOut(tokens=[token_json(t) for t in tokens]))

    @op(summary="A new API token for the actor; its secret is in this answer only", body=NewTokenBody,
        response=NewTokenOut, status=201)
    async def post(self) -> None:
        body: NewTokenBody = await self.parse_body()
        secret, record = await self.services.call(
            self.services.accounts.create_token, self.actor.name, label=body.label, expires_days=body.expires_days
        )
        self.set_header("Cache-Control", "no-store")
        self.write_json(NewTokenOut(**token_json(record).model_dump(), token=secret), 201)


class TokenHandler(BaseHandler):
    """DELETE one of the actor's API tokens (revoked at once; other processes within the access cache time)."""

    @op(summary="Revoke one of the actor's API tokens", response=TokenOut)
    async def delete(self, token_id: str) -> None:
        record = await self.services.call(self.services.accounts.revoke_token, int(token_id), owner=self.actor.name)
        self.services.identity.forget()
        self.write_json(token_json(record))


class AccountsHandler(BaseHandler):
    """GET every account (admins)."""

    @op(summary="Every account (admins)", response=AccountsOut)
    async def get(self) -> None:
        accounts = await self.services.call(self.services.accounts.list)
        self.write_json(AccountsOut(accounts=[account_json(a) for a in accounts]))
