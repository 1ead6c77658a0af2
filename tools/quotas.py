"""What a run may spend on tools, what it has spent, and the error when a quota is used up."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from deepscout.errors import DeepscoutError


class ToolQuotaExceeded(DeepscoutError, RuntimeError):
    """A run asked for more tool calls than its budget allows."""


@dataclass
class ToolQuotas:
    """Per-run limits: all tool calls together, and optionally per tool name."""

    max_calls: int
    per_tool: dict[str, int] = field(default_factory=dict)


@dataclass
class ToolCounters:
    """Calls made so far in the run (thread-safe: tools run in parallel)."""

    calls: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def charge(self, name: str, quotas: ToolQuotas) -> None:
        """Count one call of ``name``; raise ToolQuotaExceeded (counting nothing) if over a quota."""
        with self._lock:
            if sum(self.calls.values()) >= quotas.max_calls:
                raise ToolQuotaExceeded(
                    f"tool-call budget of {quotas.max_calls} used up; answer from what was found"
                )
            limit = quotas.per_tool.get(name)
            if limit is not None and self.calls[name] >= limit:
                raise ToolQuotaExceeded(f"quota of {limit} calls of {name} used up for this run")
            self.calls[name] += 1
