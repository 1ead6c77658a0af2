"""Settings come from the environment under their documented names, once, into typed sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepscout.settings import Settings


def test_every_documented_variable_reaches_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = {
        "DEEPSCOUT_HOME": str(tmp_path / "home"),
        "DEEPSCOUT_CACHE_DIR": str(tmp_path / "cache"),
        "DEEPSCOUT_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1/db",
        "DEEPSCOUT_MODEL": "openai:deepseek-v4-flash",
        "DEEPSCOUT_WEB_FETCH_DEADLINE_S": "7.5",
        "DEEPSCOUT_WEB_MAX_REDIRECTS": "2",
        "DEEPSCOUT_WEB_ALLOW_LOOPBACK": "true",
        "DEEPSCOUT_WEB_ALLOW_PRIVATE": "true",
        "DEEPSCOUT_WEB_ALLOW_HOSTS": '["Wiki.Example."]',
        "DEEPSCOUT_WEB_DENY_HOSTS": '["ads.example"]',
        "DEEPSCOUT_WEB_ALLOWED_PORTS": "[443, 8443]",
        "DEEPSCOUT_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "DEEPSCOUT_OPENAI_API_KEY": "sk-test",
        "DEEPSCOUT_OPENAI_THINKING": "false",
        "DEEPSCOUT_OPENAI_REASONING_EFFORT": "max",
        "DEEPSCOUT_V4_THINKING": "true",
        "DEEPSCOUT_V4_KV_DTYPE": "paper",
        "DEEPSCOUT_V4_KV_BLOCKS": "64",
        "DEEPSCOUT_V4_CONTEXT_WINDOW": "8192",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    settings = Settings()

    assert settings.home == tmp_path / "home" and settings.cache_dir == tmp_path / "cache"
    assert settings.resolved_database_url == "postgresql+psycopg://u@127.0.0.1/db"
    assert settings.model == "openai:deepseek-v4-flash"
    web = settings.web
    assert (web.fetch_deadline_s, web.max_redirects, web.allow_loopback, web.allow_private) == (
        7.5,
        2,
        True,
        True,
    )
    assert (web.allow_hosts, web.deny_hosts, web.allowed_ports) == (
        ["wiki.example"],
        ["ads.example"],
        [443, 8443],
    )
    openai = settings.openai
    assert (openai.base_url, openai.api_key.get_secret_value()) == ("http://127.0.0.1:9/v1", "sk-test")
    assert (openai.thinking, openai.reasoning_effort) == (False, "max")
    v4 = settings.v4
    assert (v4.thinking, v4.kv_dtype, v4.kv_blocks, v4.context_window) == (True, "paper", 64, 8192)


def test_sections_can_be_given_in_code_without_the_environment(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, v4={"kv_blocks": 8}, web={"allow_loopback": True})
    assert settings.v4.kv_blocks == 8 and settings.web.allow_loopback
    assert settings.openai.base_url == "https://api.deepseek.com"
