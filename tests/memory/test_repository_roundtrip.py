"""Repository functions round-trip through a real database (SQLite, and PostgreSQL under .ci/run)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deepscout.memory import repository as repo
from deepscout.memory import source_records as sources
from deepscout.memory.db import Database, write_session
from deepscout.memory.source_records import SearchQuery


def test_run_lifecycle_round_trip(database: Database) -> None:
    with write_session(database.session_factory) as s:
        thread = repo.create_thread(s, title="demo chat")
        run = repo.create_run(
            s,
            question="Who directed 2001: A Space Odyssey?",
            settings={"max_steps": 4, "search": "local"},
            manifest={"model": {"spec": "smollm2", "sha256": "ab" * 32}, "corpus": {"demo": "cd" * 32}},
            seed=7,
            sampling={"temperature": 0.0, "top_p": 1.0},
            thread_id=thread.id,
        )
        repo.add_message(s, thread_id=thread.id, role="user", content=run.question, run_id=run.id)
        run_id, thread_id = run.id, thread.id
    with write_session(database.session_factory) as s:
        plan = repo.add_step(s, run_id=run_id, node="plan", data={"queries": ["2001 director"]})
        act = repo.add_step(s, run_id=run_id, node="act")
        repo.finish_step(s, step_id=act.id, usage={"prompt_tokens": 120, "reused_tokens": 100})
        call = repo.add_tool_call(
            s,
            run_id=run_id,
            step_id=act.id,
            call_id="call_0",
            name="search_corpus",
            arguments={"query": "2001 director"},
            output="[1] 2001: A Space Odyssey",
            source_ids=[3, 5],
        )
        failed = repo.add_tool_call(
            s, run_id=run_id, name="fetch", arguments={"url": "x"}, status="error", error="refused"
        )
        repo.save_answer(s, run_id=run_id, text="Kubrick [1]", citations=[{"n": 1, "source_id": 3}])
        repo.save_answer(s, run_id=run_id, text="Stanley Kubrick [1]", citations=[{"n": 1, "source_id": 3}])
        repo.finish_run(s, run_id=run_id, status="succeeded", usage={"tool_calls": 2})
        assert (plan.index, act.index) == (0, 1)
        call_id, failed_id = call.id, failed.id

    with database.session_factory() as s:
        stored = repo.get_run(s, run_id=run_id)
        assert stored is not None
        run = stored
        assert (
            run.status == "succeeded" and run.finished_at is not None and run.finished_at.tzinfo is not None
        )
        assert run.seed == 7 and run.sampling == {"temperature": 0.0, "top_p": 1.0}
        assert run.manifest["corpus"] == {"demo": "cd" * 32}
        assert [step.node for step in run.steps] == ["plan", "act"]
        assert run.steps[1].usage == {"prompt_tokens": 120, "reused_tokens": 100}
        assert run.steps[1].finished_at is not None
        assert [c.id for c in run.tool_calls] == [call_id, failed_id]
        assert run.tool_calls[0].source_ids == [3, 5] and run.tool_calls[1].status == "error"
        answer = repo.get_answer(s, run_id=run_id)
        assert answer is not None and answer.text == "Stanley Kubrick [1]"
        assert answer.citations == [{"n": 1, "source_id": 3}]
        messages = repo.list_messages(s, thread_id=thread_id)
        assert [(m.role, m.run_id) for m in messages] == [("user", run_id)]
        assert [r.id for r in repo.list_runs(s, status="succeeded")] == [run_id]


def test_invalid_arguments_and_missing_records_raise_clear_errors(database: Database) -> None:
    with write_session(database.session_factory) as s:
        with pytest.raises(repo.RecordNotFoundError, match="No run with id 'nope'"):
            repo.add_step(s, run_id="nope", node="plan")
        run = repo.create_run(s, question="q", run_id="fixed-id")
        assert run.id == "fixed-id"
        with pytest.raises(ValueError, match="succeeded, failed or interrupted"):
            repo.finish_run(s, run_id=run.id, status="running")
        with pytest.raises(ValueError, match="'ok' or 'error'"):
            repo.add_tool_call(s, run_id=run.id, name="x", arguments={}, status="maybe")
        with pytest.raises(ValueError, match="role"):
            repo.add_message(s, thread_id="t", role="robot", content="hi")


def test_write_session_rolls_back_on_error(database: Database) -> None:
    with pytest.raises(RuntimeError), write_session(database.session_factory) as s:
        repo.create_run(s, question="lost", run_id="rolled-back")
        raise RuntimeError("boom")
    with database.session_factory() as s:
        assert repo.get_run(s, run_id="rolled-back") is None


def test_pages_upsert_by_final_url_and_are_found_by_requested_url(database: Database) -> None:
    fetched = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    with write_session(database.session_factory) as s:
        page = sources.upsert_page(
            s,
            url="http://example.org/a",
            final_url="https://example.org/article",
            title="An article",
            text="Body text.",
            http_status=200,
            content_type="text/html",
            author="A. Writer",
            published="2025-12-31",
            fetched_at=fetched,
            meta={"links": ["https://example.org/b"]},
        )
        first_id = page.id
    with write_session(database.session_factory) as s:
        again = sources.upsert_page(
            s,
            url="https://example.org/article",
            final_url="https://example.org/article",
            title="An article",
            text="Body text, revised.",
            http_status=200,
        )
        assert again.id == first_id
    with database.session_factory() as s:
        stored = sources.get_source(s, source_id=first_id)
        assert stored is not None and stored.key == "web:https://example.org/article"
        assert stored.text == "Body text, revised." and stored.kind == "web"
        assert stored.content_hash == sources.content_hash("An article", "Body text, revised.")
        found = sources.find_page(s, url="https://example.org/article")
        assert found is not None and found.id == first_id
        assert sources.find_page(s, url="https://example.org/other") is None
        assert (
            sources.get_source_by_key(s, key=sources.web_source_key("https://example.org/article"))
            is not None
        )


def test_upsert_source_and_ordered_lookup(database: Database) -> None:
    with write_session(database.session_factory) as s:
        a = sources.upsert_source(
            s,
            key=sources.corpus_source_key("c", "1"),
            kind="corpus",
            title="A",
            text="a",
            collection="c",
            doc_id="1",
        )
        b = sources.upsert_source(
            s,
            key=sources.corpus_source_key("c", "2"),
            kind="corpus",
            title="B",
            text="b",
            collection="c",
            doc_id="2",
        )
        with pytest.raises(ValueError, match="kind"):
            sources.upsert_source(s, key="x", kind="pdf", title="", text="")
        ids = [b.id, 999_999, a.id]
    with database.session_factory() as s:
        assert [src.title for src in sources.get_sources(s, source_ids=ids)] == ["B", "A"]


def test_search_cache_ttl_is_applied_by_the_reader(database: Database) -> None:
    results = [{"title": "T", "url": "https://example.org", "snippet": "s", "rank": 1, "backend": "ddg"}]
    hour = timedelta(hours=1)

    def cached(query: str, backend: str = "ddg", **when: datetime) -> list | None:
        with database.session_factory() as s:
            search = SearchQuery(query, backend, "us-en", "w")
            return sources.search_cache_get(s, search=search, max_age=hour, **when)

    with write_session(database.session_factory) as s:
        sources.search_cache_put(s, search=SearchQuery("Deep  Seek", "ddg", "us-en", "w"), results=results)
    assert cached("deep seek") == results
    assert cached("deep seek", backend="bing") is None
    assert cached("deep seek", now=datetime.now(UTC) + timedelta(hours=2)) is None
    with write_session(database.session_factory) as s:
        sources.search_cache_put(s, search=SearchQuery("deep seek", "ddg", "us-en", "w"), results=[])
    assert cached("DEEP SEEK") == []


def test_concurrent_writers_share_the_database(database: Database) -> None:
    """Eight threads each write 20 short transactions that read then write; nothing is lost or locked."""
    with write_session(database.session_factory) as s:
        run_id = repo.create_run(s, question="concurrency").id
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                with write_session(database.session_factory) as s:
                    repo.add_step(s, run_id=run_id, node=f"w{n}", data={"i": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with database.session_factory() as s:
        run = repo.get_run(s, run_id=run_id)
        assert run is not None
        assert sorted(step.index for step in run.steps) == list(range(160))


WRITER_SCRIPT = """
import sys
from deepscout.memory import repository as repo
from deepscout.memory import source_records as sources
from deepscout.memory.db import create_db_engine, make_session_factory, write_session
engine = create_db_engine(sys.argv[1])
factory = make_session_factory(engine)
for i in range(int(sys.argv[3])):
    with write_session(factory) as s:
        repo.add_step(s, run_id=sys.argv[2], node="proc", data={"i": i})
        sources.upsert_source(s, key=f"web:https://example.org/{i}", kind="web", title="t", text=str(i))
