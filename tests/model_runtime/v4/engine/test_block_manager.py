"""Block manager and prefix cache: allocation, refcounts, caching/eviction, collisions, exhaustion."""

from __future__ import annotations

import pytest

from deepscout.model_runtime.v4.engine.block_manager import BlockManager, BlockUsageError, PoolExhausted
from deepscout.model_runtime.v4.engine.prefix_cache import chain_hash

BT = 4  # small blocks keep these tests readable; the engine uses 128


def _register_chain(bm: BlockManager, tokens: list[int]) -> list[int]:
    blocks = bm.allocate(len(tokens) // BT)
    for j, block in enumerate(blocks):
        assert bm.register(block, blocks[j - 1] if j else None, tokens[j * BT : (j + 1) * BT])
    return blocks


def test_allocate_and_release_return_blocks_to_the_free_list() -> None:
    bm = BlockManager(6, BT)
    a = bm.allocate(4)
    assert len(set(a)) == 4 and bm.num_free == 2
    assert all(bm.refcount(b) == 1 for b in a)
    bm.release(a[:2])
    assert bm.num_free == 4 and bm.refcount(a[0]) == 0
    with pytest.raises(BlockUsageError):
        bm.release([a[0]])


def test_shared_blocks_are_refcounted() -> None:
    bm = BlockManager(4, BT)
    blocks = _register_chain(bm, [1, 2, 3, 4, 5, 6, 7, 8])
    bm.acquire(blocks)  # a second sequence shares the prefix
    assert [bm.refcount(b) for b in blocks] == [2, 2]
    bm.release(blocks)
    assert [bm.refcount(b) for b in blocks] == [1, 1] and bm.num_free == 2
    bm.release(blocks)
    # unreferenced but registered: cached, still matchable, and counted as allocatable
    assert bm.num_free == 4 and bm.num_cached_unused == 2
    assert bm.match([1, 2, 3, 4, 5, 6, 7, 8, 9]) == blocks
    bm.acquire(blocks[:1])
    assert bm.refcount(blocks[0]) == 1 and bm.num_cached_unused == 1


def test_acquiring_a_free_block_is_an_error() -> None:
    bm = BlockManager(2, BT)
    with pytest.raises(BlockUsageError, match="free"):
        bm.acquire([0])
    with pytest.raises(BlockUsageError, match="outside"):
        bm.refcount(7)


def test_pool_exhaustion_is_reported_and_allocation_is_all_or_nothing() -> None:
    bm = BlockManager(3, BT)
    bm.allocate(2)
    with pytest.raises(PoolExhausted, match="need 2 KV blocks, 1 of 3"):
        bm.allocate(2)
    assert bm.num_free == 1
    assert len(bm.allocate(1)) == 1


def test_cached_blocks_are_evicted_lru_first_with_callback() -> None:
    evicted: list[int] = []
    bm = BlockManager(3, BT, on_evict=evicted.append)
    first = _register_chain(bm, [1, 1, 1, 1])
    second = _register_chain(bm, [2, 2, 2, 2])
    bm.release(first)
    bm.release(second)
    bm.match([1, 1, 1, 1])  # touch `first`: `second` is now least recently used
    fresh = bm.allocate(2)  # one free block, then one eviction
    assert evicted == second and second[0] in fresh
    assert bm.match([2, 2, 2, 2]) == [] and bm.match([1, 1, 1, 1]) == first
    assert bm.evictions == 1


def test_match_verifies_the_chain_and_stops_at_the_first_miss() -> None:
    bm = BlockManager(8, BT)
    blocks = _register_chain(bm, list(range(12)))
    assert bm.match(list(range(12))) == blocks
    assert bm.match(list(range(10))) == blocks[:2]  # partial last block is never matched
    assert bm.match([*range(4), 9, 9, 9, 9, *range(8, 12)]) == blocks[:1]  # same 3rd block, other 2nd
    assert bm.match([9, *range(1, 12)]) == []


def test_hash_collisions_are_resolved_by_the_tokens() -> None:
    bm = BlockManager(8, BT, hash_fn=lambda parent, tokens: 42)  # every block collides
    a = _register_chain(bm, [1, 2, 3, 4, 5, 6, 7, 8])
    b = _register_chain(bm, [9, 9, 9, 9])
    assert bm.match([1, 2, 3, 4, 5, 6, 7, 8]) == a
    assert bm.match([9, 9, 9, 9, 1, 2, 3, 4]) == b
    assert bm.match([1, 2, 3, 5]) == []
    # block [5..8] after [9,9,9,9] has the same key and tokens as a[1] but another parent: no false hit
    assert bm.match([9, 9, 9, 9, 5, 6, 7, 8]) == b
    assert bm.prefix.collisions > 0


def test_reused_parent_id_does_not_vouch_for_its_old_children() -> None:
    bm = BlockManager(2, BT, hash_fn=lambda parent, tokens: 7)
    parent, child = _register_chain(bm, [1, 1, 1, 1, 2, 2, 2, 2])
    bm.release([parent])  # parent becomes evictable, child stays in use
    (again,) = bm.allocate(1)  # evicts the parent and reuses its id
    assert again == parent
    assert bm.register(again, None, [3, 3, 3, 3])
    # same id, same (colliding) key, child tokens equal: the generation check rejects the stale child
    assert bm.match([3, 3, 3, 3, 2, 2, 2, 2]) == [again]
    assert bm.refcount(child) == 1


def test_register_rules() -> None:
    bm = BlockManager(4, BT)
    a, b, c = bm.allocate(3)
    assert not bm.register(b, a, [1, 2, 3, 4])  # parent not registered: unreachable, not registered
    assert bm.register(a, None, [1, 2, 3, 4])
    assert not bm.register(c, None, [1, 2, 3, 4])  # an equal block is already registered
    with pytest.raises(ValueError, match="exactly 4 tokens"):
        bm.register(b, a, [1, 2])
    bm.release([c])
    with pytest.raises(BlockUsageError, match="not in use"):
        bm.register(c, a, [5, 6, 7, 8])


def test_chain_hash_depends_on_parent_and_tokens() -> None:
    root = chain_hash(None, (1, 2, 3))
    assert root == chain_hash(None, (1, 2, 3))
    assert root != chain_hash(None, (1, 2, 4))
    assert chain_hash(root, (1, 2, 3)) != root
