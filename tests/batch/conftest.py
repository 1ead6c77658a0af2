"""Fixtures of the batch tests: settings over SQLite or PostgreSQL, a small corpus whose documents carry
the markers the fake model answers with, and input files."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_research_model import DOCUMENTS

from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.schemas import CorpusDocument
from deepscout.settings import Settings


def _memory_fixtures() -> Any:
    """tests/memory/conftest.py, whose ``postgres_url`` fixture (a fresh database on the server .ci/run
    starts) these tests share."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "memory" / "conftest.py"
    spec = importlib.util.spec_from_file_location("memory_test_fixtures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


postgres_url = _memory_fixtures().postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def batch_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings in a temporary home, over a SQLite file or a fresh PostgreSQL database, with the corpus."""
    url = None
    if request.param == "postgresql":
        url = str(request.getfixturevalue("postgres_url"))
    settings = Settings(home=tmp_path / "home", database_url=url, model="fake")
    database = open_database(settings)
    CorpusIndex(database.session_factory).add(
        [CorpusDocument(doc_id=title, title=title, text=text) for title, text in DOCUMENTS], collection="demo"
    )
    database.dispose()
    yield settings


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[[list[Any]], Path]:
    """``write_jsonl(rows)``: an input file with one line per row (a dict as JSON, a str as is)."""

    def write(rows: list[Any], name: str = "input.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
        return path

    return write


def questions(count: int) -> list[dict[str, Any]]:
    return [{"id": f"r{n}", "question": f"What is Q{n} about?", "metadata": {"n": n}} for n in range(count)]
