"""Who holds which cache: admission with the longest reusable prefix, block growth, registration of full
blocks and state snapshots, idle sessions, and release.

Reuse at admission, best of:
* the request's session, when the tokens it processed are a prefix of the new prompt (any length: its
  live state continues where it stopped, so only the new tokens are prefilled);
* the prefix cache: the longest verified chain of registered full blocks that ends at a boundary with a
  state snapshot (the state there is restored into a fresh slot, the blocks are shared);
* the session's on-disk KV (`spill_dir`), written when the idle session was evicted from memory.
At least one prompt token is always left to compute, since its logits give the first sample.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from deepscout.model_runtime.v4.engine.block_manager import BlockManager, PoolExhausted
from deepscout.model_runtime.v4.engine.engine_config import EngineConfig
from deepscout.model_runtime.v4.engine.kv_pool import KVBlockPool, state_dtype
from deepscout.model_runtime.v4.engine.paged_cache import PagedSequenceCache
from deepscout.model_runtime.v4.engine.prefix_cache import HashFn, chain_hash
from deepscout.model_runtime.v4.engine.sequence import Sequence
from deepscout.model_runtime.v4.engine.spill import SessionSpill, SpilledSession
from deepscout.model_runtime.v4.engine.state_cache import SnapshotStore, StatePool
from deepscout.model_runtime.v4.model_config import ModelArgs


@dataclass
class Session:
    """A finished conversation turn kept for the next one: its cache and the tokens it processed."""

    cache: PagedSequenceCache
    tokens: list[int]


class CacheManager:
    def __init__(self, args: ModelArgs, config: EngineConfig, *, hash_fn: HashFn = chain_hash) -> None:
        self.config = config
        self.kv = KVBlockPool(args, config.num_blocks, config.kv_dtype, config.indexer_format, config.device)
        self.states = StatePool(args, config.num_state_slots, state_dtype(config.kv_dtype), config.device)
        self.snapshots = SnapshotStore(config.snapshot_budget_bytes)
        self.blocks = BlockManager(
            config.num_blocks, self.kv.block_tokens, hash_fn=hash_fn, on_evict=self.snapshots.discard
        )
        self.block_tokens = self.kv.block_tokens
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.spill = None if config.spill_dir is None else SessionSpill(config.spill_dir, self.kv)

    # ------------------------------------------------------------------ admission
    def admit(self, seq: Sequence) -> bool:
        """Give `seq` a cache holding the longest reusable prefix of its tokens. False (nothing taken)
        when no state slot can be freed."""
        tokens = seq.tokens
        limit = len(tokens) - 1
        session = self._take_session(seq.request.session_id, tokens, limit)
        if session is None and not self.states.num_free and not self._evict_session():
            return False
        matched: list[int] = []
        reuse_blocks = 0
        if self.config.prefix_caching:
            matched = self.blocks.match(tokens)
            reuse_blocks = self._restorable(matched, limit)
        spilled = None if session is not None else self._spilled(seq.request.session_id, tokens, limit)
        if session is not None and len(session.tokens) >= reuse_blocks * self.block_tokens:
            seq.cache = session.cache
        elif spilled is not None and len(spilled.tokens) > reuse_blocks * self.block_tokens:
            seq.cache = self._load_spilled(spilled)
            assert self.spill is not None and seq.request.session_id is not None
            self.spill.discard(seq.request.session_id)  # the session lives in memory again
        else:
            if session is not None:
                self._drop_cache(session.cache)
            slot = self.states.allocate()
            cache = PagedSequenceCache(self.kv, self.states, slot)
            if reuse_blocks:
                shared = matched[:reuse_blocks]
                self.blocks.acquire(shared)
                cache.extend_blocks(shared)
                snapshot = self.snapshots.get(shared[-1])
                assert snapshot is not None
                self.states.restore(slot, snapshot)
                cache.set_position(reuse_blocks * self.block_tokens)
                cache.registered_blocks = reuse_blocks
            seq.cache = cache
        seq.reused_tokens = seq.cache.num_tokens if seq.preemptions == 0 else seq.reused_tokens
        if self.config.pool_policy == "queue":
            total = len(seq.prompt) + seq.request.max_new_tokens
            if not self.ensure_blocks(seq, total):
                self.release(seq, keep_session=False)
                return False
        return True

    def _take_session(self, session_id: str | None, tokens: list[int], limit: int) -> Session | None:
        if session_id is None or session_id not in self.sessions:
            return None
        session = self.sessions.pop(session_id)
        n = len(session.tokens)
        if n <= limit and tokens[:n] == session.tokens:
            return session
        self._drop_cache(session.cache)  # diverged: its full blocks stay in the prefix cache
        return None

    def _spilled(self, session_id: str | None, tokens: list[int], limit: int) -> SpilledSession | None:
        """The session's on-disk KV when it covers a prefix of `tokens` leaving one to compute, and the
        blocks to load it are free."""
        if self.spill is None or session_id is None:
            return None
        spilled = self.spill.peek(session_id)
        if spilled is None:
            return None
        n = len(spilled.tokens)
        if n > limit or tokens[:n] != spilled.tokens:
            return None
        while self.blocks.blocks_for(n) > self.blocks.num_free:
            if not self._evict_session():  # the active request outranks idle sessions
                return None
        return spilled

    def _load_spilled(self, spilled: SpilledSession) -> PagedSequenceCache:
        assert self.spill is not None
        count = self.blocks.blocks_for(len(spilled.tokens))
        blocks = self.blocks.allocate(count)
        self.spill.load_blocks(spilled, count, blocks)
        cache = PagedSequenceCache(self.kv, self.states, self.states.allocate(), blocks)
        self.states.restore(cache.slot, spilled.snapshot)
        cache.set_position(len(spilled.tokens))
        return cache

    def _spill_session(self, session_id: str, session: Session) -> None:
        """Write the session's blocks up to its last checkpoint (a snapshot boundary) to disk."""
        assert self.spill is not None
        cache, bt = session.cache, self.block_tokens
        full = cache.num_tokens // bt
        for j in range(full, 0, -1):
            if j * bt == cache.num_tokens:
                snapshot = self.states.capture(cache.slot, cache.num_tokens)
            else:
                found = self.snapshots.get(cache.block_table[j - 1])
                if found is None:
                    continue
                snapshot = found
            self.spill.save(session_id, session.tokens[: j * bt], cache.block_table[:j], snapshot)
            return

    def _restorable(self, matched: list[int], limit: int) -> int:
        """How many of the matched blocks can be reused: the longest run ending at a snapshot."""
        for j in range(len(matched), 0, -1):
            if j * self.block_tokens <= limit and matched[j - 1] in self.snapshots:
                return j
        return 0

    # ------------------------------------------------------------------ growth
    def ensure_blocks(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the block table to hold `num_tokens` tokens; False when the pool cannot provide them."""
        assert seq.cache is not None
        need = self.blocks.blocks_for(num_tokens) - len(seq.cache.block_table)
        if need <= 0:
            return True
        while True:
            try:
                seq.cache.extend_blocks(self.blocks.allocate(need))
                return True
            except PoolExhausted:
                if not self._evict_session():
                    return False

    def after_forward(self, seq: Sequence) -> None:
        """Register the newly completed blocks in the prefix cache; snapshot the state at a boundary."""
        cache = seq.cache
        if cache is None or not self.config.prefix_caching:
            return
        bt = self.block_tokens
        full = cache.num_tokens // bt
        for j in range(cache.registered_blocks, full):
            block = cache.block_table[j]
            if not self.blocks.is_registered(block):
                parent = cache.block_table[j - 1] if j else None
                self.blocks.register(block, parent, seq.token_slice(j * bt, (j + 1) * bt))
        cache.registered_blocks = max(cache.registered_blocks, full)
        if cache.num_tokens % bt == 0 and full and full % self.config.snapshot_every == 0:
            last = cache.block_table[full - 1]
            if self.blocks.is_registered(last) and last not in self.snapshots:
                self.snapshots.put(last, self.states.capture(cache.slot, cache.num_tokens))

    # ------------------------------------------------------------------ release
    def release(self, seq: Sequence, *, keep_session: bool) -> None:
        """Free `seq`'s cache, or keep it as its session's cache for the next turn."""
        cache = seq.cache
        if cache is None:
            return
        seq.cache = None
        session_id = seq.request.session_id
        if keep_session and session_id is not None and self.config.max_idle_sessions > 0:
            old = self.sessions.pop(session_id, None)
            if old is not None:
                self._drop_cache(old.cache)
            self.sessions[session_id] = Session(cache, seq.tokens[: cache.num_tokens])
            while len(self.sessions) > self.config.max_idle_sessions:
                self._evict_session()
        else:
            self._drop_cache(cache)

    def _evict_session(self) -> bool:
        """Free the least recently used idle session; False when there is none."""
        if not self.sessions:
            return False
        session_id, session = self.sessions.popitem(last=False)
        if self.spill is not None:
            self._spill_session(session_id, session)
        self._drop_cache(session.cache)
        return True

    def _drop_cache(self, cache: PagedSequenceCache) -> None:
        self.blocks.release(cache.block_table)
        self.states.free(cache.slot)
