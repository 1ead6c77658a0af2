"""Which tokens of which sequences go into the next forward.

Per step, under a token budget (`max_tokens_per_step`): first one token for every decoding sequence, then
prefill chunks (at most `prefill_chunk` tokens of one sequence, cut to end on a block boundary when the
prefill goes on; with prefix caching the last chunk of a prompt also stops at the last snapshot boundary
before its last token, so the state there can be snapshotted for later reuse — by a request with the same
prompt too, which must recompute at least that token for its logits), then newly admitted requests in
arrival order.
With prefix caching a chunk also ends at the snapshot boundary at or below each of the request's
`checkpoints` (where a later prompt is likely to diverge), so the state there is snapshotted too.
Memory per step is bounded by the budget whatever the context length.

When blocks run out: with `pool_policy="queue"` a request is admitted only once all the blocks it can
ever need are allocated, so running sequences never run out; with `"preempt"` blocks are allocated as
needed and, when the pool is exhausted, the most recently admitted running sequence is preempted (its
cache freed, the sequence re-queued at the front to be recomputed).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from deepscout.model_runtime.v4.engine.cache_manager import CacheManager
from deepscout.model_runtime.v4.engine.engine_config import EngineConfig
from deepscout.model_runtime.v4.engine.sequence import Sequence, SequenceStatus


@dataclass
class Chunk:
    """`length` tokens of `seq` starting at its processed count; `sample` when they end its pending run."""

    seq: Sequence
    start: int
    length: int
    sample: bool

    @property
    def token_ids(self) -> list[int]:
        return self.seq.token_slice(self.start, self.start + self.length)


class Scheduler:
    def __init__(self, config: EngineConfig, caches: CacheManager) -> None:
        self.config = config
        self.caches = caches
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[Chunk]:
        budget = self.config.max_tokens_per_step
        chunks: list[Chunk] = []
        decoding = [s for s in self.running if s.pending == 1]
        prefilling = [s for s in self.running if s.pending > 1]
        for seq in decoding + prefilling:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted while making room for an earlier sequence
            chunk = self._plan(seq, budget, chunks)
            if chunk is not None:
                chunks.append(chunk)
                budget -= chunk.length
        while self.waiting and budget > 0 and len(self.running) < self.config.max_running:
            seq = self.waiting[0]
            if not self.caches.admit(seq):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            chunk = self._plan(seq, budget, chunks, admitting=True)
            if chunk is None:  # no room without preempting older sequences: back to the queue head
                self.caches.release(seq, keep_session=True)
                self.running.remove(seq)
                seq.status = SequenceStatus.WAITING
                self.waiting.appendleft(seq)
                break
            chunks.append(chunk)
            budget -= chunk.length
        return chunks

    def _plan(
        self, seq: Sequence, budget: int, chunks: list[Chunk], *, admitting: bool = False
    ) -> Chunk | None:
        assert seq.cache is not None
        start, pending = seq.cache.num_tokens, seq.pending
        length = min(pending, self.config.prefill_chunk, budget)
        if self.config.prefix_caching:
            length = self._checkpoint_cut(seq, start, length)
        if length > 1 and (length < pending or self.config.prefix_caching):
            # end on a block boundary (a snapshot boundary with prefix caching) when one lies inside
            step, end = self.caches.block_tokens, start + length
            if length == pending:
                step *= self.config.snapshot_every
                end -= 1  # the boundary before the prompt's last token, reusable by the same prompt
            aligned = end // step * step
            if start < aligned < start + length:
                length = aligned - start
        if admitting:
            if not self.caches.ensure_blocks(seq, start + length):
                return None
        elif not self._make_room(seq, start + length, chunks):
            return None
        return Chunk(seq, start, length, sample=length == pending)

    def _checkpoint_cut(self, seq: Sequence, start: int, length: int) -> int:
        """`length`, cut to end at the first snapshot boundary at or below a checkpoint inside the chunk."""
        step = self.caches.block_tokens * self.config.snapshot_every
        inside = [b for c in seq.request.checkpoints if start < (b := c // step * step) < start + length]
        return min(inside, default=start + length) - start

    def _make_room(self, seq: Sequence, num_tokens: int, chunks: list[Chunk]) -> bool:
        while not self.caches.ensure_blocks(seq, num_tokens):
            victim = self._victim(seq)
            self._preempt(victim, chunks)
            if victim is seq:
                return False
        return True

    def _victim(self, seq: Sequence) -> Sequence:
        """The most recently admitted running sequence (possibly `seq` itself)."""
        return max(self.running, key=lambda s: s.arrival)

    def _preempt(self, seq: Sequence, chunks: list[Chunk]) -> None:
        chunks[:] = [c for c in chunks if c.seq is not seq]
        self.caches.release(seq, keep_session=False)
        self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)
