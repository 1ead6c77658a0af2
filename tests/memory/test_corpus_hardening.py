"""The corpus under hostile sizes and crashes: a search ranking a multi-megabyte document that matches every
query word stays fast (snippets come from a bounded head, not FTS5's quadratic ``snippet()``), an add
killed with SIGKILL leaves a collection whose listing matches what is searchable, and the database file
is readable by its owner only."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import Database
from deepscout.memory.schemas import CorpusDocument
from deepscout.memory.snippets import SNIPPET_SCAN_CHARS

WORDS = ["the", "glacier", "ice", "retreat", "alps", "valley", "river", "snow", "measure", "record"]


@pytest.mark.timeout(60)  # FTS5 snippet() took 25 s on 2 MB and 189 s on 1 MB matching every word
def test_search_ranking_a_huge_document_that_matches_every_word_is_fast(database: Database) -> None:
    index = CorpusIndex(database.session_factory)
    huge = " ".join(WORDS[i % len(WORDS)] for i in range(400_000))  # ~2.3 MB, every query word everywhere
    docs = [CorpusDocument(doc_id="huge", title="Everything", text=huge)]
    docs += [
        CorpusDocument(doc_id=f"d{i}", title=f"Note {i}", text=f"A glacier note, number {i}.")
        for i in range(9)
    ]
    index.add(docs, collection="big")
    assert all(len(hit.snippet) < 400 for hit in index.search("the", k=10))  # PostgreSQL: a stopword
    for query in ("glacier ice retreat alps valley river snow measure record", "the glacier"):
        hits = index.search(query, k=10)
        assert any(hit.doc_id == "huge" for hit in hits)
        assert all(len(hit.snippet) < 400 for hit in hits)


def test_the_snippet_shows_the_first_match_and_stays_bounded(database: Database) -> None:
    index = CorpusIndex(database.session_factory)
    filler = "Lorem ipsum dolor sit amet. " * 2000  # 56,000 characters before the match
    text = filler + "The Aletsch glaciers retreated by 1.4 metres last year. " + filler
    far = "Lorem ipsum dolor sit amet. " * (SNIPPET_SCAN_CHARS // 20) + "Aletsch beyond the scanned head."
    index.add(
        [
            CorpusDocument(doc_id="near", title="Survey", text=text),
            CorpusDocument(doc_id="far", title="Archive", text=far),
        ],
        collection="alps",
    )
    hits = {hit.doc_id: hit for hit in index.search("aletsch glacier", k=5)}
    assert "The Aletsch glaciers retreated by 1.4 metres" in hits["near"].snippet
    assert hits["near"].snippet.startswith("… ") and hits["near"].snippet.endswith(" …")
    assert hits["far"].snippet.startswith("Lorem ipsum")  # past the head: the document's start


def test_an_add_killed_with_sigkill_lists_what_is_searchable(tmp_path: Path) -> None:
    """A child process adds 1,500 documents in batches of 100 and kills itself (SIGKILL, no clean-up)
    after the third batch is committed: the collection is listed with exactly the documents a search
    finds, and marked incomplete (no content hash) until an add of it completes."""
    url = f"sqlite:///{tmp_path / 'deepscout.db'}"
    script = textwrap.dedent(
        f"""
        import os, signal
        from deepscout.memory.corpus import CorpusIndex
        from deepscout.memory.db import create_db_engine, make_session_factory, migrate
        from deepscout.memory.schemas import CorpusDocument

        engine = create_db_engine({url!r})
        migrate(engine)
        index = CorpusIndex(make_session_factory(engine))

        def documents():
            for i in range(1500):
                if i == 350:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield CorpusDocument(doc_id=str(i), title=f"Glacier {{i}}", text=f"glacier report {{i}}")

        index.add(documents(), collection="killed", batch_size=100)
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()

    from deepscout.memory.db import create_db_engine, make_session_factory

    engine = create_db_engine(url)
    index = CorpusIndex(make_session_factory(engine))
    try:
        (info,) = index.collections()
        searchable = len(index.search("glacier", k=1000, collection="killed"))
        assert info.document_count == searchable == 300
        assert info.content_hash is None  # incomplete
        index.add(
            [
                CorpusDocument(doc_id=str(i), title=f"Glacier {i}", text=f"glacier report {i}")
                for i in range(1500)
            ],
            collection="killed",
        )
        (info,) = index.collections()
        assert info.document_count == 1500 and info.content_hash is not None
    finally:
        engine.dispose()


def test_database_and_checkpoint_files_are_private(tmp_path: Path) -> None:
    from deepscout.agent.graph import sqlite_checkpointer
    from deepscout.memory.db import open_database
    from deepscout.settings import Settings

    old_umask = os.umask(0o022)
    try:
        settings = Settings(home=tmp_path / "home")
        database = open_database(settings)
        CorpusIndex(database.session_factory).add(
            [CorpusDocument(doc_id="1", title="T", text="private text")], collection="c"
        )
        checkpointer = sqlite_checkpointer(settings.home)
        checkpointer.conn.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        checkpointer.conn.commit()
        files = [p for p in settings.home.iterdir() if p.is_file()]
        assert {p.name for p in files} >= {"deepscout.db", "deepscout.db-wal", "checkpoints.sqlite"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        checkpointer.conn.close()
        database.dispose()
    finally:
        os.umask(old_umask)


def test_listing_json_of_an_interrupted_collection(tmp_path: Path) -> None:
    """The listing marks an incomplete collection so a user knows to add it again."""
    from typer.testing import CliRunner

    from deepscout.cli.corpus_commands import app
    from deepscout.memory.db import open_database
    from deepscout.memory.tables import CorpusCollection
    from deepscout.settings import Settings

    settings = Settings(home=tmp_path / "home")
    database = open_database(settings)
    CorpusIndex(database.session_factory).add(
        [CorpusDocument(doc_id="1", title="T", text="text")], collection="half"
    )
    with database.session_factory() as session, session.begin():
        session.query(CorpusCollection).update({"content_hash": None})
    database.dispose()
    env = {"DEEPSCOUT_HOME": str(settings.home), "COLUMNS": "200"}
    result = CliRunner().invoke(app, ["list"], env=env)
    assert result.exit_code == 0 and "incomplete: add it again" in result.output
    assert json.dumps("half")[1:-1] in result.output


def test_duplicate_document_ids_are_an_error_not_a_silent_replacement(tmp_path: Path) -> None:
    from deepscout.memory.ingest import CorpusFormatError, open_input

    jsonl = tmp_path / "dup.jsonl"
    rows = [{"id": "a", "text": "first"}, {"id": "b", "text": "other"}, {"id": "a", "text": "second"}]
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    with pytest.raises(
        CorpusFormatError, match=r"dup\.jsonl:3: duplicate document id 'a' \(first on line 1\)"
    ):
        open_input(jsonl)
    hotpot = tmp_path / "dup.json"
    hotpot.write_text('{"Alps": ["One."], "Alps": ["Two."]}', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="duplicate document title 'Alps'"):
        open_input(hotpot)
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="nested too deep"):
        open_input(deep)
