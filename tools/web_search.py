"""``web_search``: web (text or news) search through an ordered fail-over chain that survives rate limits,
blocked addresses and a dead network.

The chain (``tools/search_backends.py``): the ddgs engines named in ``text_backends``/``news_backends``,
then a self-hosted SearxNG (``searxng_url``), then Brave's Search API (``brave_api_key``); a link not
configured is skipped, and with ``keep_queries_local`` only SearxNG is asked (queries never go to a
third-party engine). Each call: the search cache (``memory``'s ``search_cache`` table, keyed by query,
backend, region and time limit, with a TTL) is asked first for every backend; then the backends are tried
in order, each attempt in a worker thread that is abandoned at our own deadline. A backend that is rate
limited (HTTP 202/403/429) or times out hands over to the next one at once and is retried in the next
round, after a backoff (the shared :class:`~deepscout.retry_policy.RetryPolicy`, ``search_retries``
retries); one that fails otherwise (connection refused, TLS, a bad key) is dropped. When no backend
answers, the local corpus is searched instead, with a note saying which backends failed and why.
Results are normalised (title, url, snippet, rank, backend) and their URLs recorded as fetchable
(provenance); a malformed result URL is skipped, never the search.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Literal

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from deepscout.errors import DeepscoutError
from deepscout.memory import source_records
from deepscout.memory.corpus import CorpusError
from deepscout.memory.db import write_session
from deepscout.memory.source_records import SearchQuery
from deepscout.retry_policy import RetryPolicy
from deepscout.tools.base import SearchHitArtifact, ToolContext
from deepscout.tools.corpus_search import hit_artifacts, hit_lines
from deepscout.tools.guards import UnsafeUrlError, normalize_url
from deepscout.tools.search_backends import (
    BRAVE_API,
    SEARXNG,
    BackendFailed,
    BackendRateLimited,
    BackendTimeout,
    SearchKind,
    brave_request,
    call_with_deadline,
    ddgs_request,
    searxng_request,
)
from deepscout.tools.tool_building import content_and_artifact_tool
from deepscout.tools.untrusted import wrap_untrusted

logger = logging.getLogger(__name__)

NAME = "web_search"
TimeLimit = Literal["d", "w", "m", "y"]


class UnknownBackendError(DeepscoutError, ValueError):
    """A configured ddgs backend does not exist for that kind of search."""


class WebSearchUnavailable(DeepscoutError, RuntimeError):
    """No backend answered within the deadline and there was no corpus to fall back to."""


class _TransientRound(Exception):
    """Some backends were rate limited or timed out in this round: worth another after a backoff."""


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
        try:
            key = normalize_url(url)
        except UnsafeUrlError:  # http://[oops/ and the like: this result is skipped, not the search
            continue
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


@dataclass
class _Search:
    """One search call in progress: what is asked, until when, and what the backends said so far."""

    query: str
    kind: SearchKind
    timelimit: str | None
    limit: int
    deadline: float
    pending: list[str]
    failures: list[str] = field(default_factory=list)
    reachable: bool = False
    """Some backend answered, with nothing: the web is up, the query finds nothing."""


class WebSearcher:
    """Web search with cache, retries, a fail-over chain of backends, a deadline and a corpus fallback."""

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

    def chain(self, kind: SearchKind) -> tuple[list[str], list[str]]:
        """The backends this search tries, in order, and a note for each link of the chain left out."""
        s = self._settings
        chain: list[str] = []
        skipped: list[str] = []
        if s.keep_queries_local:
            skipped.append(
                "ddgs and brave_api skipped: queries stay local (DEEPSCOUT_WEB_KEEP_QUERIES_LOCAL)"
            )
        else:
            chain += s.text_backends if kind == "text" else s.news_backends
        if s.searxng_url:
            chain.append(SEARXNG)
        else:
            skipped.append("searxng not configured (DEEPSCOUT_WEB_SEARXNG_URL)")
        if s.brave_api_key is not None and not s.keep_queries_local:
            chain.append(BRAVE_API)
        elif not s.keep_queries_local:
            skipped.append("brave_api not configured (DEEPSCOUT_WEB_BRAVE_API_KEY)")
        return chain, skipped

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
        chain, skipped = self.chain(kind)
        cached = self._from_cache(query, kind, chain, timelimit, limit)
        if cached is not None:
            return cached
        self._state.take_quota("search")
        started = time.monotonic()
        deadline = started + s.search_deadline_s
        if self._ctx.deadline is not None:
            deadline = min(deadline, self._ctx.deadline)
        search = _Search(query, kind, timelimit, limit, deadline, pending=list(chain))
        policy = RetryPolicy(attempts=s.search_retries + 1, first_delay_s=s.search_backoff_s)
        try:
            for attempt in policy.retrying(lambda exc: isinstance(exc, _TransientRound), deadline=deadline):
                with attempt:
                    found = self._round(search)
                    if found is not None:
                        return found
        except _TransientRound:
            pass
        failures = list(dict.fromkeys(search.failures)) + skipped  # a retried backend's reason once
        if search.reachable:
            return SearchOutcome("web", [], None, failures, [])
        logger.warning(
            "web search for %r failed after %.1fs: %s", query, time.monotonic() - started, failures
        )
        return self._corpus_fallback(query, limit, failures)

    def _round(self, search: _Search) -> SearchOutcome | None:
        """Try each pending backend once: the first results found, or None; raises ``_TransientRound``
        when some backends were rate limited or timed out (they stay pending for the next round)."""
        transient: list[str] = []
        for backend in search.pending:
            if time.monotonic() >= search.deadline:
                search.failures.append(f"deadline of {self._settings.search_deadline_s:g}s reached")
                search.pending = []
                return None
            answer = self._attempt(search, backend)
            if answer == "transient":
                transient.append(backend)
            elif answer is not None:
                search.reachable = True
                if answer:
                    self._cache(search.query, search.kind, backend, search.timelimit, answer)
                    return SearchOutcome("web", answer, backend, list(dict.fromkeys(search.failures)), [])
        search.pending = transient
        if transient:
            raise _TransientRound(", ".join(transient))
        return None

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

    def _attempt(self, search: _Search, backend: str) -> list[WebResult] | Literal["transient"] | None:
        """One request to one backend: its results (empty when it answered with none), ``"transient"``
        (rate limited or timed out: worth a retry after a backoff), or None (failed for good)."""
        kind = search.kind
        remaining = search.deadline - time.monotonic()
        self._state.count("search_requests")
        try:
            raw = call_with_deadline(
                lambda: self._one_request(search, backend), remaining, name=f"search-{backend}"
            )
        except (BackendRateLimited, BackendTimeout, TimeoutError) as exc:
            reason = "rate limited" if isinstance(exc, BackendRateLimited) else "timed out"
            search.failures.append(f"{kind}:{backend} {reason} ({exc or f'no answer in {remaining:.1f}s'})")
            return "transient"
        except BackendFailed as exc:
            # connection refused, DNS, TLS, a bad key, a page it cannot parse: a retry would fail the same way
            search.failures.append(f"{kind}:{backend} failed ({exc})")
            return None
        results = _normalise(raw, kind, backend, search.limit)
        if not results:
            search.failures.append(f"{kind}:{backend} found nothing")
        return results

    def _one_request(self, search: _Search, backend: str) -> list[Any]:
        s = self._settings
        if backend == SEARXNG:
            return searxng_request(s, search.query, search.kind, search.timelimit)
        if backend == BRAVE_API:
            return brave_request(s, search.query, search.kind, search.timelimit, search.limit)
        return ddgs_request(self._engines[search.kind][backend], s, search.query, search.timelimit)

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
