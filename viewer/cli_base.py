"""What every ``lamella`` command shares: the data-dir and database options, one-line failures, the database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from viewer.config import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session, sessionmaker

    from annotations.catalog import Catalog

common = [
    click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help="Folder for the SQLite catalog and imported images [default: ./lamella-data]."),
    click.option("--database-url", default=None,
                 help="SQLAlchemy URL, e.g. postgresql://user@host/db [default: SQLite in the data dir]."),
]


def with_common(function: Any) -> Any:
    for option in reversed(common):
        function = option(function)
    return function


def fail(message: str) -> NoReturn:
    click.echo(f"lamella: error: {message}", err=True)
    sys.exit(1)


def open_database(settings: Settings) -> Engine:
    from annotations.db import make_engine, migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return engine


def open_sessions(settings: Settings) -> sessionmaker[Session]:
    from annotations.db import make_sessions

    return make_sessions(open_database(settings))


def open_catalog(settings: Settings) -> Catalog:
    from annotations.catalog import Catalog

    return Catalog(open_sessions(settings))
