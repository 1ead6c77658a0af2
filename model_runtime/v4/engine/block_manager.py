"""Allocation and reference counting of the paged KV blocks (plain Python; the tensors live in `kv_pool`).

A block covers lcm(m, m') = 128 source tokens of every compressed layer at once (per CSA layer 32 main
entries + 32 indexer keys, per HCA layer 1 entry). A block is *free*, *in use* (refcount > 0: held by
running sequences or sessions, shared when their prefixes match) or *cached* (refcount 0 but registered in
the prefix cache, evicted least-recently-used first when a fresh block is needed).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.engine.prefix_cache import HashFn, PrefixCache, chain_hash


class PoolExhausted(DeepscoutError, RuntimeError):
    """Not enough free or evictable blocks; free sequences, raise EngineConfig.num_blocks, or queue."""


class BlockUsageError(ValueError):
    """A block was released more often than acquired, or an unknown block id was used."""


class BlockManager:
    """A pool of `num_blocks` block ids with refcounts, a free list and an LRU of cached blocks."""

    def __init__(
        self,
        num_blocks: int,
        block_tokens: int = 128,
        *,
        hash_fn: HashFn = chain_hash,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_tokens = block_tokens
        self.prefix = PrefixCache(block_tokens, hash_fn)
        self._refs = [0] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._evictable: OrderedDict[int, None] = OrderedDict()
        self._on_evict = on_evict
        self.evictions = 0

    # ------------------------------------------------------------------ counts
    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now (free + cached-but-unused)."""
        return len(self._free) + len(self._evictable)

    @property
    def num_cached_unused(self) -> int:
        return len(self._evictable)

    def refcount(self, block: int) -> int:
        self._check(block)
        return self._refs[block]

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold the compressed entries of `num_tokens` tokens."""
        return -(-num_tokens // self.block_tokens)

    # ------------------------------------------------------------------ allocation
    def allocate(self, n: int) -> list[int]:
        """`n` fresh blocks with refcount 1 (all or nothing); evicts cached blocks LRU-first if needed."""
        if n > self.num_free:
            raise PoolExhausted(
                f"need {n} KV blocks, {self.num_free} of {self.num_blocks} are free or evictable"
            )
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._evictable.popitem(last=False)
                self.prefix.remove(block)
                self.evictions += 1
                if self._on_evict is not None:
                    self._on_evict(block)
            self._refs[block] = 1
            out.append(block)
        return out

    def acquire(self, blocks: Iterable[int]) -> None:
        """Add a reference to each block (a sequence sharing cached or another sequence's blocks)."""
        for block in blocks:
            self._check(block)
            if self._refs[block] == 0:
                if block not in self._evictable:
                    raise BlockUsageError(f"block {block} is free; only used or cached blocks can be shared")
                del self._evictable[block]
            self._refs[block] += 1

    def release(self, blocks: Iterable[int]) -> None:
        """Drop one reference from each block; unreferenced blocks become cached (if registered) or free."""
        for block in blocks:
            self._check(block)
            if self._refs[block] <= 0:
                raise BlockUsageError(f"block {block} released more often than acquired")
            self._refs[block] -= 1
            if self._refs[block] == 0:
                if block in self.prefix:
                    self._evictable[block] = None
                else:
                    self._free.append(block)

    # ------------------------------------------------------------------ prefix cache
    def register(self, block: int, parent_block: int | None, tokens: Sequence[int]) -> bool:
        """Make a full, in-use block findable by its prefix. False if it was not registered (its parent is
        not registered, or an identical block already is)."""
        self._check(block)
        if self._refs[block] == 0:
            raise BlockUsageError(f"block {block} is not in use; register blocks while holding them")
        return self.prefix.insert(block, parent_block, tokens)

    def is_registered(self, block: int) -> bool:
        return block in self.prefix

    def match(self, tokens: Sequence[int]) -> list[int]:
        """Registered blocks of the longest verified full-block prefix of `tokens` (no references taken;
        cached ones are refreshed in the LRU)."""
        blocks = self.prefix.match(tokens)
        for block in blocks:
            if block in self._evictable:
                self._evictable.move_to_end(block)
        return blocks

    def _check(self, block: int) -> None:
        if not 0 <= block < self.num_blocks:
            raise BlockUsageError(f"block id {block} is outside the pool [0, {self.num_blocks})")
