"""``lamella user``, ``token``, ``member`` and ``visibility``: accounts, API tokens and who may see what.

These run as the machine's operator (whoever can read the data directory or the database URL).
"""

from __future__ import annotations

import sys
from datetime import date
from typing import TYPE_CHECKING, Any

import click

from viewer.cli_base import fail, open_sessions, with_common
from viewer.config import Settings

if TYPE_CHECKING:
    from annotations.catalog import NewDataset


def _accounts(options: dict[str, Any]) -> Any:
    from annotations.accounts import Accounts

    return Accounts(open_sessions(Settings.from_env(**options)))


def _access(options: dict[str, Any]) -> Any:
    from annotations.access import Access

    return Access(open_sessions(Settings.from_env(**options)))


def _read_password() -> str:
    """The password on standard input (its first line), for scripts: never an argument, which others could see."""
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    if not password:
        fail("no password on standard input")
    return password


def _release(_ctx: click.Context, _param: click.Parameter, text: str | None) -> date | None:
    from annotations.access import parse_release_date
    from annotations.errors import InvalidAccess

    try:
        return parse_release_date(text)
    except InvalidAccess as error:
        fail(str(error))


@click.group()
def user() -> None:
    """Accounts: add, list, disable, enable, set a password."""


@user.command("add")
@with_common
@click.argument("name")
@click.option("--role", required=True, metavar="admin|curator|annotator",
              help="admin, curator (may also create datasets) or annotator.")
