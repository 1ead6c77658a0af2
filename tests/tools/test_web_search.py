"""web_search without real web traffic: a dead network (ddgs pointed at a closed loopback proxy), rate
limits and hangs (ddgs's HTTP client patched), normalisation, the cache, quotas and the corpus fallback."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
from langchain_core.messages import ToolMessage

from deepscout.tools.quotas import ToolQuotaExceeded
from deepscout.tools.untrusted import OPEN_TAG
from deepscout.tools.web_search import UnknownBackendError, WebSearchUnavailable, build_web_search


def _call(tool, **args: Any) -> ToolMessage:
    message = tool.invoke({"name": tool.name, "args": args, "id": "call_1", "type": "tool_call"})
    assert isinstance(message, ToolMessage)
    return message


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


WIKI = "https://en.wikipedia.example/wiki/Aletsch_Glacier"
RESULTS = [
    ("Aletsch Glacier - Wikipedia", WIKI, "The largest glacier."),
    ("Glacier retreat doubled", "https://courier.example/news/glaciers", "Ice loss doubled since 2000."),
    ("Aletsch Glacier - Wikipedia (again)", f"{WIKI}#History", "dup"),
    ("Not a web page", "javascript:alert(1)", "dropped"),
]


def test_no_network_fails_over_to_the_local_corpus_within_five_seconds(make_context) -> None:
    """ddgs talks through a proxy on a closed loopback port: every backend fails to connect."""
    ctx = make_context(search_proxy=f"http://127.0.0.1:{_closed_port()}", search_deadline_s=12.0)
    tool = build_web_search(ctx)
    started = time.monotonic()
    message = _call(tool, query="Aletsch glacier Alps")
    elapsed = time.monotonic() - started
    assert elapsed < 5.0
    assert "Web search is unavailable" in message.content and "ConnectError" in message.content
    assert message.artifact and message.artifact[0]["title"] == "Aletsch Glacier"
    assert message.artifact[0]["source_id"] is not None  # a stored corpus document the agent can read
    counters = ctx.web.counters
    assert counters["search_corpus_fallbacks"] == 1
    assert counters["search_requests"] == len(ctx.settings.web.text_backends)  # no futile retries


@pytest.mark.parametrize("status", [202, 429])
def test_rate_limits_back_off_then_fall_back_in_the_deadline(make_context, fake_search_http, status) -> None:
    fake_search_http.status = status
    ctx = make_context(
        text_backends=["duckduckgo", "mojeek"], search_retries=2, search_backoff_s=0.2, search_deadline_s=4.0
    )
    started = time.monotonic()
    message = _call(build_web_search(ctx), query="Aletsch glacier")
    elapsed = time.monotonic() - started
    assert elapsed < 4.0
    assert f"rate limited (HTTP {status})" in message.content
    assert message.artifact and message.artifact[0]["title"] == "Aletsch Glacier"  # the corpus fallback
    stamps = [t for t, url in fake_search_http.calls if "duckduckgo" in url]
    assert len(stamps) == 3 and len(fake_search_http.calls) == 6  # 1 try + 2 retry rounds, per backend
    first_gap, second_gap = stamps[1] - stamps[0], stamps[2] - stamps[1]
    assert first_gap >= 0.2 * 0.8 and second_gap >= 0.4 * 0.8  # exponential backoff with jitter


def test_a_rate_limit_that_lifts_is_retried_into_results(make_context, fake_search_http, web_server) -> None:
    fake_search_http.script = [429, 429]
    fake_search_http.serve_results(RESULTS)
    ctx = make_context(text_backends=["duckduckgo"], search_retries=2, search_backoff_s=0.05)
    message = _call(build_web_search(ctx), query="Aletsch glacier", k=5)
    assert len(fake_search_http.calls) == 3
    # deduplicated (the fragment aside) and http(s) only
    assert [hit["url"] for hit in message.artifact] == [RESULTS[0][1], RESULTS[1][1]]
    assert message.content.startswith(OPEN_TAG)
    assert f"1. Aletsch Glacier - Wikipedia — {WIKI}" in message.content


def test_a_rate_limited_backend_falls_back_to_the_next(make_context, fake_search_http) -> None:
    fake_search_http.status_by_url = {"duckduckgo": 429}
    fake_search_http.serve_results(RESULTS)
    ctx = make_context(text_backends=["duckduckgo", "mojeek"], search_retries=1, search_backoff_s=5.0)
    started = time.monotonic()
    message = _call(build_web_search(ctx), query="Aletsch glacier")
    assert time.monotonic() - started < 1.0  # the next backend at once, no backoff first
    assert fake_search_http.calls[0][1] == "https://html.duckduckgo.com/html/"
    assert "mojeek" in fake_search_http.calls[1][1] and len(fake_search_http.calls) == 2
    assert [hit["url"] for hit in message.artifact] == [RESULTS[0][1], RESULTS[1][1]]
    # cached under the backend that answered
    again = _call(
        build_web_search(make_context(text_backends=["duckduckgo", "mojeek"])), query="Aletsch glacier"
    )
    assert len(fake_search_http.calls) == 2 and again.artifact == message.artifact


def test_a_query_the_web_has_nothing_for_is_not_a_network_failure(make_context, fake_search_http) -> None:
    fake_search_http.serve_results([])
    ctx = make_context(text_backends=["duckduckgo", "mojeek"])
    message = _call(build_web_search(ctx), query="zxqv glorp")
    assert message.content == "No web results for 'zxqv glorp'." and message.artifact == []
    assert ctx.web.counters["search_corpus_fallbacks"] == 0


def test_a_hanging_backend_is_abandoned_at_our_deadline(make_context, fake_search_http) -> None:
    fake_search_http.delay_s = 8.0
    ctx = make_context(text_backends=["duckduckgo", "mojeek"], search_deadline_s=1.0)
    started = time.monotonic()
    message = _call(build_web_search(ctx), query="Aletsch glacier")
    assert time.monotonic() - started < 1.6
    assert "timed out" in message.content and message.artifact[0]["title"] == "Aletsch Glacier"


def test_without_corpus_fallback_a_dead_network_is_a_clear_error(make_context) -> None:
    ctx = make_context(search_proxy=f"http://127.0.0.1:{_closed_port()}", corpus_fallback=False)
    with pytest.raises(WebSearchUnavailable, match=r"web search for 'x' failed: text:duckduckgo failed"):
        _call(build_web_search(ctx), query="x")


def test_results_are_normalised_recorded_as_fetchable_and_cached(make_context, fake_search_http) -> None:
    fake_search_http.serve_results(RESULTS)
    first = make_context(text_backends=["duckduckgo"])
    message = _call(build_web_search(first), query="Aletsch  Glacier", k=5)
    hit = message.artifact[0]
    assert hit == {
        "source_id": None,
        "title": "Aletsch Glacier - Wikipedia",
        "snippet": "The largest glacier.",
        "score": 1.0,
        "url": "https://en.wikipedia.example/wiki/Aletsch_Glacier",
    }
    assert first.provenance.origin_of(RESULTS[1][1]) == "search"
    calls = len(fake_search_http.calls)
    # a new run with the same query (case and spacing aside): replayed from the cache, nothing sent
    second = make_context(text_backends=["duckduckgo"])
    replay = _call(build_web_search(second), query="aletsch glacier", k=5)
    assert len(fake_search_http.calls) == calls
    assert replay.artifact == message.artifact
    assert second.provenance.origin_of(RESULTS[1][1]) == "search"
    assert second.web.counters["search_cache_hits"] == 1
    assert second.web.counters["search_network"] == 0
    # other time range: other cache key
    _call(build_web_search(second), query="aletsch glacier", timelimit="w")
    assert len(fake_search_http.calls) == calls + 1


def test_cache_entries_expire_after_the_ttl(make_context, fake_search_http) -> None:
    fake_search_http.serve_results(RESULTS)
    ctx = make_context(text_backends=["duckduckgo"], search_cache_ttl_s=0.3)
    tool = build_web_search(ctx)
    _call(tool, query="Aletsch")
    _call(tool, query="Aletsch")
    assert len(fake_search_http.calls) == 1
    time.sleep(0.4)
    _call(tool, query="Aletsch")
    assert len(fake_search_http.calls) == 2


def test_news_search_goes_through_the_news_backend(make_context, fake_search_http) -> None:
    news = {
        "results": [
            {
                "date": 1710750600,
                "title": "Alpine glaciers lose record ice",
                "excerpt": "Swiss survey finds loss doubled.",
                "url": "https://news.example/glaciers",
                "source": "News Example",
            }
        ]
    }
    fake_search_http.pages = {"news.js": json.dumps(news), "": '<html><script>vqd="4-1234"</script></html>'}
    ctx = make_context(news_backends=["duckduckgo"])
    message = _call(build_web_search(ctx), query="glacier loss", kind="news")
    assert message.artifact[0]["url"] == "https://news.example/glaciers"
    assert "(2024-03-18T08:30:00+00:00)" in message.content  # the date, normalised by ddgs


def test_per_run_search_quota_counts_only_network_searches(make_context, fake_search_http) -> None:
    fake_search_http.serve_results(RESULTS)
    ctx = make_context(text_backends=["duckduckgo"], max_searches_per_run=1)
    tool = build_web_search(ctx)
    _call(tool, query="first")
    _call(tool, query="first")  # from the cache: free
    with pytest.raises(ToolQuotaExceeded, match="web search quota of 1 per run"):
        _call(tool, query="second")


def test_unknown_backend_is_a_clear_error(make_context) -> None:
    refusal = r"unknown ddgs text backend\(s\) \['altavista'\]; available"
    with pytest.raises(UnknownBackendError, match=refusal):
        build_web_search(make_context(text_backends=["altavista"]))
