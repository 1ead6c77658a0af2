"""``web_search``: web (text or news) search through ddgs that survives rate limits and a dead network.

Each call: the search cache (``memory``'s ``search_cache`` table, keyed by query, backend, region and time
limit, with a TTL) is asked first for every backend; then the backends are tried in order, each attempt in
a worker thread that is abandoned at our own deadline. A backend that is rate limited (HTTP 202/403/429)
or times out hands over to the next one at once and is retried in the next round, after an exponential
backoff (``search_retries`` rounds); one that fails otherwise (connection refused, TLS) is dropped. When no
backend answers, the local corpus is searched instead, with a note saying why. Results are normalised
(title, url, snippet, rank, backend) and their URLs recorded as fetchable (provenance).

ddgs engines are used one by one (``ddgs.engines.ENGINES``) rather than through ``DDGS.text``, which
folds rate limits, empty answers and errors into one "No results found": the status of each HTTP answer
is what tells a rate limit (back off and retry) from a backend that has nothing (try the next).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from deepscout.errors import DeepscoutError
from deepscout.memory import source_records
from deepscout.memory.corpus import CorpusError
from deepscout.memory.db import write_session
from deepscout.memory.source_records import SearchQuery
from deepscout.tools.base import SearchHitArtifact, ToolContext
from deepscout.tools.corpus_search import hit_artifacts, hit_lines
from deepscout.tools.guards import normalize_url
from deepscout.tools.tool_building import content_and_artifact_tool
from deepscout.tools.untrusted import wrap_untrusted

logger = logging.getLogger(__name__)

NAME = "web_search"
SearchKind = Literal["text", "news"]
TimeLimit = Literal["d", "w", "m", "y"]
RATE_LIMIT_STATUSES = frozenset({202, 403, 429})
T = TypeVar("T")


class UnknownBackendError(DeepscoutError, ValueError):
    """A configured ddgs backend does not exist for that kind of search."""


class WebSearchUnavailable(DeepscoutError, RuntimeError):
    """No backend answered within the deadline and there was no corpus to fall back to."""


class _RateLimited(Exception):
    pass


class _BackendTimeout(Exception):
    pass


class _BackendFailed(Exception):
    pass


@dataclass(frozen=True)
class WebResult:
    title: str
    url: str
    snippet: str
    rank: int
    backend: str
    published: str | None = None


@dataclass
class SearchOutcome:
    """What a search returned and where it came from: ``web``, ``cache`` or ``corpus`` (the fallback)."""

    origin: Literal["web", "cache", "corpus"]
    results: list[WebResult]
    backend: str | None
    failures: list[str]
    corpus_hits: list[SearchHitArtifact]


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


def _normalise(raw: list[Any], kind: SearchKind, backend: str, limit: int) -> list[WebResult]:
    results: list[WebResult] = []
    seen: set[str] = set()
    for item in raw:
        record = item if isinstance(item, dict) else asdict(item)
        url = str(record.get("href") or record.get("url") or "").strip()
        if url.startswith("//"):  # protocol-relative links in some result pages
            url = "https:" + url
        if not url.lower().startswith(("http://", "https://")):
            continue
        key = normalize_url(url)
        if key in seen:
            continue
        seen.add(key)
        results.append(
            WebResult(
                title=str(record.get("title") or "").strip() or url,
                url=url,
                snippet=str(record.get("body") or "").strip(),
                rank=len(results) + 1,
                backend=f"{kind}:{backend}",
                published=str(record["date"]) if record.get("date") else None,
            )
        )
        if len(results) >= limit:
            break
    return results


class WebSearcher:
    """Web search with cache, retries, backend fallback, a deadline and a corpus fallback."""

    def __init__(self, ctx: ToolContext) -> None:
        from ddgs.engines import ENGINES

        self._ctx = ctx
        self._state = ctx.web
        self._settings = ctx.web.settings
        self._engines = ENGINES
        for kind, backends in (
            ("text", self._settings.text_backends),
            ("news", self._settings.news_backends),
        ):
            unknown = [b for b in backends if b not in ENGINES[kind]]
            if unknown:
                raise UnknownBackendError(
                    f"unknown ddgs {kind} backend(s) {unknown}; available: {sorted(ENGINES[kind])} "
                    f"(DEEPSCOUT_WEB_{kind.upper()}_BACKENDS)"
                )

    def search(
        self,
        query: str,
        *,
        kind: SearchKind = "text",
        timelimit: TimeLimit | None = None,
        k: int | None = None,
    ) -> SearchOutcome:
        s = self._settings
        limit = k or s.search_max_results
        backends = s.text_backends if kind == "text" else s.news_backends
        cached = self._from_cache(query, kind, backends, timelimit, limit)
        if cached is not None:
            return cached
        self._state.take_quota("search")
        started = time.monotonic()
        deadline = started + s.search_deadline_s
        if self._ctx.deadline is not None:
            deadline = min(deadline, self._ctx.deadline)
        failures: list[str] = []
        reachable = False  # some backend answered, with nothing: the web is up, the query finds nothing
        pending = list(backends)
        for round_ in range(s.search_retries + 1):
            if round_:  # back off before retrying the backends that were rate limited or timed out
                delay = s.search_backoff_s * 2 ** (round_ - 1) * random.uniform(0.8, 1.2)
                time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            transient: list[str] = []
            for backend in pending:
                if time.monotonic() >= deadline:
                    failures.append(f"deadline of {deadline - started:.3g}s reached")
                    break
                answer = self._attempt(query, kind, backend, timelimit, limit, deadline, failures)
                if answer == "transient":
                    transient.append(backend)
                elif answer is not None:
                    reachable = True
                    if answer:
                        self._cache(query, kind, backend, timelimit, answer)
                        return SearchOutcome("web", answer, backend, list(dict.fromkeys(failures)), [])
            pending = transient
            if not pending or time.monotonic() >= deadline:
                break
        failures = list(dict.fromkeys(failures))  # a retried backend's repeated reason once
        if reachable:
            return SearchOutcome("web", [], None, failures, [])
        logger.warning(
            "web search for %r failed after %.1fs: %s", query, time.monotonic() - started, failures
        )
        return self._corpus_fallback(query, limit, failures)

    def _cache(
        self, query: str, kind: SearchKind, backend: str, timelimit: str | None, results: list[WebResult]
    ) -> None:
        with write_session(self._ctx.session_factory) as session:
            search = SearchQuery(query, f"{kind}:{backend}", self._settings.region, timelimit)
            source_records.search_cache_put(session, search=search, results=[asdict(r) for r in results])

    def _from_cache(
        self, query: str, kind: SearchKind, backends: list[str], timelimit: str | None, limit: int
    ) -> SearchOutcome | None:
        s = self._settings
        if s.search_cache_ttl_s <= 0:
            return None
        with self._ctx.session_factory() as session:
            for backend in backends:
                search = SearchQuery(query, f"{kind}:{backend}", s.region, timelimit)
                rows = source_records.search_cache_get(
                    session, search=search, max_age=timedelta(seconds=s.search_cache_ttl_s)
                )
                if rows:
                    self._state.count("search_cache_hits")
                    return SearchOutcome("cache", [WebResult(**row) for row in rows][:limit], backend, [], [])
        return None

    def _attempt(
        self,
        query: str,
        kind: SearchKind,
        backend: str,
        timelimit: str | None,
        limit: int,
        deadline: float,
        failures: list[str],
    ) -> list[WebResult] | Literal["transient"] | None:
        """One request to one backend: its results (empty when it answered with none), ``"transient"``
        (rate limited or timed out: worth a retry after a backoff), or None (failed for good)."""
        remaining = deadline - time.monotonic()
        self._state.count("search_requests")
        try:
            raw = call_with_deadline(
                lambda: self._one_request(query, kind, backend, timelimit), remaining, name=f"ddgs-{backend}"
            )
        except (_RateLimited, _BackendTimeout, TimeoutError) as exc:
            reason = "rate limited" if isinstance(exc, _RateLimited) else "timed out"
            failures.append(f"{kind}:{backend} {reason} ({exc or f'no answer in {remaining:.1f}s'})")
            return "transient"
        except _BackendFailed as exc:
            # connection refused, DNS, TLS, a page it cannot parse: a retry would fail the same way
            failures.append(f"{kind}:{backend} failed ({exc})")
            return None
        results = _normalise(raw, kind, backend, limit)
        if not results:
            failures.append(f"{kind}:{backend} found nothing")
        return results

    def _one_request(self, query: str, kind: SearchKind, backend: str, timelimit: str | None) -> list[Any]:
        from ddgs.exceptions import DDGSException, TimeoutException

        s = self._settings
        engine = self._engines[kind][backend](proxy=s.search_proxy, timeout=s.search_request_timeout_s)
        recorder = _StatusRecorder(engine.http_client)
        engine.http_client = recorder  # type: ignore[assignment]
        try:
            raw = engine.search(query, region=s.region, safesearch=s.safesearch, timelimit=timelimit)
        except TimeoutException as exc:
            raise _BackendTimeout(str(exc)) from exc
        except Exception as exc:  # DDGSException (network, TLS, no token) or a parse error on an odd page
            if limited := [code for code in recorder.statuses if code in RATE_LIMIT_STATUSES]:
                raise _RateLimited(f"HTTP {limited[-1]}") from exc
            detail = str(exc) if isinstance(exc, DDGSException) else f"{type(exc).__name__}: {exc}"
            raise _BackendFailed(detail[:200]) from exc
        if not raw:
            if limited := [code for code in recorder.statuses if code in RATE_LIMIT_STATUSES]:
                raise _RateLimited(f"HTTP {limited[-1]}")
            if recorder.statuses and all(code >= 500 for code in recorder.statuses):
                raise _BackendFailed(f"HTTP {recorder.statuses[-1]}")
        return list(raw or [])

    def _corpus_fallback(self, query: str, limit: int, failures: list[str]) -> SearchOutcome:
        reason = "; ".join(failures) or "no backend answered"
        if not self._settings.corpus_fallback:
            raise WebSearchUnavailable(f"web search for {query!r} failed: {reason}")
        try:
            hits = self._ctx.corpus.search(query, k=limit, collection=self._ctx.collection)
        except CorpusError as exc:
            raise WebSearchUnavailable(
                f"web search for {query!r} failed ({reason}) and the local corpus cannot stand in: {exc}"
            ) from exc
        self._state.count("search_corpus_fallbacks")
        return SearchOutcome("corpus", [], None, failures, hit_artifacts(hits))


class WebSearchArgs(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"query": "Aletsch glacier retreat 2023"}, {"query": "ECB rate decision"}]
        },
    )

    query: str = Field(min_length=1, max_length=300, description="Short keyword query naming one fact.")
    k: int = Field(default=5, ge=1, le=20, description="How many results to return.")
    kind: SearchKind = Field(default="text", description="text for web pages, news for recent news articles.")
    timelimit: TimeLimit | None = Field(default=None, description="Only results from the last d/w/m/y.")


def _stored_page_ids(ctx: ToolContext, urls: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    with ctx.session_factory() as session:
        for url in urls:
            page = source_records.find_page(session, url=normalize_url(url))
            if page is not None and page.http_status is not None and 200 <= page.http_status < 300:
                found[url] = page.id
    return found


def build_web_search(ctx: ToolContext) -> StructuredTool:
    searcher = WebSearcher(ctx)

    def web_search(
        query: str, k: int = 5, kind: SearchKind = "text", timelimit: TimeLimit | None = None
    ) -> tuple[str, list[SearchHitArtifact]]:
        """Search the web. Returns numbered results: title, URL, snippet; fetch a URL to read the page."""
        ctx.charge(NAME)
        outcome = searcher.search(query, kind=kind, timelimit=timelimit, k=k)
        if outcome.origin == "corpus":
            note = "Web search is unavailable (" + "; ".join(outcome.failures) + "); local corpus results:"
            ctx.provenance.add_many((h["url"] for h in outcome.corpus_hits if h["url"]), "search")
            if not outcome.corpus_hits:
                return f"{note} none match {query!r}.", []
            content = wrap_untrusted(hit_lines(outcome.corpus_hits), origin=NAME, label=query)
            return f"{note}\n{content}", outcome.corpus_hits
        ctx.provenance.add_many((r.url for r in outcome.results), "search")
        stored = _stored_page_ids(ctx, [r.url for r in outcome.results])
        artifact: list[SearchHitArtifact] = [
            {
                "source_id": stored.get(r.url),
                "title": r.title,
                "snippet": r.snippet,
                "score": 1.0 / r.rank,
                "url": r.url,
            }
            for r in outcome.results
        ]
        if not artifact:
            return f"No web results for {query!r}.", artifact
        lines = []
        for r in outcome.results:
            dated = f" ({r.published})" if r.published else ""
            stored_note = f" [stored as source {stored[r.url]}]" if r.url in stored else ""
            lines.append(f"{r.rank}. {r.title}{dated} — {r.url}{stored_note}\n   {r.snippet}")
        return wrap_untrusted("\n".join(lines), origin=NAME, label=query), artifact

    return content_and_artifact_tool(web_search, name=NAME, args_schema=WebSearchArgs, role="search")
