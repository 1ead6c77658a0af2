"""``deepscout models ...``: bad specs and missing models end with a clear message and a non-zero exit."""

from __future__ import annotations

from typer.testing import CliRunner

from deepscout.cli import app


def test_models_info_unknown_spec_fails_clearly():
    result = CliRunner().invoke(app, ["models", "info", "gpt-x"])
    assert result.exit_code == 2
    assert "unknown model spec 'gpt-x'" in result.output


def test_models_info_missing_smollm2_names_setup(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSCOUT_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["models", "info", "smollm2"])
    assert result.exit_code == 2
    assert "deepscout setup" in result.output


def test_models_fetch_refuses_unfetchable_names():
    result = CliRunner().invoke(app, ["models", "fetch", "llama"])
    assert result.exit_code == 2 and "fetchable: smollm2" in result.output


def test_models_list_shows_every_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSCOUT_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for usage in ("smollm2", "hf:PATH", "openai:MODEL", "deepseek-v4:PATH"):
        assert usage in result.output
    assert "not fetched: deepscout setup" in result.output