"""


def test_sqlite_writers_in_separate_processes_queue_instead_of_failing(tmp_path: Path) -> None:
    """Three processes write to one SQLite file at once: BEGIN IMMEDIATE + busy timeout serialise them."""
    import subprocess
    import sys

    from deepscout.memory.db import create_db_engine, make_session_factory, migrate

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = create_db_engine(url)
    migrate(engine)
    factory = make_session_factory(engine)
    with write_session(factory) as s:
        run_id = repo.create_run(s, question="processes").id
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, url, run_id, "40"], stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    failures = [w.stderr.read() if w.stderr else "" for w in writers if w.wait(timeout=120) != 0]
    assert failures == []
    with factory() as s:
        run = repo.get_run(s, run_id=run_id)
        assert run is not None and sorted(step.index for step in run.steps) == list(range(120))
    engine.dispose()


def test_nested_sqlite_write_sessions_fail_fast(tmp_path: Path) -> None:
    from deepscout.memory.db import NestedWriteError, create_db_engine, make_session_factory, migrate

    engine = create_db_engine(f"sqlite:///{tmp_path / 'nested.db'}")
    migrate(engine)
    factory = make_session_factory(engine)
    try:
        with write_session(factory) as outer:
            repo.create_run(outer, question="outer", run_id="outer")
            with pytest.raises(NestedWriteError, match="pass its session down"), write_session(factory):
                pass
        with write_session(factory) as again:  # the lock was released
            assert repo.get_run(again, run_id="outer") is not None
    finally:
        engine.dispose()
