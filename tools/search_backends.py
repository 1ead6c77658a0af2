"""The search backends of ``web_search``'s fail-over chain, one request each: ddgs's engines (DuckDuckGo,
Brave's pages, Mojeek, Wikipedia… scraped), a self-hosted SearxNG (its JSON API) and Brave's keyed Search
API. Each returns raw result records (``title``, ``href``/``url``, ``body``, ``date``) or raises:

* :class:`BackendRateLimited` (HTTP 202/403/429) or :class:`BackendTimeout`: worth a retry after a backoff;
* :class:`BackendFailed`: connection refused, TLS, a bad key, a page it cannot parse: a retry would fail
  the same way.

The ddgs engines are used one by one (``ddgs.engines.ENGINES``) rather than through ``DDGS.text``, which
folds rate limits, empty answers and errors into one "No results found": the status of each HTTP answer
is what tells a rate limit (back off and retry) from a backend that has nothing (try the next). Error text
never carries the API key (:func:`deepscout.redaction.redact_secrets`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Literal, TypeVar

import httpx

from deepscout.redaction import redact_secrets
from deepscout.settings import WebSettings

SearchKind = Literal["text", "news"]
RATE_LIMIT_STATUSES = frozenset({202, 403, 429})
SEARXNG = "searxng"
BRAVE_API = "brave_api"
_SEARXNG_TIME_RANGES = {"d": "day", "w": "week", "m": "month", "y": "year"}
_BRAVE_FRESHNESS = {"d": "pd", "w": "pw", "m": "pm", "y": "py"}
T = TypeVar("T")


class BackendRateLimited(Exception):
    pass


class BackendTimeout(Exception):
    pass


class BackendFailed(Exception):
    pass


def call_with_deadline(fn: Callable[[], T], timeout: float, name: str) -> T:
    """``fn()`` in a daemon thread; raises ``TimeoutError`` after ``timeout`` seconds and stops waiting (the
    thread ends on its own, bounded by the HTTP client's timeout)."""
    future: Future[T] = Future()

    def runner() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the waiting caller
            future.set_exception(exc)

    threading.Thread(target=runner, name=name, daemon=True).start()
    return future.result(timeout=max(0.0, timeout))


class _StatusRecorder:
    """Wraps a ddgs engine's HTTP client and remembers the status of every answer."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.statuses: list[int] = []

    def request(self, *args: Any, **kwargs: Any) -> Any:
        response = self._inner.request(*args, **kwargs)
        self.statuses.append(int(response.status_code))
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def ddgs_request(engine_class: Any, settings: WebSettings, query: str, timelimit: str | None) -> list[Any]:
    """One search on one ddgs engine."""
    from ddgs.exceptions import DDGSException, TimeoutException

    engine = engine_class(proxy=settings.search_proxy, timeout=settings.search_request_timeout_s)
    recorder = _StatusRecorder(engine.http_client)
    engine.http_client = recorder
    try:
        raw = engine.search(
            query, region=settings.region, safesearch=settings.safesearch, timelimit=timelimit
        )
    except TimeoutException as exc:
        raise BackendTimeout(str(exc)) from exc
    except Exception as exc:  # DDGSException (network, TLS, no token) or a parse error on an odd page
        if limited := [code for code in recorder.statuses if code in RATE_LIMIT_STATUSES]:
            raise BackendRateLimited(f"HTTP {limited[-1]}") from exc
        detail = str(exc) if isinstance(exc, DDGSException) else f"{type(exc).__name__}: {exc}"
        raise BackendFailed(redact_secrets(detail)[:200]) from exc
    if not raw:
        if limited := [code for code in recorder.statuses if code in RATE_LIMIT_STATUSES]:
            raise BackendRateLimited(f"HTTP {limited[-1]}")
        if recorder.statuses and all(code >= 500 for code in recorder.statuses):
            raise BackendFailed(f"HTTP {recorder.statuses[-1]}")
    return list(raw or [])


def _get_json(
    url: str, params: dict[str, str], headers: dict[str, str], settings: WebSettings, *, secret: str = ""
) -> Any:
    """GET ``url`` and parse its JSON answer, mapping statuses and network errors to the backend errors."""
    timeout = httpx.Timeout(settings.search_request_timeout_s)
    try:
        with httpx.Client(trust_env=False, timeout=timeout, follow_redirects=False) as client:
            response = client.get(url, params=params, headers={"Accept": "application/json", **headers})
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"{type(exc).__name__}") from exc
    except httpx.HTTPError as exc:
        raise BackendFailed(redact_secrets(f"{type(exc).__name__}: {exc}", [secret])[:200]) from exc
    if response.status_code in RATE_LIMIT_STATUSES:
        raise BackendRateLimited(f"HTTP {response.status_code}")
    if response.status_code != 200:
        detail = redact_secrets(response.text[:200], [secret])
        raise BackendFailed(f"HTTP {response.status_code}: {detail}")
    try:
        return response.json()
    except ValueError as exc:
        raise BackendFailed(f"the answer is not JSON ({exc})") from exc


def searxng_request(
    settings: WebSettings, query: str, kind: SearchKind, timelimit: str | None
) -> list[dict[str, Any]]:
    """One search on the self-hosted SearxNG at ``settings.searxng_url`` (its ``format=json`` API)."""
    base = str(settings.searxng_url or "").rstrip("/")
    params = {
        "q": query,
        "format": "json",
        "categories": "news" if kind == "news" else "general",
        "language": settings.region.split("-")[-1] if "-" in settings.region else "all",
        "safesearch": {"off": "0", "moderate": "1", "on": "2"}[settings.safesearch],
    }
    if timelimit:
        params["time_range"] = _SEARXNG_TIME_RANGES[timelimit]
    answer = _get_json(f"{base}/search", params, {}, settings)
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list):
        raise BackendFailed("the answer has no 'results' list")
    return [
        {
            "title": r.get("title"),
            "href": r.get("url"),
            "body": r.get("content"),
            "date": r.get("publishedDate"),
        }
        for r in results
        if isinstance(r, dict)
    ]


def brave_request(
    settings: WebSettings, query: str, kind: SearchKind, timelimit: str | None, limit: int
) -> list[dict[str, Any]]:
    """One search on Brave's Search API (``X-Subscription-Token``: ``settings.brave_api_key``)."""
    key = settings.brave_api_key.get_secret_value() if settings.brave_api_key is not None else ""
    base = settings.brave_api_url.rstrip("/")
    params = {"q": query, "count": str(min(limit, 20)), "safesearch": settings.safesearch}
    if timelimit:
        params["freshness"] = _BRAVE_FRESHNESS[timelimit]
    url = f"{base}/news/search" if kind == "news" else f"{base}/web/search"
    answer = _get_json(url, params, {"X-Subscription-Token": key}, settings, secret=key)
    section = answer if kind == "news" else (answer.get("web") if isinstance(answer, dict) else None)
    results = section.get("results") if isinstance(section, dict) else None
    if results is None and isinstance(answer, dict) and kind == "text" and "web" not in answer:
        return []  # Brave leaves "web" out when nothing matches
    if not isinstance(results, list):
        raise BackendFailed("the answer has no results list")
    return [
        {"title": r.get("title"), "href": r.get("url"), "body": r.get("description"), "date": r.get("age")}
        for r in results
        if isinstance(r, dict)
    ]
