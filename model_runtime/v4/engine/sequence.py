"""A request's life inside the engine: its tokens, its cache, its counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import torch

from deepscout.model_runtime.v4.engine.paged_cache import PagedSequenceCache
from deepscout.model_runtime.v4.engine.request import FinishReason, GenerationRequest, RequestOutput
from deepscout.model_runtime.v4.mtp_speculation import DraftStats

IN_FLIGHT = -1
"""The output token standing for one sampled on the device and not read yet."""


class SequenceStatus(StrEnum):
    WAITING = "waiting"  # not admitted yet, or preempted (its cache freed, to be recomputed)
    RUNNING = "running"  # holds a state slot and blocks
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """Prompt + generated tokens; the cache has processed `cache.num_tokens` of them. Output tokens equal
    to `IN_FLIGHT` (the last ones only) stand for tokens sampled on the device and not read yet (the
    engine's overlapped decode steps)."""

    request_id: str
    request: GenerationRequest
    arrival: int
    prompt: list[int]
    output: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    cache: PagedSequenceCache | None = None
    finish_reason: FinishReason | None = None
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    preemptions: int = 0
    prompt_logits: list[torch.Tensor] = field(default_factory=list)
    prompt_logits_upto: int = -1  # positions < this already have logits collected (-1: none yet)
    new_tokens: list[int] = field(default_factory=list)  # produced in the current step
    drafts: list[int] = field(default_factory=list)  # the MTP layer's guess of the tokens after `tokens`
    draft_stats: DraftStats = field(default_factory=DraftStats)

    @property
    def tokens(self) -> list[int]:
        """Prompt + output as one new list: O(length), so per-step code uses `token_slice`/`num_tokens`."""
        return self.prompt + self.output

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    def token_slice(self, start: int, stop: int) -> list[int]:
        """`tokens[start:stop]` (0 <= start <= stop), built from the two lists in O(stop - start)."""
        n = len(self.prompt)
        if stop <= n:
            return self.prompt[start:stop]
        if start >= n:
            return self.output[start - n : stop - n]
        return self.prompt[start:] + self.output[: stop - n]

    @property
    def num_processed(self) -> int:
        return 0 if self.cache is None else self.cache.num_tokens

    @property
    def pending(self) -> int:
        """Tokens still to run through the model before the next sample."""
        return self.num_tokens - self.num_processed

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def to_output(self) -> RequestOutput:
        logits = None
        if self.request.return_prompt_logits and self.prompt_logits:
            logits = torch.cat(self.prompt_logits)
        return RequestOutput(
            request_id=self.request_id,
            token_ids=[t for t in self.output if t != IN_FLIGHT],
            new_token_ids=list(self.new_tokens),
            logprobs=list(self.logprobs) if self.request.sampling.logprobs else None,
            finished=self.finished,
            finish_reason=self.finish_reason,
            prompt_tokens=len(self.prompt),
            reused_tokens=self.reused_tokens,
            prefilled_tokens=self.prefilled_tokens,
            preemptions=self.preemptions,
            prompt_logits=logits,
            drafted_tokens=self.draft_stats.drafted,
            accepted_tokens=self.draft_stats.accepted,
        )
