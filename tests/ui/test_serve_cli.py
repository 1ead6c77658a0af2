"""``deepscout serve`` refuses an unsafe bind with one line; ``deepscout db prune`` deletes old threads."""

from __future__ import annotations

from typer.testing import CliRunner

from deepscout.cli import app
from deepscout.memory import repository
from deepscout.memory.db import open_database, write_session


def test_serve_refuses_to_listen_beyond_loopback_without_tokens(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DEEPSCOUT_HOME", str(tmp_path))
    monkeypatch.delenv("DEEPSCOUT_SERVER_API_TOKENS", raising=False)
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "without API tokens" in result.output and "Traceback" not in result.output


def test_db_prune_deletes_threads_older_than_the_cut_off(monkeypatch, settings) -> None:
    monkeypatch.setenv("DEEPSCOUT_HOME", str(settings.home))
    database = open_database(settings)
    with write_session(database.session_factory) as session:
        repository.create_thread(session, title="kept", owner="local")
    result = CliRunner().invoke(app, ["db", "prune", "--older-than", "1"])
    assert result.exit_code == 0 and "deleted 0 threads" in result.output
    result = CliRunner().invoke(app, ["db", "prune", "--older-than", "0"])
    assert "deleted 1 threads" in result.output
    with database.session_factory() as session:
        assert repository.list_threads(session, owner="local") == []
    database.dispose()
