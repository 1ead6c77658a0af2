"""`deepscout corpus ...` through Typer's CliRunner, on a SQLite database in a temporary home."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepscout.cli.corpus_commands import app


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DEEPSCOUT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEEPSCOUT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DEEPSCOUT_DATABASE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def _jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "films.jsonl"
    rows = [
        {
            "id": "1",
            "title": "Stanley Kubrick",
            "text": "Kubrick directed 2001: A Space Odyssey.",
            "url": "u1",
        },
        {"id": "2", "title": "Akira Kurosawa", "text": "Kurosawa directed Seven Samurai."},
        {"id": "3", "title": "Agnes Varda", "text": "Varda directed Cleo from 5 to 7."},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_add_search_list_remove(runner: CliRunner, tmp_path: Path) -> None:
    path = _jsonl(tmp_path)
    result = runner.invoke(app, ["add", str(path)])
    assert result.exit_code == 0, result.output
    assert "films: 3 added, 0 updated, 0 unchanged" in result.output
    result = runner.invoke(app, ["add", str(path), "--collection", "films"])
    assert result.exit_code == 0 and "0 added, 0 updated, 3 unchanged" in result.output

    result = runner.invoke(app, ["search", "Who directed Seven Samurai?", "-k", "2"])
    assert result.exit_code == 0, result.output
    first_row = next(line for line in result.output.splitlines() if line.startswith("│ 1 "))
    assert "Akira Kurosawa" in first_row
    result = runner.invoke(app, ["search", 'NEAR("x" AND) * :: ^'])
    assert result.exit_code == 0 and "No documents match" in result.output

    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0 and "films" in result.output and "3" in result.output
    result = runner.invoke(app, ["remove", "films"])
    assert result.exit_code == 0 and "Removed collection films (3 documents)" in result.output
    result = runner.invoke(app, ["list"])
    assert "The local corpus is empty" in result.output


def test_errors_exit_non_zero_with_a_clear_message(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "anything"])
    assert result.exit_code == 2
    assert "deepscout setup" in result.output and "deepscout corpus fetch-demo" in result.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "fine"}\n{"id": 2,\n', encoding="utf-8")
    result = runner.invoke(app, ["add", str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:2: invalid JSON" in result.output.replace("\n", "")

    result = runner.invoke(app, ["add", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2 and "no such file or folder" in result.output

    result = runner.invoke(app, ["add", str(_jsonl(tmp_path)), "-c", "bad name!"])
    assert result.exit_code == 2 and "Invalid collection name" in result.output

    result = runner.invoke(app, ["remove", "nope"])
    assert result.exit_code == 2 and "No corpus collection named 'nope'" in result.output


def test_fetch_demo(runner: CliRunner, demo_find_links: Path) -> None:
    result = runner.invoke(app, ["fetch-demo"])
    assert result.exit_code == 0, result.output
    assert "demo: 2 added" in result.output
    result = runner.invoke(app, ["search", "photosynthesis light"])
    assert result.exit_code == 0 and "Photosynthesis" in result.output
