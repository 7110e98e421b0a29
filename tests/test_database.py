"""Catalog and viewer sessions on SQLite and PostgreSQL (real databases, production schema)."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect

from annotations.catalog import Catalog, ImageSpec
from annotations.db import (
    HEAD_REVISION,
    MIGRATIONS,
    make_engine,
    make_sessions,
    migrate,
    schema_revision,
    upgrade_with_alembic,
)
from annotations.errors import DatasetNotFound, InvalidMetadata, NameTaken, SessionNotFound, StaleGeneration
from annotations.metadata import parse_metadata
from annotations.models import Base
from annotations.viewer_sessions import ViewerSessions


def spec(name: str = "em") -> ImageSpec:
    return ImageSpec(name=name, uri="/data/x.ome.zarr", ome_version="0.5", zarr_format=3, dtype="uint8",
                     shape=[4, 5, 6], voxel_size_nm=[8, 8, 8], levels=[{"path": "0"}], window=[0, 255])


@pytest.fixture
def services(database_url: str):
    engine = make_engine(database_url)
    migrate(engine)
    migrate(engine)  # idempotent
    sessions = make_sessions(engine)
    yield Catalog(sessions), ViewerSessions(sessions), engine
    engine.dispose()


def test_schema_has_tables(services) -> None:
    _, _, engine = services
    assert {"datasets", "images", "viewer_sessions", "alembic_version"} <= set(inspect(engine).get_table_names())


def test_head_revision_is_alembics_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD_REVISION]


def test_new_schema_equals_migrated_schema(database_url: str) -> None:
    """An empty database gets the models' tables at once; Alembic's migrations must build the same."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            upgrade_with_alembic(connection)  # the path an old database takes, from nothing
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            migrated = {t: sorted(c["name"] for c in inspect(connection).get_columns(t))
                        for t in inspect(connection).get_table_names()}
        Base.metadata.drop_all(engine)
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE alembic_version")
        migrate(engine)  # empty again: created from the models and stamped
        with engine.connect() as connection:
            assert schema_revision(connection) == HEAD_REVISION
            assert MigrationContext.configure(connection).get_current_revision() == HEAD_REVISION
            assert compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                    Base.metadata) == []
            created = {t: sorted(c["name"] for c in inspect(connection).get_columns(t))
                       for t in inspect(connection).get_table_names()}
        assert created == migrated
        with engine.begin() as connection:
            upgrade_with_alembic(connection)  # Alembic agrees there is nothing to do
            assert schema_revision(connection) == HEAD_REVISION
    finally:
        engine.dispose()


def test_concurrent_first_migrations_take_turns(database_url: str) -> None:
    """Several server processes starting on one new database: one creates the schema, none fails."""
    from concurrent.futures import ThreadPoolExecutor

    engines = [make_engine(database_url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            list(pool.map(migrate, engines))
        with engines[0].connect() as connection:
            assert schema_revision(connection) == HEAD_REVISION
            assert connection.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    finally:
        for engine in engines:
            engine.dispose()


def test_register_with_rembi_metadata(services) -> None:
    catalog, _, _ = services
    metadata = parse_metadata({
        "title": "C. elegans vEM", "accession": "EMPIAR-10982", "licence": "CC0",
        "biosample": {"organism": "Caenorhabditis elegans"},
        "image_acquisition": {"imaging_method": "FIB-SEM", "beam_current": "1 nA"},
    })
    record = catalog.register("worm", spec(), metadata)
    assert record.title == "C. elegans vEM" and record.accession == "EMPIAR-10982"
    assert record.rembi["image_acquisition"]["beam_current"] == "1 nA"  # unknown keys kept
    assert catalog.get_dataset("worm").id == catalog.get_dataset(str(record.id)).id
    assert record.images[0].created_at <= datetime.now(UTC)


def test_duplicate_image_rolls_back(services) -> None:
    catalog, _, _ = services
    catalog.register("d", spec())
    with pytest.raises(NameTaken):
        catalog.register("d", spec())
    assert len(catalog.get_dataset("d").images) == 1


def test_bad_names_and_ids(services) -> None:
    catalog, _, _ = services
    with pytest.raises(InvalidMetadata):
        catalog.register("Bad Name", spec())
    with pytest.raises(DatasetNotFound):
        catalog.get_dataset("99999999999999999999999")
    with pytest.raises(InvalidMetadata, match="accession"):
        parse_metadata({"accession": "not-an-accession"})


def test_session_generations(services) -> None:
    catalog, sessions, _ = services
    dataset = catalog.register("s", spec())
    session = sessions.create(dataset.id, {"layers": []}, {})
    first = session.generation
    new = sessions.set_state(session.token, {"layers": [1]}, generation="client/1", expected=first)
    assert new == "client/1"
    with pytest.raises(StaleGeneration):
        sessions.set_state(session.token, {"layers": [2]}, generation="other/1", expected=first)
    assert sessions.get(session.token).state == {"layers": [1]}
    assert sessions.generations(session.token)[0] == "client/1"
    with pytest.raises(SessionNotFound):
        sessions.get("missing")
    with pytest.raises(SessionNotFound):
        sessions.set_state("missing", {}, expected="x")


def test_wal_checkpoints_run_in_the_background(tmp_path) -> None:
    """An engine made for background checkpoints leaves commits' WAL alone; its checkpointer copies what was
    written into the database soon after the writing connection goes back to the pool."""
    import time

    from annotations.db import WalCheckpointer, sqlite_url

    engine = make_engine(sqlite_url(tmp_path), checkpoint_in_background=True)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    checkpointer = WalCheckpointer(engine, interval=60).start()
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (x BLOB)")
            connection.exec_driver_sql("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE "
                                       "i < 3000) INSERT INTO t SELECT randomblob(4000) FROM n")
        wal = tmp_path / "lamella.sqlite-wal"
        assert wal.stat().st_size > 3000 * 4096  # the commit itself checkpointed nothing
        deadline = time.monotonic() + 10
        while (database := (tmp_path / "lamella.sqlite").stat().st_size) < 3000 * 4000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert database >= 3000 * 4000, "the checkpointer copied the WAL into the database"
    finally:
        checkpointer.stop()
        engine.dispose()
    plain = make_engine(sqlite_url(tmp_path))
    with plain.connect() as connection:  # other engines keep SQLite's own checkpoints
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
        assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 3000
    plain.dispose()
