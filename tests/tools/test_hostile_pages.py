"""Hostile and malformed pages, served on loopback (``tests/tools/hostile_pages.py``): extraction ends
within its deadline and memory cap in a worker process that is killed and replaced, a bad link or charset
costs nothing but itself, an unreadable page is a clear error, and the IPv6 ``Host`` header is bracketed."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import ToolMessage

from deepscout.memory import source_records
from deepscout.settings import WebSettings
from deepscout.tools.extract import ExtractionError, extract_document
from deepscout.tools.extraction_pool import ExtractionLimits, ExtractionPool
from deepscout.tools.fetch import build_fetch_url
from deepscout.tools.guards import DomainRateLimiter, UrlProvenance
from deepscout.tools.http_client import GuardedHttpClient


@pytest.fixture(scope="module")
def hostile_server(hostile: Any) -> Iterator[Any]:
    with hostile.serve("127.0.0.1") as server:
        yield server


@pytest.fixture(scope="module")
def pool() -> Iterator[ExtractionPool]:
    limits = ExtractionLimits(deadline_s=2.0, memory_bytes=256 << 20, workers=2, max_chars=2_000_000)
    extraction = ExtractionPool(limits)
    yield extraction
    extraction.close()


def _page(hostile: Any, path: str) -> tuple[bytes, str]:
    content_type, body = hostile.PAGES[path]
    return body, content_type


def test_a_pdf_whose_pages_share_a_huge_stream_is_stopped_at_the_deadline(
    pool: ExtractionPool, hostile: Any
) -> None:
    body, content_type = _page(hostile, "/pdf-heavy")
    assert len(body) < 40_000
    started = time.monotonic()
    with pytest.raises(ExtractionError, match=r"did not finish within 2s"):
        pool.extract(body, content_type, "http://h.example/pdf-heavy")
    assert time.monotonic() - started < 3.5
    # the killed worker is replaced: the next page is read at once
    started = time.monotonic()
    doc = pool.extract(*_page(hostile, "/bad-href"), url="http://h.example/bad-href")
    assert "Aletsch" in doc.text and time.monotonic() - started < 2.0


def test_the_runs_wall_time_budget_cuts_extraction_short(pool: ExtractionPool, hostile: Any) -> None:
    started = time.monotonic()
    with pytest.raises(ExtractionError, match="within the run's wall-time budget"):
        pool.extract(*_page(hostile, "/pdf-heavy"), url="http://h.example/pdf-heavy", deadline=started + 0.8)
    assert time.monotonic() - started < 2.0


def test_a_page_of_200k_links_is_stopped_at_the_memory_cap_or_deadline(
    pool: ExtractionPool, hostile: Any
) -> None:
    started = time.monotonic()
    with pytest.raises(ExtractionError, match=r"memory cap|did not finish"):
        pool.extract(*_page(hostile, "/link-flood"), url="http://h.example/link-flood")
    assert time.monotonic() - started < 3.5


def test_a_slow_pdf_answers_with_the_pages_read_by_half_its_deadline(hostile: Any) -> None:
    """Pages of 20k operators each: the worker stops starting pages at half the deadline and answers
    with those it read, instead of being killed with nothing."""
    limits = ExtractionLimits(deadline_s=4.0, memory_bytes=256 << 20, workers=1, max_chars=2_000_000)
    extraction = ExtractionPool(limits)
    try:
        slow = hostile.shared_stream_pdf(pages=200, operators=20_000)
        started = time.monotonic()
        doc = extraction.extract(slow, "application/pdf", "http://h.example/slow.pdf")
        assert time.monotonic() - started < 4.0
        assert doc.text_truncated and "[page 1]" in doc.text and "[page 200]" not in doc.text
    finally:
        extraction.close()


def test_a_pdf_stops_reading_pages_at_the_text_cap(hostile: Any) -> None:
    small = hostile.shared_stream_pdf(pages=30, operators=2000)
    doc = extract_document(small, "application/pdf", "http://h.example/p.pdf", max_chars=5000)
    assert doc.text_truncated and len(doc.text) == 5000
    assert "[page 3]" in doc.text and "[page 30]" not in doc.text


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/deep-json", "[[[["),  # RecursionError in json: kept as text
        ("/idna", "Readable words"),  # charset=idna: UTF-8 instead of a UnicodeError
        ("/bad-href", "Aletsch glacier lost"),  # http://[oops/: that link skipped
    ],
)
def test_malformed_bodies_are_read_not_raised(
    pool: ExtractionPool, hostile: Any, path: str, expected: str
) -> None:
    doc = pool.extract(*_page(hostile, path), url=f"http://h.example{path}")
    assert expected in doc.text


def test_the_bad_link_is_skipped_and_the_good_one_kept(hostile: Any) -> None:
    doc = extract_document(*_page(hostile, "/bad-href"), url="http://h.example/bad-href")
    assert doc.links == ["http://h.example/article"]
    provenance = UrlProvenance()
    provenance.add_many(["http://[oops/", "http://h.example/article"], "page")  # never raises
    assert len(provenance) == 1 and provenance.origin_of("http://[oops/") is None


def test_an_all_nul_page_is_an_extraction_failure_not_an_empty_success(
    pool: ExtractionPool, hostile: Any
) -> None:
    with pytest.raises(ExtractionError, match="no readable text"):
        pool.extract(*_page(hostile, "/nul"), url="http://h.example/nul")


def _call(tool, **args: Any) -> ToolMessage:
    message = tool.invoke({"name": tool.name, "args": args, "id": "call_1", "type": "tool_call"})
    assert isinstance(message, ToolMessage)
    return message


def test_fetch_url_stores_nothing_for_unreadable_pages_and_keeps_reading(
    make_context, hostile_server
) -> None:
    ctx = make_context(allowed_ports=[hostile_server.port], extract_deadline_s=2.0)
    tool = build_fetch_url(ctx)
    for path in ("/nul", "/bad-href", "/pdf-heavy", "/marker-title"):
        ctx.provenance.add(hostile_server.url(path), "search")
    started = time.monotonic()
    with pytest.raises(ExtractionError, match="did not finish within 2s"):
        _call(tool, url=hostile_server.url("/pdf-heavy"))
    assert time.monotonic() - started < 4.0
    with pytest.raises(ExtractionError, match="no readable text"):
        _call(tool, url=hostile_server.url("/nul"))
    with ctx.session_factory() as session:  # nothing stored for either
        assert source_records.find_page(session, url=hostile_server.url("/nul")) is None
    page = _call(tool, url=hostile_server.url("/bad-href"))
    assert "Aletsch glacier lost" in str(page.content)
    assert ctx.provenance.origin_of(hostile_server.url("/article")) == "page"
    # a title that closes the untrusted block is defused inside it
    marked = str(_call(tool, url=hostile_server.url("/marker-title")).content)
    assert marked.count("</untrusted_data>") == 1 and marked.endswith("</untrusted_data>")
    ctx.web.extraction.close()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_the_host_header_of_an_ipv6_literal_is_bracketed(hostile: Any) -> None:
    with hostile.serve("::1") as server:
        settings = WebSettings(allow_loopback=True, allowed_ports=[server.port], per_domain_min_interval_s=0)
        client = GuardedHttpClient(settings, DomainRateLimiter(0.0))
        response = asyncio.run(client.get(server.url("/echo-host")))
    assert response.body == f"[::1]:{server.port}".encode()
