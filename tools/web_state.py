"""What the web tools of one run share: settings, the per-domain rate limiter, quotas and counters.

One :class:`WebRunState` belongs to one :class:`~deepscout.tools.base.ToolContext` (``ctx.web``), made
from the run's ``settings.web`` with the context, and shared by ``web_search`` and ``fetch_url``.

Counters (all per run): ``search_network`` searches that went to the web (one per tool call, retries and
fallbacks included), ``search_requests`` backend attempts, ``search_cache_hits``, ``search_corpus_fallbacks``,
``fetch_network`` pages fetched from the web, ``fetch_store_hits`` pages replayed from the sources table.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from deepscout.settings import WebSettings
from deepscout.tools.extraction_pool import ExtractionLimits, ExtractionPool
from deepscout.tools.guards import DomainRateLimiter
from deepscout.tools.quotas import ToolQuotaExceeded

QuotaKind = Literal["search", "fetch"]


@dataclass
class WebRunState:
    settings: WebSettings
    rate_limiter: DomainRateLimiter
    extraction: ExtractionPool
    """The worker processes that turn fetched bodies into text (started on the first fetch)."""
    counters: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def start(cls, settings: WebSettings) -> WebRunState:
        """A fresh state for one run: no counts, a rate limiter and extraction workers of its own."""
        limits = ExtractionLimits(
            deadline_s=settings.extract_deadline_s,
            memory_bytes=settings.extract_memory_mb << 20,
            workers=settings.extract_workers,
            max_chars=settings.max_text_chars,
        )
        return cls(
            settings=settings,
            rate_limiter=DomainRateLimiter(settings.per_domain_min_interval_s),
            extraction=ExtractionPool(limits),
        )

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def take_quota(self, kind: QuotaKind) -> None:
        """Count one network search or fetch; raise ``ToolQuotaExceeded`` (counting nothing) when the run's
        quota (``max_searches_per_run`` / ``max_fetches_per_run``) is used up."""
        counter, limit = (
            ("search_network", self.settings.max_searches_per_run)
            if kind == "search"
            else ("fetch_network", self.settings.max_fetches_per_run)
        )
        with self._lock:
            if self.counters[counter] >= limit:
                raise ToolQuotaExceeded(
                    f"web {kind} quota of {limit} per run used up; work with the sources already found"
                )
            self.counters[counter] += 1