@click.option("--email", default=None, help="E-mail address (optional).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def user_add(name: str, role: str, email: str | None, password_stdin: bool, **options: Any) -> None:
    """Add an account (without --password-stdin it can only use API tokens)."""
    password = _read_password() if password_stdin else None
    account = _accounts(options).create(name, role, email=email, password=password)
    click.echo(f"added {account.role} {account.name!r}" + ("" if password else " (no password: tokens only)"))


@user.command("list")
@with_common
def user_list(**options: Any) -> None:
    """List the accounts: name, role, state, e-mail, created."""
    for account in _accounts(options).list():
        state = "disabled" if account.disabled else "active"
        click.echo(f"{account.name}\t{account.role}\t{state}\t{account.email or ''}\t"
                   f"{account.created_at:%Y-%m-%d}")


@user.command("disable")
@with_common
@click.argument("name")
def user_disable(name: str, **options: Any) -> None:
    """Disable an account: its sign-ins end and its tokens stop working."""
    _accounts(options).set_disabled(name, True)
    click.echo(f"disabled {name!r}")


@user.command("enable")
@with_common
@click.argument("name")
def user_enable(name: str, **options: Any) -> None:
    """Enable a disabled account again (its old tokens work again unless revoked or expired)."""
    _accounts(options).set_disabled(name, False)
    click.echo(f"enabled {name!r}")


@user.command("password")
@with_common
@click.argument("name")
def user_password(name: str, **options: Any) -> None:
    """Set an account's password from the first line of standard input (ends its browser sign-ins)."""
    _accounts(options).set_password(name, _read_password())
    click.echo(f"password of {name!r} set")


@click.group()
def token() -> None:
    """API tokens for scripts: create, list, revoke."""


@token.command("create")
@with_common
@click.argument("name")
@click.option("--label", default="", help="What the token is for.")
@click.option("--expires-days", type=int, default=None, help="Days until it expires [default: never].")
def token_create(name: str, label: str, expires_days: int | None, **options: Any) -> None:
    """Create a token for account NAME; the token alone is the last line of the output (shown once)."""
    secret, record = _accounts(options).create_token(name, label=label, expires_days=expires_days)
    expiry = f", expires {record.expires_at:%Y-%m-%d}" if record.expires_at else ""
    click.echo(f"token {record.id} for {name!r}{expiry}; keep it secret, it is not shown again:")
    click.echo(secret)


@token.command("list")
@with_common
@click.argument("name", required=False)
def token_list(name: str | None, **options: Any) -> None:
    """List tokens (of account NAME, or all): id, account, label, created, expires, last used, state."""
    for record in _accounts(options).tokens(name):
        state = "revoked" if record.revoked_at else "active"
        when = "%Y-%m-%d %H:%M"
        click.echo("\t".join([
            str(record.id), record.account, record.label, f"{record.created_at:{when}}",
            f"{record.expires_at:{when}}" if record.expires_at else "never",
            f"{record.last_used_at:{when}}" if record.last_used_at else "unused", state,
        ]))


@token.command("revoke")
@with_common
@click.argument("token_id", type=click.IntRange(1, 2**31 - 1))
def token_revoke(token_id: int, **options: Any) -> None:
    """Revoke token TOKEN_ID (see ``lamella token list``)."""
    record = _accounts(options).revoke_token(token_id)
    click.echo(f"revoked token {record.id} of {record.account!r}")


@click.command()
@with_common
@click.argument("dataset")
@click.argument("visibility", metavar="public|private")
@click.option("--release", default=None, callback=_release, metavar="YYYY-MM-DD",
              help="With private: the day (UTC) it becomes public without anyone acting.")
def visibility(dataset: str, visibility: str, release: date | None, **options: Any) -> None:
    """Make DATASET public or private (a private dataset is invisible to all but its members and admins)."""
    record = _access(options).set_visibility(dataset, visibility, release)
    when = f", public from {record.release_date}" if record.release_date else ""
    click.echo(f"dataset {record.dataset!r} is {record.visibility}{when}")


@click.group()
def member() -> None:
    """Who may see and change a dataset: add, remove, list members."""


@member.command("add")
@with_common
@click.argument("dataset")
@click.argument("account")
@click.option("--role", required=True, metavar="curator|annotator|viewer",
              help="viewer reads; annotator also annotates; curator also changes metadata, transforms, members.")
def member_add(dataset: str, account: str, role: str, **options: Any) -> None:
    """Give ACCOUNT a role on DATASET (replacing the role it had there)."""
    record = _access(options).set_member(dataset, account, role)
    click.echo(f"{record.account!r} is {record.role} of {dataset!r}")


@member.command("remove")
@with_common
@click.argument("dataset")
@click.argument("account")
def member_remove(dataset: str, account: str, **options: Any) -> None:
    """Remove ACCOUNT's membership of DATASET."""
    removed = _access(options).remove_member(dataset, account)
    click.echo(f"{account!r} {'removed from' if removed else 'was not a member of'} {dataset!r}")


@member.command("list")
@with_common
@click.argument("dataset")
def member_list(dataset: str, **options: Any) -> None:
    """List DATASET's members and their roles."""
    for record in _access(options).members(dataset):
        click.echo(f"{record.account}\t{record.role}")


new_dataset_options = [
    click.option("--private", is_flag=True, help="A new dataset starts private (only members and admins see it)."),
    click.option("--release", default=None, callback=_release, metavar="YYYY-MM-DD",
                 help="With --private: the day (UTC) a new dataset becomes public."),
    click.option("--curator", default=None, metavar="ACCOUNT",
                 help="An account with the curator (or admin) role that curates the new dataset."),
]


def with_new_dataset(function: Any) -> Any:
    for option in reversed(new_dataset_options):
        function = option(function)
    return function


def new_dataset(settings: Settings, private: bool, release: date | None, curator: str | None) -> NewDataset:
    """How a dataset created by ``import`` or ``add`` starts."""
    from annotations.accounts import Accounts
    from annotations.catalog import NewDataset

    if release is not None and not private:
        fail("--release is for --private datasets (they become public on that day)")
    curator_id = None
    if curator is not None:
        account = Accounts(open_sessions(settings)).get(curator)
        if account.role not in ("curator", "admin") or account.disabled:
            fail(f"account {curator!r} cannot curate datasets (role {account.role}"
                 f"{', disabled' if account.disabled else ''})")
        curator_id = account.id
    return NewDataset(visibility="private" if private else "public", release_date=release, curator=curator_id)


COMMANDS = [user, token, visibility, member]
