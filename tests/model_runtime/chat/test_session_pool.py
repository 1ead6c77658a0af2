"""SessionPool bookkeeping on real DynamicCaches (tiny config, no model): reuse, crop, branch, evict."""

from __future__ import annotations

import torch
from transformers import LlamaConfig

from deepscout.model_runtime.chat.backends.hf_session import SessionPool, common_prefix_length

CONFIG = LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, hidden_size=8)


def fill(session, tokens):
    """Append tokens to a session as a forward pass would: one cache entry (valued by the token) each."""
    for token in tokens:
        for layer in range(CONFIG.num_hidden_layers):
            entry = torch.full((1, 1, 1, 4), float(token))
            session.cache.update(entry, entry.clone(), layer)
        session.tokens.append(token)


def pool_holding(tokens, max_sessions):
    """A pool of ``max_sessions`` holding one session of ``tokens``."""
    pool = SessionPool(CONFIG, max_sessions=max_sessions)
    session, _ = pool.acquire(tokens)
    fill(session, tokens)
    pool.release(session)
    return pool


def cached_values(session):
    return session.cache.layers[0].keys[0, 0, :, 0].int().tolist()


def test_common_prefix_length():
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix_length([], [1]) == 0


def test_append_reuses_the_whole_prefix_and_keeps_one_token_to_compute():
    pool = SessionPool(CONFIG, max_sessions=2)
    session, reused = pool.acquire([1, 2, 3])
    assert reused == 0
    fill(session, [1, 2, 3, 7])
    pool.release(session)
    session, reused = pool.acquire([1, 2, 3, 7, 8, 9])
    assert reused == 4 and cached_values(session) == [1, 2, 3, 7]
    fill(session, [8, 9])
    pool.release(session)
    session, reused = pool.acquire([1, 2, 3, 7, 8, 9])  # the same prompt again: last token recomputed
    assert reused == 5 and cached_values(session) == [1, 2, 3, 7, 8]


def test_a_changed_prompt_branches_off_a_copy_while_there_is_room():
    pool = pool_holding([1, 2, 3, 4], max_sessions=2)
    branch, reused = pool.acquire([1, 2, 9])
    assert reused == 2 and branch.tokens == [1, 2] and cached_values(branch) == [1, 2]
    fill(branch, [9])
    pool.release(branch)
    original, reused = pool.acquire([1, 2, 3, 4, 5])
    assert reused == 4 and cached_values(original) == [1, 2, 3, 4]  # the longer conversation survived


def test_a_full_pool_crops_in_place_and_evicts_the_least_recent():
    pool = pool_holding([1, 2, 3, 4], max_sessions=1)
    cropped, reused = pool.acquire([1, 2, 8])
    assert reused == 2 and cached_values(cropped) == [1, 2] and len(pool) == 0
    fill(cropped, [8])
    pool.release(cropped)
    fresh, reused = pool.acquire([5, 6])
    assert reused == 0 and fresh.cache.get_seq_length() == 0
    fill(fresh, [5])
    pool.release(fresh)
    assert len(pool) == 1 and pool.acquire([1, 2, 8, 0])[1] == 0  # [1, 2, 8] was evicted


def test_idle_sessions_are_kept_within_the_memory_budget():
    one_session = 2 * CONFIG.num_hidden_layers * 3 * 4 * 4  # keys + values of 3 tokens, float32
    pool = SessionPool(CONFIG, max_sessions=8, max_bytes=2 * one_session)
    for start in (10, 20, 30):
        session, _ = pool.acquire([start, start + 1, start + 2, start + 3])
        fill(session, [start, start + 1, start + 2])
        pool.release(session)
    assert len(pool) == 2
    _, reused = pool.acquire([10, 11, 12, 13])
    assert reused == 0  # the oldest went first


def test_longest_prefix_looks_at_idle_sessions_without_taking_one():
    pool = pool_holding([1, 2, 3, 4], max_sessions=2)
    assert pool.longest_prefix([1, 2, 3, 9]) == 3
    assert pool.longest_prefix([7]) == 0
    assert len(pool) == 1
    assert SessionPool(CONFIG, max_sessions=1).longest_prefix([1]) == 0
