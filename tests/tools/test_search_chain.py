"""The search fail-over chain, ddgs → SearxNG → Brave Search API, against loopback stubs shaped like those
APIs: each link takes over when the one before fails, an empty result says which backends failed and
why (never with the API key), and ``keep_queries_local`` keeps queries away from third-party engines."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from pydantic import SecretStr

from deepscout.tools.web_search import build_web_search

BRAVE_KEY = "BSAkey-0123456789abcdef"


@pytest.fixture
def stub(hostile: Any) -> Iterator[Any]:
    """A loopback server answering SearxNG's ``/search`` and Brave's ``/brave/web/search`` with the JSON
    set in ``json_answers`` (404 until then)."""
    with hostile.serve("127.0.0.1") as server:
        yield server


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _context(make_context, stub, **overrides: Any):
    settings: dict[str, Any] = {
        "text_backends": ["duckduckgo"],
        "search_proxy": f"http://127.0.0.1:{_closed_port()}",  # ddgs cannot connect: the first link fails
        "searxng_url": stub.url(""),
        "brave_api_key": SecretStr(BRAVE_KEY),
        "brave_api_url": stub.url("/brave"),
        "search_retries": 1,
        "search_backoff_s": 0.05,
    }
    return make_context(**{**settings, **overrides})


def _search(ctx, query: str = "Aletsch glacier") -> ToolMessage:
    tool = build_web_search(ctx)
    message = tool.invoke({"name": tool.name, "args": {"query": query}, "id": "c1", "type": "tool_call"})
    assert isinstance(message, ToolMessage)
    return message


SEARXNG_ANSWER = {
    "query": "Aletsch glacier",
    "results": [
        {"url": "https://glaciers.example/aletsch", "title": "Aletsch", "content": "Largest glacier."},
        {"url": "http://[oops/", "title": "broken", "content": "a malformed URL is skipped"},
    ],
    "unresponsive_engines": [],
}
BRAVE_ANSWER = {
    "type": "search",
    "web": {
        "results": [
            {"title": "Aletsch Glacier", "url": "https://brave.example/aletsch", "description": "Valais."}
        ]
    },
}


def test_searxng_takes_over_when_ddgs_cannot_connect(make_context, stub) -> None:
    stub.json_answers["/search"] = (200, SEARXNG_ANSWER)
    message = _search(_context(make_context, stub))
    assert [hit["url"] for hit in message.artifact] == ["https://glaciers.example/aletsch"]
    path, query, _headers = stub.requests[-1]
    assert path == "/search" and query["format"] == ["json"] and query["q"] == ["Aletsch glacier"]


def test_brave_takes_over_from_a_rate_limited_searxng(make_context, stub) -> None:
    stub.json_answers["/search"] = (429, {"error": "too many requests"})
    stub.json_answers["/brave/web/search"] = (200, BRAVE_ANSWER)
    message = _search(_context(make_context, stub))
    assert [hit["url"] for hit in message.artifact] == ["https://brave.example/aletsch"]
    brave = [headers for path, _q, headers in stub.requests if path == "/brave/web/search"]
    assert brave and brave[0]["X-Subscription-Token"] == BRAVE_KEY
    assert stub.hits["/search"] == 1  # not retried: Brave answered in the same round


def test_when_every_backend_fails_the_answer_says_which_and_why_without_the_key(make_context, stub) -> None:
    stub.json_answers["/search"] = (500, {"error": "engine crashed"})
    stub.json_answers["/brave/web/search"] = (401, {"error": f"invalid token {BRAVE_KEY}"})
    message = _search(_context(make_context, stub))
    content = str(message.content)
    assert "Web search is unavailable" in content  # the corpus stands in
    assert "text:duckduckgo failed" in content
    assert "text:searxng failed (HTTP 500" in content
    assert "text:brave_api failed (HTTP 401" in content
    assert BRAVE_KEY not in content
    assert message.artifact and message.artifact[0]["title"] == "Aletsch Glacier"


def test_an_unconfigured_link_is_named_in_the_failures(make_context, stub) -> None:
    ctx = _context(make_context, stub, searxng_url=None, brave_api_key=None)
    content = str(_search(ctx).content)
    assert "searxng not configured (DEEPSCOUT_WEB_SEARXNG_URL)" in content
    assert "brave_api not configured (DEEPSCOUT_WEB_BRAVE_API_KEY)" in content


def test_keep_queries_local_asks_only_the_self_hosted_searxng(make_context, stub, fake_search_http) -> None:
    stub.json_answers["/search"] = (200, SEARXNG_ANSWER)
    stub.json_answers["/brave/web/search"] = (200, BRAVE_ANSWER)
    ctx = _context(make_context, stub, keep_queries_local=True, search_proxy=None)
    message = _search(ctx, "account 4929-1111 balance")
    assert [hit["url"] for hit in message.artifact] == ["https://glaciers.example/aletsch"]
    assert fake_search_http.calls == [] and stub.hits["/brave/web/search"] == 0
    # without a SearxNG, nothing leaves: the local corpus answers, and the note says why
    local_only = _context(make_context, stub, keep_queries_local=True, searxng_url=None)
    content = str(_search(local_only, "account 4929-1111 balance").content)
    assert "queries stay local (DEEPSCOUT_WEB_KEEP_QUERIES_LOCAL)" in content
    assert fake_search_http.calls == [] and stub.hits["/brave/web/search"] == 0
