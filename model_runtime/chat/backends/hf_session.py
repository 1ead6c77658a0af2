"""KV-cache sessions for embedded Hugging Face models: prefix reuse across calls.

:class:`SessionPool` keeps idle ``DynamicCache`` objects, each with the token ids it holds, within a count
and a memory budget (least recently used first out). A new prompt continues from the cache sharing its
longest common token prefix, so an append-only conversation prefills only its new tokens; where the prompt
changed mid-way the cache is cropped back to the common prefix (or, when that would destroy a longer
conversation and the pool has room, the prefix is copied). A session taken out serves one call; the
batched generator (:mod:`.hf_batch`) gives it back when the call ends. The generator may instead start a
call from a copy of a prefix held by a call in flight, when that is longer than any idle session's
(:meth:`SessionPool.longest_prefix`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache


class LogitsGuide(Protocol):
    """Restricts decoding to a grammar; see :mod:`deepscout.model_runtime.chat.constrained`."""

    def apply(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf (in place, 1-D)."""

    def accept(self, token_id: int) -> None:
        """Advance the grammar over the sampled token."""

    @property
    def finished(self) -> bool:
        """True once the grammar is complete and nothing more may be generated."""


@dataclass
class KVSession:
    cache: DynamicCache
    tokens: list[int] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    index = 0
    while index < limit and a[index] == b[index]:
        index += 1
    return index


class SessionPool:
    """A few KV caches, each tagged with the tokens it holds; hands out the one sharing the longest prefix."""

    def __init__(self, config: Any, max_sessions: int, *, max_bytes: int | None = None) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._config = config
        self._max_sessions = max_sessions
        self._max_bytes = max_bytes
        self._sessions: list[KVSession] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def max_sessions(self) -> int:
        return self._max_sessions

    @property
    def max_bytes(self) -> int | None:
        return self._max_bytes

    def longest_prefix(self, prompt: Sequence[int]) -> int:
        """Tokens of ``prompt`` the idle session sharing the longest prefix holds (0 if none)."""
        with self._lock:
            return max((common_prefix_length(s.tokens, prompt) for s in self._sessions), default=0)

    def acquire(self, prompt: Sequence[int]) -> tuple[KVSession, int]:
        """The session to continue ``prompt`` from, cropped to the reusable prefix, and that prefix length.

        At least the last prompt token is always recomputed, since its logits start decoding.
        """
        with self._lock:
            best: KVSession | None = None
            best_length = 0
            for session in self._sessions:
                length = common_prefix_length(session.tokens, prompt)
                if length > best_length:
                    best, best_length = session, length
            reusable = min(best_length, len(prompt) - 1)
            if best is None or reusable <= 0:
                self._make_room()
                return KVSession(cache=DynamicCache(config=self._config)), 0
            if reusable < len(best.tokens) and len(self._sessions) < self._max_sessions:
                # Keep the longer conversation intact and branch off a copy of the shared prefix.
                copy = _copy_prefix(best.cache, reusable, self._config)
                return KVSession(cache=copy, tokens=list(prompt[:reusable])), reusable
            self._sessions.remove(best)
            _crop(best.cache, len(best.tokens), reusable)
            del best.tokens[reusable:]
            return best, reusable

    def release(self, session: KVSession) -> None:
        """Return a session (its ``tokens`` matching what its cache holds) to the pool."""
        session.last_used = time.monotonic()
        with self._lock:
            if not session.tokens:
                return
            self._sessions.append(session)
            self._make_room(keep=0)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def _make_room(self, keep: int = 1) -> None:
        """Evict the least recently used sessions until ``keep`` more fit the count and the memory."""
        while self._sessions and (
            len(self._sessions) + keep > self._max_sessions
            or (self._max_bytes is not None and sum(map(_bytes, self._sessions)) > self._max_bytes)
        ):
            oldest = min(self._sessions, key=lambda s: s.last_used)
            self._sessions.remove(oldest)


def _bytes(session: KVSession) -> int:
    return sum(
        tensor.numel() * tensor.element_size()
        for layer in session.cache.layers
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None))
        if tensor is not None
    )


def _crop(cache: DynamicCache, current: int, keep: int) -> None:
    if current > keep:
        cache.crop(-(current - keep))


def _copy_prefix(cache: DynamicCache, length: int, config: Any) -> DynamicCache:
    """A new cache holding the first ``length`` tokens of ``cache`` (which stays as it is)."""
    copy = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            continue
        copy.update(keys[..., :length, :].clone(), values[..., :length, :].clone(), index)
    return copy
