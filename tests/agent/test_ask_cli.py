"""``deepscout ask``: bad input gives a clear error and a non-zero exit; a real run prints the cited answer
and the sources (with a scripted backend registered for the test)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from deepscout.cli import app

runner = CliRunner()


@pytest.fixture
def home(settings, monkeypatch):
    monkeypatch.setenv("DEEPSCOUT_HOME", str(settings.home))
    return settings.home


def test_empty_question_is_an_error(home) -> None:
    result = runner.invoke(app, ["ask", "   "])
    assert result.exit_code == 2
    assert "question is empty" in result.output


def test_unknown_model_is_an_error(home) -> None:
    result = runner.invoke(app, ["ask", "Who wrote Dracula?", "--model", "gpt-17"])
    assert result.exit_code == 2
    assert "unknown model spec 'gpt-17'" in result.output and "smollm2" in result.output


def test_unknown_search_mode_is_an_error(home) -> None:
    result = runner.invoke(app, ["ask", "Who wrote Dracula?", "--search", "intranet"])
    assert result.exit_code == 2
    assert "local, web, both" in result.output


def test_missing_corpus_is_an_error(home) -> None:
    result = runner.invoke(app, ["ask", "Who wrote Dracula?"])
    assert result.exit_code == 2
    assert "corpus is empty" in result.output and "deepscout setup" in result.output


def test_resume_of_an_unknown_thread_is_an_error(home, small_corpus) -> None:
    result = runner.invoke(app, ["ask", "--resume", "nope"])
    assert result.exit_code == 2
    assert "no run with thread id 'nope'" in result.output


def test_ask_prints_answer_and_sources(home, small_corpus, scripted, monkeypatch) -> None:
    from deepscout.model_runtime.chat import BackendEntry, backend_registry

    model = scripted(['{"queries":["Dracula author"]}', "Bram Stoker wrote Dracula [1] [8]."])
    entry = BackendEntry("scripted", "scripted", lambda argument, settings: model, takes_argument=False)
    monkeypatch.setattr(backend_registry, "BUILTIN_BACKENDS", (*backend_registry.BUILTIN_BACKENDS, entry))
    result = runner.invoke(app, ["ask", "Who wrote Dracula?", "--model", "scripted", "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    assert "Bram Stoker wrote Dracula [1]." in result.output
    assert "[1] Dracula (source" in result.output
    assert "removed citation [8]" in result.output
    assert "searching: Who wrote Dracula?; Dracula author" in result.output


def test_a_context_budget_over_the_window_is_one_error_line(
    home, small_corpus, scripted, monkeypatch
) -> None:
    from deepscout.model_runtime.chat import BackendEntry, backend_registry

    model = scripted([], context_window=2048)
    entry = BackendEntry("scripted", "scripted", lambda argument, settings: model, takes_argument=False)
    monkeypatch.setattr(backend_registry, "BUILTIN_BACKENDS", (*backend_registry.BUILTIN_BACKENDS, entry))
    result = runner.invoke(
        app, ["ask", "Who wrote Dracula?", "--model", "scripted", "--max-context-tokens", "4096"]
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "4096" in errors[0] and "2048" in errors[0]
    assert "Traceback" not in result.output
