"""``fetch_url``: read a web page (HTML, PDF, text, JSON) and store it whole as a source.

The URL must have come from search results, the user's messages or a link of a page already read
(``tools/guards.py``); it passes the SSRF guards on every hop and is fetched under the byte cap and the
total deadline (``tools/http_client.py``); the body becomes clean text (``tools/extract.py``, run in a
worker process under a deadline and a memory cap by ``tools/extraction_pool.py``) and is stored in the
sources table under ``web:<final url>`` with its content hash, fetch time, final URL and status. A URL
already stored is replayed from the table without touching the network, so re-runs and evals read
exactly what the first run read. The tool returns the source id and the first ``length`` characters,
wrapped as untrusted data; ``read_document`` pages through the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from deepscout.memory import source_records
from deepscout.memory.db import write_session
from deepscout.memory.tables import Source
from deepscout.tools.base import DocumentArtifact, ToolContext
from deepscout.tools.guards import check_url, normalize_url
from deepscout.tools.http_client import FetchError, GuardedHttpClient
from deepscout.tools.tool_building import content_and_artifact_tool
from deepscout.tools.untrusted import wrap_untrusted

NAME = "fetch_url"
DEFAULT_LENGTH = 60_000
MAX_LENGTH = 200_000
T = TypeVar("T")


@dataclass
class StoredPage:
    source_id: int
    title: str
    url: str
    final_url: str
    http_status: int
    text: str
    links: list[str] = field(default_factory=list)
    replayed: bool = False
    """True when the page came from the sources table instead of the network."""


def _stored(source: Source, *, replayed: bool) -> StoredPage:
    return StoredPage(
        source_id=source.id,
        title=source.title,
        url=source.url or "",
        final_url=source.final_url or source.url or "",
        http_status=source.http_status or 0,
        text=source.text,
        links=[str(link) for link in (source.meta or {}).get("links", [])],
        replayed=replayed,
    )


class PageFetcher:
    """Fetch, extract and store pages for one run; replays stored pages without the network."""

    def __init__(self, ctx: ToolContext) -> None:
        self._ctx = ctx
        self._state = ctx.web
        self._client = GuardedHttpClient(ctx.web.settings, ctx.web.rate_limiter)

    async def fetch(self, url: str) -> StoredPage:
        """The page at ``url`` as stored; raises ``UrlRefusedError``, ``FetchError``, ``ExtractionError``
        (from the extraction workers) or ``ToolQuotaExceeded`` with a message naming the reason."""
        s = self._state.settings
        if s.require_provenance:
            self._ctx.provenance.require(url)
        check_url(url, s)  # also for replays: the allow/deny lists may have changed since
        requested = normalize_url(url)
        with self._ctx.session_factory() as session:
            source = source_records.find_page(session, url=requested)
            page = _stored(source, replayed=True) if source is not None else None
        if page is not None:
            self._state.count("fetch_store_hits")
        else:
            page = await self._fetch_and_store(url, requested)
        self._ctx.provenance.add_many(page.links, "page")
        return page

    async def _fetch_and_store(self, url: str, requested: str) -> StoredPage:
        self._state.take_quota("fetch")
        extraction = self._state.extraction
        extraction.prepare()  # a worker starts while the page downloads
        raw = await self._client.get(url, run_deadline=self._ctx.deadline)
        if not 200 <= raw.status < 300:
            raise FetchError(f"{url}: the server answered HTTP {raw.status}")
        doc = await asyncio.to_thread(
            extraction.extract, raw.body, raw.content_type, raw.final_url, deadline=self._ctx.deadline
        )
        final_url = normalize_url(raw.final_url)
        meta: dict[str, Any] = {
            "kind": doc.kind,
            "links": doc.links,
            "redirects": raw.redirects,
            "body_bytes": len(raw.body),
            "body_truncated": raw.truncated,
            "text_truncated": doc.text_truncated,
            "fetch_seconds": round(raw.elapsed_s, 3),
        }
        with write_session(self._ctx.session_factory) as session:
            source = source_records.upsert_page(
                session,
                url=requested,
                final_url=final_url,
                title=doc.title or final_url,
                text=doc.text,
                http_status=raw.status,
                content_type=raw.content_type or None,
                author=doc.author,
                published=doc.published,
                meta=meta,
            )
            page = _stored(source, replayed=False)
        return page


def run_coroutine(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also from a thread whose event loop is running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepscout-fetch") as pool:
        return pool.submit(asyncio.run, factory()).result()


class FetchUrlArgs(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"url": "https://en.wikipedia.org/wiki/Aletsch_Glacier"}]},
    )

    url: str = Field(
        min_length=8, max_length=2048, description="A URL from search results, the user, or a page read."
    )
    length: int = Field(
        default=DEFAULT_LENGTH, ge=1, le=MAX_LENGTH, description="How many characters of the page to return."
    )


def _tool_output(page: StoredPage, length: int) -> tuple[str, DocumentArtifact]:
    total = len(page.text)
    end = min(length, total)
    text = page.text[:end]
    more = f"; read_document(source_id={page.source_id}, offset={end}) reads on" if end < total else ""
    header = f"source {page.source_id}: {page.title} — {page.final_url} (characters 0-{end} of {total}{more})"
    artifact: DocumentArtifact = {
        "source_id": page.source_id,
        "doc_id": None,
        "title": page.title,
        "url": page.final_url,
        "offset": 0,
        "end": end,
        "total_chars": total,
        "text": text,
    }
    return wrap_untrusted(f"{header}\n{text}", origin=NAME, label=page.final_url), artifact


def build_fetch_url(ctx: ToolContext) -> StructuredTool:
    fetcher = PageFetcher(ctx)

    def fetch_url(url: str, length: int = DEFAULT_LENGTH) -> tuple[str, DocumentArtifact]:
        """Read a web page by URL (one from search results, the user, or a page read); stores it and returns
        its source id and text."""
        ctx.charge(NAME)
        return _tool_output(run_coroutine(lambda: fetcher.fetch(url)), length)

    async def afetch_url(url: str, length: int = DEFAULT_LENGTH) -> tuple[str, DocumentArtifact]:
        ctx.charge(NAME)
        return _tool_output(await fetcher.fetch(url), length)

    return content_and_artifact_tool(
        fetch_url,
        name=NAME,
        args_schema=FetchUrlArgs,
        role="fetch",
        coroutine=afetch_url,
        description=fetch_url.__doc__,
    )
