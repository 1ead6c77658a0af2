"""What the web tools of one run share: settings, the per-domain rate limiter, quotas and counters.

One :class:`WebRunState` belongs to one :class:`~deepscout.tools.base.ToolContext`; ``web_run_state(ctx)``
creates it on first use and returns the same object to ``web_search`` and ``fetch_url`` afterwards.

Counters (all per run): ``search_network`` searches that went to the web (one per tool call, retries and
fallbacks included), ``search_requests`` backend attempts, ``search_cache_hits``, ``search_corpus_fallbacks``,
``fetch_network`` pages fetched from the web, ``fetch_store_hits`` pages replayed from the sources table.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from deepscout.tools.base import ToolContext, ToolQuotaExceeded
from deepscout.tools.guards import DomainRateLimiter
from deepscout.tools.web_settings import WebSettings

QuotaKind = Literal["search", "fetch"]


@dataclass
class WebRunState:
    settings: WebSettings
    rate_limiter: DomainRateLimiter
    counters: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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


_states: dict[int, WebRunState] = {}
_states_lock = threading.Lock()


def web_run_state(ctx: ToolContext) -> WebRunState:
    """The web state of ``ctx``'s run, created on first use from ``ctx.web_settings`` (or, when the entry
    point gave none, ``WebSettings()`` read from the environment, stored back on the context)."""
    with _states_lock:
        state = _states.get(id(ctx))
        if state is None:
            if ctx.web_settings is None:
                ctx.web_settings = WebSettings()
            settings = ctx.web_settings
            state = WebRunState(
                settings=settings, rate_limiter=DomainRateLimiter(settings.per_domain_min_interval_s)
            )
            _states[id(ctx)] = state
            weakref.finalize(ctx, _forget, id(ctx))
        return state


def _forget(key: int) -> None:
    with _states_lock:
        _states.pop(key, None)
