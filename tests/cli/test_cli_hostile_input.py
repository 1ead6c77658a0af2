"""Bad and hostile input at the command line: one clear line and a non-zero exit, never a traceback;
text the user or a document supplies is printed literally (Rich markup in it is neither parsed nor
eaten); ``ask --collection`` with an unknown collection fails before any model loads."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepscout.cli import app


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        "DEEPSCOUT_HOME": str(tmp_path / "home"),
        "DEEPSCOUT_CACHE_DIR": str(tmp_path / "cache"),
        "DEEPSCOUT_DATABASE_URL": "",
        "COLUMNS": "250",
    }


def _invoke(args: list[str], env: dict[str, str]):
    result = CliRunner().invoke(app, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.fixture
def marked_corpus(tmp_path: Path, env: dict[str, str]) -> Path:
    path = tmp_path / "marked.jsonl"
    rows = [
        {"id": "1", "title": "[red]Glacier[/red] report", "text": "zzz glacier ice [/x] closing tag"},
        {"id": "2", "title": "Broken [/x] tag", "text": "zzz second document"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert _invoke(["corpus", "add", str(path), "--collection", "marked"], env).exit_code == 0
    return path


def test_markup_in_queries_titles_and_snippets_is_printed_literally(marked_corpus, env) -> None:
    result = _invoke(["corpus", "search", "zzz [/x]"], env)
    assert result.exit_code == 0
    assert "[red]Glacier[/red] report" in result.output and "Broken [/x] tag" in result.output
    assert "[/x] closing tag" in result.output
    nothing = _invoke(["corpus", "search", "qqq [/q] [bold]"], env)
    assert nothing.exit_code == 0 and "No documents match 'qqq [/q] [bold]'." in nothing.output


def test_error_messages_holding_markup_are_printed_literally(marked_corpus, env) -> None:
    result = _invoke(["corpus", "remove", "nope[/x][red]"], env)
    assert result.exit_code == 2
    assert "No corpus collection named 'nope[/x][red]'" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["ask", "q", "--max-steps", "1000000"],
        ["ask", "q", "--max-tool-calls", "99999999"],
        ["ask", "q", "--wall-time", "1e12"],
        ["ask", "q", "--max-context-tokens", "99999999999"],
    ],
)
def test_out_of_range_options_are_usage_errors(args: list[str], env) -> None:
    result = _invoke(args, env)
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_a_question_with_a_nul_character_is_refused(env) -> None:
    result = _invoke(["ask", "who\x00directed Alien?"], env)
    assert result.exit_code == 2 and "contains a NUL character" in result.output


def test_a_question_that_is_not_utf8_is_refused(env) -> None:
    """Real argv bytes: Python hands them over as lone surrogates (surrogateescape)."""
    child = subprocess.run(
        [sys.executable, "-c", "from deepscout.cli import main; main()", "ask", b"caf\xe9 owner?"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == 2, child.stderr
    assert b"not valid UTF-8" in child.stderr and b"Traceback" not in child.stderr


def test_an_unknown_collection_fails_before_the_model_loads(marked_corpus, env) -> None:
    started = time.monotonic()
    result = _invoke(["ask", "Who directed Alien?", "--collection", "nope"], env)
    assert result.exit_code == 2
    assert "No corpus collection named 'nope' (collections: marked)" in result.output
    assert time.monotonic() - started < 10.0


def test_bad_settings_in_the_environment_are_one_line(env) -> None:
    result = _invoke(["ask", "q"], {**env, "DEEPSCOUT_WEB_EXTRACT_WORKERS": "0"})
    assert result.exit_code == 2 and "extract_workers" in result.output
    assert "Traceback" not in result.output


def test_a_path_holding_markup_is_printed_literally(tmp_path: Path, env) -> None:
    result = _invoke(["corpus", "add", str(tmp_path / "no[/x]such[red].jsonl"), "-c", "x"], env)
    assert result.exit_code == 2
    assert "no[/x]such[red].jsonl: no such file or folder" in result.output.replace("\n", "")


def test_bad_settings_are_one_line_for_every_command(env) -> None:
    child = subprocess.run(
        [sys.executable, "-c", "from deepscout.cli import main; main()", "corpus", "list"],
        env={**env, "PATH": "/usr/bin:/bin", "DEEPSCOUT_WEB_EXTRACT_WORKERS": "0"},
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == 2 and b"invalid settings: extract_workers" in child.stderr
    assert b"Traceback" not in child.stderr
