"""fetch_url end to end against the loopback server: provenance, storage as a source, replay without the
network, untrusted marking, the prompt-injection page, quotas and errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import ToolMessage

from deepscout.memory import source_records
from deepscout.tools.fetch import build_fetch_url
from deepscout.tools.guards import UnsafeUrlError, UnseenUrlError
from deepscout.tools.http_client import FetchError
from deepscout.tools.quotas import ToolQuotaExceeded
from deepscout.tools.registry import build_tools
from deepscout.tools.untrusted import CLOSE_TAG, OPEN_TAG


def _call(tool, **args: Any) -> ToolMessage:
    message = tool.invoke({"name": tool.name, "args": args, "id": "call_1", "type": "tool_call"})
    assert isinstance(message, ToolMessage)
    return message


def test_page_is_stored_whole_and_replayed_without_the_network(make_context, web_server, database) -> None:
    url = web_server.url("/article")
    first = make_context()
    first.provenance.add(url, "search")
    before = web_server.hits["/article"]
    message = _call(build_fetch_url(first), url=url, length=200)
    assert web_server.hits["/article"] == before + 1
    artifact = message.artifact
    assert artifact["title"] == "Glacier retreat in the Alps doubled since 2000"
    assert artifact["end"] == 200 and artifact["total_chars"] > 1000
    assert message.content.startswith(OPEN_TAG) and message.content.endswith(CLOSE_TAG)
    assert f"read_document(source_id={artifact['source_id']}, offset=200)" in message.content
    with database.session_factory() as session:
        source = source_records.get_source(session, source_id=artifact["source_id"])
        assert source is not None
        assert (source.kind, source.key, source.http_status) == ("web", f"web:{url}", 200)
        assert source.content_hash == source_records.content_hash(source.title, source.text)
        assert source.fetched_at is not None and source.author == "Maria Keller"
        assert "Daniel Farinotti" in source.text and len(source.text) == artifact["total_chars"]
        assert "https://www.glamos.ch/en/" in source.meta["links"]

    second = make_context()  # a new run over the same database
    second.provenance.add(url, "search")
    replay = _call(build_fetch_url(second), url=url, length=200)
    assert web_server.hits["/article"] == before + 1
    assert replay.content == message.content and replay.artifact == artifact
    counters = second.web.counters
    assert (counters["fetch_network"], counters["fetch_store_hits"]) == (0, 1)


def test_redirected_page_is_stored_under_its_final_url_replayed_by_either(make_context, web_server) -> None:
    ctx = make_context()
    start = web_server.url("/redirect/2")
    ctx.provenance.add(start, "search")
    message = _call(build_fetch_url(ctx), url=start)
    assert message.artifact["url"] == web_server.url("/article")
    hits = web_server.hits["/redirect/2"]
    again = _call(build_fetch_url(make_context(require_provenance=False)), url=start)
    assert again.artifact["source_id"] == message.artifact["source_id"]
    assert web_server.hits["/redirect/2"] == hits


def test_only_urls_from_search_the_user_or_pages_read_are_fetched(make_context, web_server) -> None:
    ctx = make_context()
    tool = build_fetch_url(ctx)
    composed = web_server.url("/notes.txt")
    with pytest.raises(UnseenUrlError, match="did not appear in search results"):
        _call(tool, url=composed)
    ctx.provenance.add_from_user_text(f"Summarise {web_server.url('/links')} please")
    _call(tool, url=web_server.url("/links"))
    # now the hub's links are fetchable, as links of a page read
    assert ctx.provenance.origin_of(composed) == "page"
    assert _call(tool, url=composed).artifact["text"].startswith("Field notes")
    assert _call(tool, url=web_server.url("/doc.pdf")).artifact["title"] == "Alpine Glacier Survey 2023"


def test_injected_page_is_untrusted_and_its_exfiltration_urls_are_refused(make_context, web_server) -> None:
    secret = "my passport number is X1234567"
    ctx = make_context()
    ctx.provenance.add_from_user_text(f"Which hikes near Zermatt pass glaciers? ({secret})")
    page = web_server.url("/inject")
    ctx.provenance.add(page, "search")
    tool = build_fetch_url(ctx)
    message = _call(tool, url=page)
    body = message.content
    # the page's instruction reaches the model only inside the untrusted block
    assert body.startswith(OPEN_TAG) and body.endswith(CLOSE_TAG) and "IMPORTANT SYSTEM NOTICE" in body
    assert "exfil?token=planted" not in body  # the hidden planted link was dropped with its element
    # what an obedient model would do next: both are refused without a request
    composed = web_server.url("/exfil?data=" + secret.replace(" ", "+"))
    for url in (composed, web_server.url("/exfil?token=planted")):
        with pytest.raises(UnseenUrlError, match="refused"):
            _call(tool, url=url)
    assert web_server.hits["/exfil"] == 0


def test_ssrf_guards_apply_to_urls_with_provenance(make_context, web_server) -> None:
    ctx = make_context(allow_loopback=False)
    url = web_server.url("/article")
    ctx.provenance.add(url, "user")
    with pytest.raises(UnsafeUrlError, match="is loopback"):
        _call(build_fetch_url(ctx), url=url)


def test_fetch_quota_and_http_errors(make_context, web_server, database) -> None:
    ctx = make_context(max_fetches_per_run=1, require_provenance=False)
    tool = build_fetch_url(ctx)
    with pytest.raises(FetchError, match="HTTP 404"):
        _call(tool, url=web_server.url("/missing"))
    with database.session_factory() as session:
        assert source_records.find_page(session, url=web_server.url("/missing")) is None
    with pytest.raises(ToolQuotaExceeded, match="web fetch quota of 1 per run"):
        _call(tool, url=web_server.url("/notes.txt"))


def test_async_invocation(make_context, web_server) -> None:
    ctx = make_context(require_provenance=False)
    tool = build_fetch_url(ctx)
    call = {"name": tool.name, "args": {"url": web_server.url("/data.json")}, "id": "c", "type": "tool_call"}
    message = asyncio.run(tool.ainvoke(call))
    assert '"glacier": "Aletsch"' in message.artifact["text"]


def test_registry_builds_the_web_tools(make_context) -> None:
    names = {tool.name: (tool.metadata or {}).get("role") for tool in build_tools("both", make_context())}
    assert names["web_search"] == "search" and names["fetch_url"] == "fetch"
    assert names["corpus_search"] == "search" and names["read_document"] == "read"
