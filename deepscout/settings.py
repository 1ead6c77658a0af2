"""Settings shared by every part of deepscout: where data lives and which database and model to use.

Created at start-up by the entry point (CLI, API, tests) with ``Settings()``; never at import time.
Every field can be set from the environment with the ``DEEPSCOUT_`` prefix (e.g. ``DEEPSCOUT_HOME``).
"""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("deepscout", appauthor=False))


def _default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("deepscout", appauthor=False))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSCOUT_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Data folder: database, corpora, runs.")
    cache_dir: Path = Field(
        default_factory=_default_cache_dir, description="Model cache: fetched packages, converted weights."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; defaults to a SQLite file in HOME. PostgreSQL works too."
    )
    model: str = Field(default="smollm2", description="Default chat model spec, e.g. smollm2, openai:MODEL.")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'deepscout.db'}"
