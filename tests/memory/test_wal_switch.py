"""WAL mode on a fresh SQLite file opened by several connections at once (concurrent batch records, each
opening the agent's checkpoint file): SQLite answers all but one switch "database is locked" at once,
without its busy wait, so `use_wal` must retry until the switch is seen."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from deepscout.agent.graph import sqlite_checkpointer
from deepscout.memory.db import use_wal


def _open_at_once(path: Path, connections: int) -> list[str]:
    """Open `connections` connections to `path` at the same moment, each switching it to WAL and writing;
    the errors they met."""
    start = threading.Barrier(connections)
    errors: list[str] = []

    def connect() -> None:
        connection = sqlite3.connect(path, timeout=5, check_same_thread=False)
        start.wait()
        try:
            use_wal(connection)
            connection.execute("CREATE TABLE IF NOT EXISTS probe (x)")
            connection.commit()
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        except (sqlite3.OperationalError, AssertionError) as error:
            errors.append(repr(error))
        finally:
            connection.close()

    threads = [threading.Thread(target=connect) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_connections_opening_a_fresh_file_at_once_all_get_wal(tmp_path: Path) -> None:
    failures = [_open_at_once(tmp_path / f"fresh{trial}.sqlite", 6) for trial in range(60)]
    assert [errors for errors in failures if errors] == []


def test_the_checkpointer_file_is_in_wal_mode(tmp_path: Path) -> None:
    checkpointer = sqlite_checkpointer(tmp_path)
    assert checkpointer.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    checkpointer.conn.close()
