"""What goes into the engine (`GenerationRequest`, `SamplingParams`) and what comes out (`RequestOutput`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from deepscout.errors import DeepscoutError

#: Called per row before sampling with (tokens generated so far, logits `[vocab]` float32); returns the
#: logits to sample from (e.g. with -inf outside a grammar's allowed set).
LogitsProcessor = Callable[[Sequence[int], torch.Tensor], torch.Tensor]


class RequestError(DeepscoutError, ValueError):
    """A request the engine cannot take as given (the message names the fix)."""


class FinishReason(StrEnum):
    STOP = "stop"  # a stop token was sampled (it is included in the output tokens)
    LENGTH = "length"  # max_new_tokens reached
    CANCELLED = "cancelled"  # cancel event set or Engine.cancel(request_id)
    DEADLINE = "deadline"  # time.monotonic() passed the request's deadline between two steps


@dataclass(frozen=True)
class SamplingParams:
    """Greedy when `temperature == 0`; otherwise temperature + nucleus (top-p) sampling, seeded per request
    and per position, so a preempted and recomputed request samples the same tokens again."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    logprobs: bool = False
    logits_processor: LogitsProcessor | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise RequestError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationRequest:
    """One generation: the full prompt's token ids (for a session turn: the whole conversation so far;
    the engine reuses what it already holds and prefills only the rest).

    `checkpoints` are prompt positions (token counts, in [0, len(prompt_ids)]) where a later prompt is
    likely to diverge from this one (e.g. where the last message starts). With prefix caching the prefill
    ends a chunk at the snapshot boundary at or below each, so the state there is kept and a later prompt
    sharing the prefix up to it reuses it.
    """

    prompt_ids: Sequence[int]
    max_new_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: Sequence[int] = ()
    deadline: float | None = None  # a time.monotonic() value
    cancel: threading.Event | None = None
    session_id: str | None = None
    return_prompt_logits: bool = False  # float32 logits of every prefilled position (tests, scoring)
    checkpoints: Sequence[int] = ()

    def validate(self, vocab_size: int) -> None:
        if len(self.prompt_ids) == 0:
            raise RequestError("prompt_ids is empty; a request needs at least one token")
        if self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 <= min(self.prompt_ids) <= max(self.prompt_ids) < vocab_size:  # in C: 1M ids in ms
            bad = [t for t in self.prompt_ids if not 0 <= int(t) < vocab_size]
            raise RequestError(f"prompt token ids must be in [0, {vocab_size}); got {bad[:5]}")
        outside = [c for c in self.checkpoints if not 0 <= c <= len(self.prompt_ids)]
        if outside:
            raise RequestError(
                f"checkpoints must be prompt positions in [0, {len(self.prompt_ids)}]; got {outside[:5]}"
            )


@dataclass
class RequestOutput:
    """The state of one request after a step (or at the end of `generate`).

        `new_token_ids` are the tokens produced in this step; `token_ids` all generated so far.
        Counters: `prompt_tokens` = len(prompt); `reused_tokens` = prompt tokens taken from a session or the
        prefix cache at admission; `prefilled_tokens` = tokens run through the model in prefill (recomputation
        after a preemption included). `prompt_logits` (`[prefilled, vocab]`) only with return_prompt_logits.
    Speculative decoding (`EngineConfig.speculative="mtp"`): `drafted_tokens` drafted by the MTP layer for
    this request, `accepted_tokens` of them confirmed by the main model.
    """

    request_id: str
    token_ids: list[int]
    new_token_ids: list[int]
    logprobs: list[float] | None
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    reused_tokens: int
    prefilled_tokens: int
    preemptions: int = 0
    prompt_logits: torch.Tensor | None = None
    drafted_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / drafted tokens of speculative decoding (None when nothing was drafted)."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None
