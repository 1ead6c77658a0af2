"""Prefix cache: full 128-token blocks found by chained hashes, every hit verified by its tokens.

Block j of a sequence is keyed by `hash(key of block j-1, tokens of block j)`, so a key names the whole
prefix. A hash is only a lookup hint: a hit counts when the stored block holds exactly these tokens and its
recorded parent is the block matched one step earlier (same id *and* registration generation, so a parent
evicted and reused for other text never vouches for its old children). Colliding keys share a bucket.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from struct import pack

#: (key of the previous block or None for the first, tokens of this block) -> key
HashFn = Callable[[int | None, tuple[int, ...]], int]


def chain_hash(parent_key: int | None, tokens: tuple[int, ...]) -> int:
    """64-bit BLAKE2b of the parent key and the block's token ids."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(b"root" if parent_key is None else pack("<Q", parent_key))
    digest.update(pack(f"<{len(tokens)}q", *tokens))
    return int.from_bytes(digest.digest(), "little")


@dataclass(frozen=True)
class CachedBlock:
    key: int
    parent: tuple[int, int] | None  # (block id, generation) of the previous block
    tokens: tuple[int, ...]
    generation: int


class PrefixCache:
    """Maps chained keys to registered block ids (metadata only; the block manager owns the blocks)."""

    def __init__(self, block_tokens: int, hash_fn: HashFn = chain_hash) -> None:
        self.block_tokens = block_tokens
        self._hash = hash_fn
        self._buckets: dict[int, list[int]] = {}
        self._meta: dict[int, CachedBlock] = {}
        self._generation = 0
        self.collisions = 0  # lookups whose key matched a block holding other tokens or another parent

    def __contains__(self, block: int) -> bool:
        return block in self._meta

    def __len__(self) -> int:
        return len(self._meta)

    def match(self, tokens: Sequence[int]) -> list[int]:
        """The registered blocks covering the longest verified prefix of `tokens` (full blocks only)."""
        matched: list[int] = []
        key: int | None = None
        parent: tuple[int, int] | None = None
        for start in range(0, len(tokens) - self.block_tokens + 1, self.block_tokens):
            chunk = tuple(int(t) for t in tokens[start : start + self.block_tokens])
            key = self._hash(key, chunk)
            found = self._find(key, parent, chunk)
            if found is None:
                break
            matched.append(found)
            parent = (found, self._meta[found].generation)
        return matched

    def insert(self, block: int, parent_block: int | None, tokens: Sequence[int]) -> bool:
        """Register full `block` (its tokens, after `parent_block`). False when the parent is not registered
        (the prefix is not reachable) or an equal block is already registered."""
        chunk = tuple(int(t) for t in tokens)
        if len(chunk) != self.block_tokens:
            raise ValueError(f"a cached block holds exactly {self.block_tokens} tokens, got {len(chunk)}")
        if block in self._meta:
            raise ValueError(f"block {block} is already registered")
        parent: tuple[int, int] | None = None
        parent_key: int | None = None
        if parent_block is not None:
            meta = self._meta.get(parent_block)
            if meta is None:
                return False
            parent, parent_key = (parent_block, meta.generation), meta.key
        key = self._hash(parent_key, chunk)
        if self._find(key, parent, chunk, count_collisions=False) is not None:
            return False
        self._generation += 1
        self._meta[block] = CachedBlock(key, parent, chunk, self._generation)
        self._buckets.setdefault(key, []).append(block)
        return True

    def remove(self, block: int) -> None:
        meta = self._meta.pop(block)
        bucket = self._buckets[meta.key]
        bucket.remove(block)
        if not bucket:
            del self._buckets[meta.key]

    def _find(
        self,
        key: int,
        parent: tuple[int, int] | None,
        chunk: tuple[int, ...],
        *,
        count_collisions: bool = True,
    ) -> int | None:
        for block in self._buckets.get(key, ()):
            meta = self._meta[block]
            if meta.tokens == chunk and meta.parent == parent:
                return block
            if count_collisions:
                self.collisions += 1
        return None
