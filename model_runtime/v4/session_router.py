"""Which engine session a request continues, so conversations sharing one runtime keep their own KV.

Many conversations run on one runtime at once (the server's threads, the agent's parallel calls, batch
jobs), each an append-only token history. :class:`SessionRouter` remembers, per engine session, the tokens
its last request left in the cache, and gives a new request the idle session whose tokens are the longest
prefix of its prompt (leaving at least one token to compute), or a new session. A session serves one
request at a time; the engine evicts idle sessions on its own, and a hint for an evicted one only costs
the engine's prefix-cache fallback.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Sequence


class SessionRouter:
    """Session ids for requests: the best idle session by prompt prefix, or a fresh one."""

    def __init__(self, max_idle: int) -> None:
        self._max_idle = max_idle
        self._idle: OrderedDict[str, list[int]] = OrderedDict()
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def acquire(self, prompt: Sequence[int]) -> str:
        """The session ``prompt`` continues (now busy until :meth:`release`)."""
        with self._lock:
            best, best_length = None, 0
            for session_id, tokens in self._idle.items():
                n = len(tokens)
                if best_length < n < len(prompt) and list(prompt[:n]) == tokens:
                    best, best_length = session_id, n
            if best is None:
                return f"v4-session-{next(self._ids)}"
            del self._idle[best]
            return best

    def release(self, session_id: str, tokens: Sequence[int]) -> None:
        """``session_id`` is idle again, its cache holding ``tokens`` (nothing when empty)."""
        with self._lock:
            self._idle.pop(session_id, None)
            if not tokens:
                return
            self._idle[session_id] = list(tokens)
            while len(self._idle) > self._max_idle:
                self._idle.popitem(last=False)
