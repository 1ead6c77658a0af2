"""Speculative decoding in the engine (`EngineConfig.speculative="mtp"`; the rule is in `mtp_speculation.py`).

Each sequence's cache gets the MTP layer's own cache (`PagedSequenceCache.mtp`, contiguous, on the engine's
device) when its first forward starts at position 0; it then covers every position the main model
processes, so a session's next turn drafts too. A sequence whose cache starts later (a prefix-cache or
on-disk hit) has no MTP cache and decodes plainly. Before a step, `drafts` gives each decoding sequence its
draft (after `cache.mark()`); after the tokens were chosen and the caches rolled back, `draft_next` runs the
MTP layer over the positions every chunk kept and stores the sequences' next drafts.

Which rows speculate: greedy and seeded sampling alike (a token is chosen from its position's logits, seed
and position only, so verification is exact), but not rows with a `logits_processor` (a grammar may hold
state that must not see tokens later rolled back) — those decode plainly. Drafts ride on top of the
step's token budget (at most one per decoding sequence), and a draft is dropped when its block cannot be
allocated. The device decode step (CUDA graphs) is not used while speculating.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deepscout.model_runtime.v4.cache.contiguous import ContiguousSequenceCache
from deepscout.model_runtime.v4.engine.cache_manager import CacheManager
from deepscout.model_runtime.v4.engine.kv_pool import state_dtype
from deepscout.model_runtime.v4.engine.model_runner import StepLogits
from deepscout.model_runtime.v4.engine.paged_cache import PagedSequenceCache
from deepscout.model_runtime.v4.engine.scheduler import Chunk
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.mtp_speculation import DRAFT_TOKENS, MtpRow, check_mtp, mtp_drafts


class MtpSpeculator:
    """Drafts with the model's first MTP layer for the engine's decoding sequences."""

    def __init__(self, model: DeepseekV4Model, caches: CacheManager) -> None:
        check_mtp(model.args)
        self.model = model
        self.caches = caches

    def drafts(self, chunks: Sequence[Chunk]) -> list[list[int]]:
        """Per chunk, the drafts to verify after its token (marking those caches); MTP caches attached to
        caches that start now."""
        out: list[list[int]] = []
        for chunk in chunks:
            seq, cache = chunk.seq, _cache(chunk)
            if chunk.start == 0 and cache.mtp is None:
                cache.mtp = self._new_mtp_cache()
            room = seq.request.max_new_tokens - len(seq.output) - 1
            drafts = seq.drafts[: min(room, DRAFT_TOKENS)]
            speculates = (
                chunk.sample
                and chunk.length == 1
                and seq.request.sampling.logits_processor is None
                and bool(drafts)
                and self.caches.ensure_blocks(seq, chunk.start + 1 + len(drafts))
            )
            if speculates:
                cache.mark()
            out.append(drafts if speculates else [])
        return out

    @torch.no_grad()
    def draft_next(self, chunks: Sequence[Chunk], logits: StepLogits) -> None:
        """Run the MTP layer over the positions each chunk kept; set the decoding sequences' next drafts."""
        assert logits.streams is not None
        rows: list[MtpRow] = []
        drafting: list[Chunk] = []
        for chunk, seg in zip(chunks, logits.segments, strict=True):
            cache = _cache(chunk)
            if cache.mtp is None or cache.mtp.num_tokens != chunk.start:
                chunk.seq.drafts = []
                continue
            kept = cache.num_tokens - chunk.start
            next_ids = chunk.seq.token_slice(chunk.start + 1, cache.num_tokens + 1)
            rows.append(MtpRow(logits.streams[seg.offset : seg.offset + kept], chunk.start, next_ids))
            drafting.append(chunk)
        if not rows:
            return
        drafts = mtp_drafts(self.model, rows, [_cache(c) for c in drafting])
        for chunk, row, draft in zip(drafting, rows, drafts, strict=True):
            mtp = _cache(chunk).mtp
            assert mtp is not None
            mtp.advance(len(row.next_ids))
            chunk.seq.drafts = [draft] if chunk.seq.pending == 1 else []

    def _new_mtp_cache(self) -> ContiguousSequenceCache:
        args, config = self.model.args, self.caches.config
        return ContiguousSequenceCache(
            args.mtp_layer_types,
            head_dim=args.head_dim,
            index_head_dim=args.index_head_dim,
            sliding_window=args.sliding_window,
            dtype=state_dtype(config.kv_dtype),
            device=config.device,
        )


def _cache(chunk: Chunk) -> PagedSequenceCache:
    cache = chunk.seq.cache
    assert cache is not None
    return cache
