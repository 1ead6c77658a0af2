"""The Alembic baseline builds the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from deepscout.memory.db import MIGRATIONS_DIR, _alembic_config, create_db_engine, current_revision, migrate
from deepscout.memory.tables import Base, include_in_autogenerate

TABLES = {
    "threads",
    "messages",
    "runs",
    "steps",
    "tool_calls",
    "answers",
    "sources",
    "corpus_collections",
    "search_cache",
    "eval_runs",
    "eval_answers",
    "eval_verdicts",
    "research_jobs",
    "research_events",
}


def test_migrations_live_inside_the_package() -> None:
    """Alembic's script location is the package's own folder, so an installed wheel can migrate."""
    import deepscout.memory.migrations as migrations_package

    assert Path(str(migrations_package.__file__)).resolve().parent == MIGRATIONS_DIR
    assert (MIGRATIONS_DIR / "env.py").is_file() and (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert (MIGRATIONS_DIR / "versions" / "__init__.py").is_file()


def test_upgrade_on_an_empty_database_builds_the_modelled_schema(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        assert current_revision(engine) is None
        migrate(engine)
        with engine.connect() as connection:
            script_head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
        assert current_revision(engine) == script_head == "0004_batch"
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "include_object": include_in_autogenerate}
            )
            assert compare_metadata(context, Base.metadata) == []
        migrate(engine)  # a second upgrade is a no-op
        assert current_revision(engine) == "0004_batch"
    finally:
        engine.dispose()


def test_full_text_index_exists_per_dialect(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        migrate(engine)
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                names = set(connection.scalars(text("SELECT name FROM sqlite_master")))
                assert {
                    "sources_fts",
                    "sources_fts_insert",
                    "sources_fts_delete",
                    "sources_fts_update",
                } <= names
            else:
                columns = {c["name"] for c in inspect(engine).get_columns("sources")}
                assert "search_vector" in columns
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        migrate(engine)
        from alembic import command

        with engine.begin() as connection:
            command.downgrade(_alembic_config(connection), "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        migrate(engine)
        assert set(inspect(engine).get_table_names()) >= TABLES
    finally:
        engine.dispose()


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'nested' / 'folder' / 'x.db'}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert (connection.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 1000
    finally:
        engine.dispose()


def test_concurrent_first_migrations_do_not_collide(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    engines = [create_db_engine(url) for _ in range(4)]
    errors: list[BaseException] = []

    def upgrade(engine: Engine) -> None:
        try:
            migrate(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert current_revision(engines[0]) == "0004_batch"
    finally:
        for engine in engines:
            engine.dispose()


@pytest.mark.parametrize("url", ["sqlite:///:memory:"])
def test_in_memory_sqlite_migrates(url: str) -> None:
    engine = create_db_engine(url)
    try:
        migrate(engine)
        assert "sources" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
