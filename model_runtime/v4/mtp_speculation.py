"""Speculative decoding with V4's MTP layer: draft with the MTP layer, verify with one forward of the main
model, keep the longest agreeing prefix, roll the caches back for the rest (cache protocol v2).

The rule, per sequence and step: the main model has processed positions `< N` and `t_N` is the last token
chosen. The MTP layer drafted `d_{N+1}` from the main model's stream at `N - 1` and `t_N`. The verify forward
runs `[t_N, d_{N+1}]` at positions `N, N+1` (after `cache.mark()`); the token chosen from each position's
logits is exactly what plain decoding would choose there as long as every earlier draft was accepted, so
the chosen tokens are taken up to and including the first one that differs from its draft (all of them
when every draft agrees: the last one is a bonus token), and the cache is rolled back to the positions
whose inputs were right. Then the MTP layer runs over the positions the main model kept (their streams from
the verify forward, the next token of each as its input) and drafts the next token from the last of them.
Its cache thus always covers exactly the positions the main model processed, and is never rolled back.

Drafts come from the first MTP layer only, one token per step (V4 ships one MTP layer); the output equals
plain decoding's whatever the drafts are, so random weights only lower the acceptance rate (to about 0).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.cache.protocol import SequenceCache
from deepscout.model_runtime.v4.model.packing import RowSegment
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import ModelArgs

DRAFT_TOKENS = 1
"""Tokens drafted per sequence and step (by the first MTP layer)."""


class NoMtpLayerError(DeepscoutError, ValueError):
    """Speculative decoding with MTP was asked for, but the model has no MTP layer."""


def check_mtp(args: ModelArgs) -> None:
    """Raise `NoMtpLayerError` unless the model `args` describe has an MTP layer to draft with."""
    if args.num_mtp_layers == 0:
        raise NoMtpLayerError(
            "speculative decoding with MTP needs an MTP layer; this model has none (use speculative='off')"
        )


@dataclass
class DraftStats:
    """Drafted and accepted token counts (a draft is accepted when the token chosen at its position is it)."""

    drafted: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / drafted, or None before any draft."""
        return self.accepted / self.drafted if self.drafted else None

    def add(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted


@dataclass(frozen=True)
class MtpRow:
    """One sequence's input to the MTP layer: the main model's streams `[n, hc, dim]` at positions
    `start, ..., start + n - 1` and the token that follows each position (`next_ids`, n of them)."""

    streams: torch.Tensor
    start: int
    next_ids: Sequence[int]


def accepted_prefix(drafts: Sequence[int], chosen: Sequence[int]) -> list[int]:
    """The tokens a verify step yields: `chosen[i]` is the token chosen from the logits at the i-th verified
    position (len(drafts) + 1 of them); taken up to the first that differs from its draft, inclusive."""
    kept = 0
    while kept < len(drafts) and chosen[kept] == drafts[kept]:
        kept += 1
    return list(chosen[: kept + 1])


def accepted_count(drafts: Sequence[int], emitted: Sequence[int]) -> int:
    """How many drafts the emitted tokens confirm (they agree on a prefix)."""
    return sum(1 for draft, token in zip(drafts, emitted, strict=False) if draft == token)


def mtp_drafts(model: DeepseekV4Model, rows: Sequence[MtpRow], caches: Sequence[SequenceCache]) -> list[int]:
    """Run the first MTP layer over each row (its cache layer `num_hidden_layers` takes the positions) and
    return each row's greedy draft: the token after the one following its last position."""
    segments, offset = [], 0
    for row in rows:
        segments.append(RowSegment(offset, row.start, len(row.next_ids)))
        offset += len(row.next_ids)
    device = rows[0].streams.device
    next_ids = torch.tensor([t for row in rows for t in row.next_ids], dtype=torch.long, device=device)
    streams = torch.cat([row.streams for row in rows])
    logits = model.forward_mtp(next_ids, streams, segments, caches)
    last = torch.tensor([s.offset + s.length - 1 for s in segments], device=logits.device)
    drafts: list[int] = logits[last].argmax(dim=-1).tolist()
    return drafts


@dataclass(frozen=True)
class SpeculativeResult:
    """New ids, the prompt's last-position logits, prefill and decode seconds, and the draft counts."""

    new_ids: list[int]
    last_prompt_logits: torch.Tensor
    prefill_seconds: float
    decode_seconds: float
    stats: DraftStats


@torch.no_grad()
def speculative_greedy_generate(
    model: DeepseekV4Model,
    cache: SequenceCache,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] = (),
) -> SpeculativeResult:
    """Greedy decoding of one sequence over `cache` (empty, covering the MTP layers) with MTP drafts: the
    same tokens as plain greedy decoding, in fewer forwards when drafts are accepted."""
    check_mtp(model.args)
    stats = DraftStats()
    device = model.embed.weight.device
    prompt = list(prompt_ids)
    start = time.perf_counter()
    streams, _ = model.forward_streams(torch.tensor([prompt], device=device), [cache])
    last_prompt_logits = model.logits(streams[-1:])[0].float()
    prefill_seconds = time.perf_counter() - start
    start = time.perf_counter()
    new_ids: list[int] = []
    emitted, row = [int(last_prompt_logits.argmax())], MtpRow(streams, 0, prompt[1:])
    while max_new_tokens:
        new_ids.extend(emitted)
        if new_ids[-1] in stop_ids or len(new_ids) >= max_new_tokens:
            break
        row = MtpRow(row.streams, row.start, [*row.next_ids, emitted[-1]])
        (draft,) = mtp_drafts(model, [row], [cache])
        drafts = [draft][: max_new_tokens - len(new_ids) - 1]
        processed = cache.num_tokens
        cache.mark()
        streams, _ = model.forward_streams(torch.tensor([[new_ids[-1], *drafts]], device=device), [cache])
        chosen = model.logits(streams).float().argmax(dim=-1).tolist()
        emitted = _until_stop(accepted_prefix(drafts, chosen), stop_ids)
        stats.add(len(drafts), accepted_count(drafts, emitted))
        cache.rollback(1 + len(drafts) - len(emitted))
        row = MtpRow(streams[: len(emitted)], processed, emitted[:-1])
    return SpeculativeResult(
        new_ids[:max_new_tokens], last_prompt_logits, prefill_seconds, time.perf_counter() - start, stats
    )


def _until_stop(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
    """`tokens` up to and including the first stop id."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: i + 1]
    return tokens
