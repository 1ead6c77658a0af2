"""KV-cache sessions for embedded Hugging Face models: prefix reuse, chunked prefill, guided decoding.

:class:`SessionPool` keeps a few ``DynamicCache`` objects, each with the token ids it holds. A new prompt
continues from the cache sharing its longest common token prefix, so an append-only conversation prefills
only its new tokens; where the prompt changed mid-way the cache is cropped back to the common prefix
(or, when that would destroy a longer conversation and the pool has room, the prefix is copied).

:class:`HFGenerator` runs one generation at a time on a model: prefill in chunks and decode token by token,
checking the deadline / cancellation between chunks and between tokens.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from deepscout.model_runtime.chat.embedded_base import GenerationOutcome
from deepscout.model_runtime.chat.interface import GenerationControl
from deepscout.model_runtime.chat.usage import Usage


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
class _Session:
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

    def __init__(self, config: Any, max_sessions: int) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self._config = config
        self._max_sessions = max_sessions
        self._sessions: list[_Session] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def acquire(self, prompt: Sequence[int]) -> tuple[_Session, int]:
        """The session to continue ``prompt`` from, cropped to the reusable prefix, and that prefix length.

        At least the last prompt token is always recomputed, since its logits start decoding.
        """
        with self._lock:
            best: _Session | None = None
            best_length = 0
            for session in self._sessions:
                length = common_prefix_length(session.tokens, prompt)
                if length > best_length:
                    best, best_length = session, length
            reusable = min(best_length, len(prompt) - 1)
            if best is None or reusable <= 0:
                self._make_room()
                return _Session(cache=DynamicCache(config=self._config)), 0
            if reusable < len(best.tokens) and len(self._sessions) < self._max_sessions:
                # Keep the longer conversation intact and branch off a copy of the shared prefix.
                copy = _copy_prefix(best.cache, reusable, self._config)
                return _Session(cache=copy, tokens=list(prompt[:reusable])), reusable
            self._sessions.remove(best)
            _crop(best.cache, len(best.tokens), reusable)
            del best.tokens[reusable:]
            return best, reusable

    def release(self, session: _Session) -> None:
        """Return a session (its ``tokens`` matching what its cache holds) to the pool."""
        session.last_used = time.monotonic()
        with self._lock:
            if not session.tokens:
                return
            self._make_room()
            self._sessions.append(session)

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def _make_room(self) -> None:
        while len(self._sessions) >= self._max_sessions:
            oldest = min(self._sessions, key=lambda s: s.last_used)
            self._sessions.remove(oldest)


def _crop(cache: DynamicCache, current: int, keep: int) -> None:
    if current > keep:
        cache.crop(-(current - keep))


def _copy_prefix(cache: DynamicCache, length: int, config: Any) -> DynamicCache:
    copy = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if keys is None or values is None:
            continue
        copy.update(keys[..., :length, :].clone(), values[..., :length, :].clone(), index)
    return copy


class HFGenerator:
    """Greedy / temperature decoding with session reuse for one causal LM (one generation at a time)."""

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: Sequence[int],
        max_sessions: int = 3,
        prefill_chunk_tokens: int = 256,
    ) -> None:
        self.model = model
        self.eos_token_ids = frozenset(eos_token_ids)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.pool = SessionPool(model.config, max_sessions)
        self._lock = threading.Lock()
        # transformers renamed the forward's cache argument (``past_key_values`` → ``cache`` in 5.24).
        forward_parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"

    @torch.inference_mode()
    def generate(
        self,
        prompt: Sequence[int],
        *,
        max_new_tokens: int,
        control: GenerationControl,
        guide: LogitsGuide | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        on_token: Callable[[int], bool] | None = None,
    ) -> GenerationOutcome:
        """Continue ``prompt`` from the best cached session; ``on_token`` returning True stops decoding."""
        if not prompt:
            raise ValueError("cannot generate from an empty prompt")
        with self._lock:
            control.check("queueing")
            started = time.monotonic()
            session, reused = self.pool.acquire(prompt)
            try:
                logits = self._prefill(session, prompt, reused, control)
                prefill_done = time.monotonic()
                generated, finish_reason, first_token = self._decode(
                    session, logits, max_new_tokens, control, guide, temperature, seed, on_token
                )
            finally:
                self.pool.release(session)
            finished = time.monotonic()
        return GenerationOutcome(
            token_ids=generated,
            finish_reason=finish_reason,
            usage=Usage(len(prompt), reused, len(prompt) - reused, output_tokens=len(generated)),
            prefill_seconds=prefill_done - started,
            decode_seconds=finished - prefill_done,
            first_token_seconds=first_token - started,
        )

    def _forward(self, session: _Session, token_ids: Sequence[int]) -> torch.Tensor:
        ids = torch.tensor([list(token_ids)], dtype=torch.long)
        output = self.model(
            input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_argument: session.cache}
        )
        session.tokens.extend(token_ids)
        logits: torch.Tensor = output.logits[0, -1].float()
        return logits

    def _prefill(
        self, session: _Session, prompt: Sequence[int], reused: int, control: GenerationControl
    ) -> torch.Tensor:
        logits: torch.Tensor | None = None
        position = reused
        while position < len(prompt):
            control.check("prefill")
            chunk = prompt[position : position + self.prefill_chunk_tokens]
            logits = self._forward(session, chunk)
            position += len(chunk)
        assert logits is not None  # the pool always leaves at least one prompt token to compute
        return logits

    def _decode(
        self,
        session: _Session,
        logits: torch.Tensor,
        max_new_tokens: int,
        control: GenerationControl,
        guide: LogitsGuide | None,
        temperature: float,
        seed: int | None,
        on_token: Callable[[int], bool] | None,
    ) -> tuple[list[int], str, float]:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        generated: list[int] = []
        first_token = time.monotonic()
        while True:
            control.check("decode")
            if guide is not None:
                guide.apply(logits)
            token = _sample(logits, temperature, generator)
            if not generated:
                first_token = time.monotonic()
            if guide is not None:
                guide.accept(token)
            if token in self.eos_token_ids:
                return generated, "stop", first_token
            generated.append(token)
            if on_token is not None and on_token(token):
                return generated, "stop", first_token
            if guide is not None and guide.finished:
                return generated, "stop", first_token
            if len(generated) >= max_new_tokens:
                return generated, "length", first_token
            logits = self._forward(session, [token])


def _sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
