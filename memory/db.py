"""Database engines, sessions and migrations. Nothing happens at import time.

SQLite is the default (a file in the user's data dir, ``Settings.resolved_database_url``); any SQLAlchemy
URL works, and PostgreSQL (``postgresql+psycopg://...``) is tested alongside it.

Concurrency design for SQLite (one writer at a time, many readers):

* Every connection runs in WAL mode with foreign keys on and a busy timeout (``SQLITE_BUSY_TIMEOUT_S``),
  so readers never block the writer and a writer waits for another instead of failing.
* Writes go through :func:`write_session`: a short transaction opened with ``BEGIN IMMEDIATE`` (the write
  lock is taken at the start, so a transaction that reads and then writes can never hit SQLite's
  "database is locked" upgrade deadlock) and serialised inside the process by a per-database lock, so the
  threads of concurrent runs in one process queue on a cheap Python lock rather than on SQLite's busy
  loop. Other processes (a second ``deepscout ask``, the eval runner) queue on ``BEGIN IMMEDIATE`` and
  the busy timeout. Keep write transactions short: never hold one across a model call or a fetch.
  Write sessions do not nest: a second one opened in the same thread raises ``NestedWriteError``.
* Reads use a plain ``session_factory()`` session; WAL gives each read transaction a consistent snapshot.

On PostgreSQL :func:`write_session` is an ordinary transaction (no process lock: MVCC handles concurrent
writers) and :func:`migrate` holds an advisory lock so that two processes never migrate at once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from deepscout.errors import DeepscoutError
from deepscout.settings import Settings

SQLITE_BUSY_TIMEOUT_S = 30.0
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_WRITE_OPTION = "deepscout_write"
_PG_MIGRATION_LOCK_ID = 0x64656570  # "deep": an arbitrary, fixed advisory-lock key

_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()
_held_here = threading.local()  # the databases whose write lock this thread holds


class DatabaseError(DeepscoutError, RuntimeError):
    """The database cannot be opened or migrated; the message names the URL and the fix."""


@dataclass(frozen=True)
class Database:
    """An engine and its session factory, as returned by :func:`open_database`."""

    engine: Engine
    session_factory: sessionmaker[Session]

    def dispose(self) -> None:
        self.engine.dispose()


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``.

    SQLite files get WAL, foreign keys, a busy timeout and ``BEGIN IMMEDIATE`` writes;
    the folder of a SQLite file is created if missing.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(url, **kwargs)

    database = parsed.database or ""
    if database and database != ":memory:" and not database.startswith("file:"):
        create_private_file(Path(database).expanduser())
    if database in ("", ":memory:"):
        # One shared connection: an in-memory database exists once per connection, not per file.
        kwargs.setdefault("poolclass", StaticPool)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    _install_sqlite_hooks(engine)
    return engine


def create_private_file(path: Path) -> None:
    """Create ``path`` (and missing folders, ``0700``) readable by its owner only (``0600``) unless it
    exists. SQLite gives the ``-wal`` and ``-shm`` files the database file's permissions, so the questions,
    answers and pages stored in them stay private too."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def use_wal(connection: sqlite3.Connection) -> None:
    """Put the connection's database file in WAL mode (kept in the file: a file already in it is left
    alone). Connections that open a fresh file at once race to switch it, and SQLite answers the losers
    "database is locked" at once, without its busy wait; they retry until the switch is seen or
    ``SQLITE_BUSY_TIMEOUT_S`` passes (6 threads opening a fresh file: 30 of 200 trials failed before)."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        use_wal(dbapi_connection)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        writing = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit (``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


class NestedWriteError(RuntimeError):
    """A second SQLite write transaction was opened in a thread that already holds one."""


@contextmanager
def _sqlite_write_lock(engine: Engine) -> Iterator[None]:
    """The process-level write lock of this database; opening it twice in one thread is an error
    (it would wait on itself until SQLite's busy timeout)."""
    key = engine.url.render_as_string(hide_password=False)
    held: set[str] = _held_here.__dict__.setdefault("keys", set())
    if key in held:
        raise NestedWriteError(
            "A write_session is already open in this thread for this database; pass its session down "
            "instead of opening a second one (SQLite has one writer at a time)."
        )
    with _write_locks_guard:
        lock = _write_locks.setdefault(key, threading.Lock())
    with lock:
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)


def _engine_of(session_factory: sessionmaker[Session]) -> Engine:
    bind = session_factory.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("write_session needs a session factory bound to an Engine (see make_session_factory)")
    return bind


@contextmanager
def write_session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one short write transaction: committed on success, rolled back on error.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE`` under the process-level write lock.
    """
    engine = _engine_of(session_factory)
    if engine.dialect.name != "sqlite":
        with session_factory() as session, session.begin():
            yield session
        return
    writer = engine.execution_options(**{_WRITE_OPTION: True})
    with _sqlite_write_lock(engine), session_factory(bind=writer) as session, session.begin():
        yield session


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (default: the newest), in one transaction.

    Safe to call on every start: an up-to-date database is left as it is, and concurrent callers
    serialise (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: an advisory lock).
    """
    lock: AbstractContextManager[None] = (
        _sqlite_write_lock(engine) if engine.dialect.name == "sqlite" else nullcontext()
    )
    writer = engine.execution_options(**{_WRITE_OPTION: True})
    with lock, writer.connect() as connection, connection.begin():
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_ID})
        command.upgrade(_alembic_config(connection), revision)


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def open_database(settings: Settings, *, upgrade: bool = True) -> Database:
    """The database named by ``settings``, migrated to the newest schema unless ``upgrade=False``."""
    url = settings.resolved_database_url
    engine = create_db_engine(url)
    if upgrade:
        try:
            migrate(engine)
        except Exception as exc:
            engine.dispose()
            shown = make_url(url).render_as_string(hide_password=True)
            raise DatabaseError(
                f"Cannot open or migrate the database at {shown}: {exc}. "
                "Check DEEPSCOUT_DATABASE_URL (or DEEPSCOUT_HOME for the default SQLite file)."
            ) from exc
    return Database(engine=engine, session_factory=make_session_factory(engine))
