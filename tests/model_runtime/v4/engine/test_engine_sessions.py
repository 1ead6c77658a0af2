"""Sessions and prefix reuse: later turns prefill only new tokens and match a fresh full prefill."""

from __future__ import annotations

from typing import Any

import torch

from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model


def _turn(engine: Engine, tokens: list[int], session: str | None, max_new: int = 4) -> Any:
    request = GenerationRequest(tokens, max_new_tokens=max_new, session_id=session, return_prompt_logits=True)
    return engine.generate([request])[0]


def test_session_over_three_turns_matches_full_prefill(tiny_model: DeepseekV4Model, eh: Any) -> None:
    engine = Engine(
        tiny_model, EngineConfig(prefill_chunk=96, num_blocks=32, num_state_slots=2, max_running=2)
    )
    conversation = eh.random_tokens(200, seed=1)
    previous_len = 0
    for turn in range(3):
        out = _turn(engine, conversation, "chat")
        ref = eh.reference_logits(tiny_model, conversation)
        if turn == 0:
            assert out.reused_tokens == 0 and out.prefilled_tokens == len(conversation)
        else:
            # everything but the last sampled token of the previous turn (never fed) and the new text
            assert out.reused_tokens == previous_len - 1
            assert out.prefilled_tokens == len(conversation) - out.reused_tokens
        eh.assert_close(out.prompt_logits, ref[out.reused_tokens :])
        conversation = conversation + out.token_ids
        # generated tokens are greedy under a full prefill of the extended text as well
        full = eh.reference_logits(tiny_model, conversation)
        assert full[-len(out.token_ids) - 1 : -1].argmax(-1).tolist() == out.token_ids
        previous_len = len(conversation)
        conversation = conversation + eh.random_tokens(70 + 40 * turn, seed=10 + turn)
    assert engine.caches.blocks.prefix.collisions == 0


def test_sessions_sharing_a_prefix_share_its_blocks(tiny_model: DeepseekV4Model, eh: Any) -> None:
    engine = Engine(
        tiny_model, EngineConfig(prefill_chunk=200, num_blocks=32, num_state_slots=3, max_running=2)
    )
    system = eh.random_tokens(280, seed=2)  # two full 128-token blocks and a partial one
    a_prompt = system + eh.random_tokens(20, seed=3)
    b_prompt = system + eh.random_tokens(45, seed=4)
    a = _turn(engine, a_prompt, "a")
    b = _turn(engine, b_prompt, "b")
    assert a.reused_tokens == 0
    assert b.reused_tokens == 256 and b.prefilled_tokens == len(b_prompt) - 256
    table_a = engine.caches.sessions["a"].cache.block_table
    table_b = engine.caches.sessions["b"].cache.block_table
    assert table_a[:2] == table_b[:2] and table_a[2] != table_b[2]
    assert [engine.caches.blocks.refcount(x) for x in table_b[:2]] == [2, 2]
    assert engine.caches.blocks.refcount(table_b[2]) == 1
    eh.assert_close(b.prompt_logits, eh.reference_logits(tiny_model, b_prompt)[256:])
    # both sessions go on from their own state and still match
    a2_prompt = a_prompt + a.token_ids + eh.random_tokens(10, seed=5)
    a2 = _turn(engine, a2_prompt, "a")
    assert a2.prefilled_tokens == 11
    eh.assert_close(a2.prompt_logits, eh.reference_logits(tiny_model, a2_prompt)[a2.reused_tokens :])


def test_prefix_cache_serves_requests_without_a_session(tiny_model: DeepseekV4Model, eh: Any) -> None:
    engine = Engine(tiny_model, EngineConfig(prefill_chunk=512, num_blocks=32))
    shared = eh.random_tokens(300, seed=6)
    first = _turn(engine, [*shared, 5, 6, 7], None)
    second = _turn(engine, [*shared, 9], None)
    assert first.reused_tokens == 0 and second.reused_tokens == 256
    eh.assert_close(second.prompt_logits, eh.reference_logits(tiny_model, [*shared, 9])[256:])
    # the first request is gone; its full blocks stay cached (refcount 0) until evicted
    assert engine.caches.blocks.num_cached_unused >= 2


def test_a_block_aligned_prompt_asked_again_reuses_all_but_its_last_block(
    tiny_model: DeepseekV4Model, eh: Any
) -> None:
    """The prompt's prefill stops one block before its end, so a copy of it (a fork, a retry) reuses the
    state there and recomputes one block, not the whole last chunk."""
    engine = Engine(tiny_model, EngineConfig(prefill_chunk=512, num_blocks=32))
    prompt = eh.random_tokens(384, seed=8)
    first = _turn(engine, prompt, None)
    forks = engine.generate([GenerationRequest(prompt, max_new_tokens=2, return_prompt_logits=True)] * 3)
    assert first.reused_tokens == 0
    assert [f.reused_tokens for f in forks] == [256] * 3 and [f.prefilled_tokens for f in forks] == [128] * 3
    eh.assert_close(forks[0].prompt_logits, eh.reference_logits(tiny_model, prompt)[256:])


def test_a_diverging_session_falls_back_to_the_prefix_cache(tiny_model: DeepseekV4Model, eh: Any) -> None:
    engine = Engine(
        tiny_model, EngineConfig(prefill_chunk=128, num_blocks=32, num_state_slots=2, max_running=1)
    )
    history = eh.random_tokens(270, seed=7)
    out = _turn(engine, history, "s")
    edited = history[:200] + eh.random_tokens(30, seed=8)  # an earlier message was rewritten
    again = _turn(engine, edited, "s")
    assert again.reused_tokens == 128
    eh.assert_close(again.prompt_logits, eh.reference_logits(tiny_model, edited)[128:])
    assert out.finished and len(engine.caches.sessions) == 1


def test_bfloat16_and_paper_layouts_generate_close_to_float32(tiny_model: DeepseekV4Model, eh: Any) -> None:
    prompt = eh.random_tokens(300, seed=9)
    ref = eh.reference_logits(tiny_model, prompt)[-1]
    for kv_dtype in ("bfloat16", "paper"):
        engine = Engine(tiny_model, EngineConfig(kv_dtype=kv_dtype, indexer_format="fp8", num_blocks=8))
        out = engine.generate([GenerationRequest(prompt, max_new_tokens=1, return_prompt_logits=True)])[0]
        last = out.prompt_logits[-1]
        cos = torch.nn.functional.cosine_similarity(last, ref, dim=0).item()
        assert cos > 0.99, (kv_dtype, cos)


def test_evicted_session_is_spilled_to_disk_and_restored(
    tiny_model: DeepseekV4Model, eh: Any, tmp_path: Any
) -> None:
    config = EngineConfig(num_blocks=4, max_idle_sessions=1, spill_dir=str(tmp_path), prefill_chunk=512)
    engine = Engine(tiny_model, config)
    a_prompt = eh.random_tokens(300, seed=50)
    a = _turn(engine, a_prompt, "a")
    b = _turn(engine, eh.random_tokens(300, seed=51), "b")  # evicts idle "a" from memory, then its blocks
    assert b.finished and engine.caches.spill is not None and engine.caches.spill.writes == 1
    assert len(list(tmp_path.iterdir())) == 1
    assert engine.caches.blocks.match(a_prompt) == []  # no longer in the prefix cache
    a2_prompt = a_prompt + a.token_ids + eh.random_tokens(20, seed=52)
    a2 = _turn(engine, a2_prompt, "a")
    assert a2.reused_tokens == 256  # blocks 0-1 and the state checkpoint at 256 came back from disk
    assert a2.prefilled_tokens == len(a2_prompt) - 256
    eh.assert_close(a2.prompt_logits, eh.reference_logits(tiny_model, a2_prompt)[256:])
    spill = engine.caches.spill
    assert not spill.path_for("a").exists()  # back in memory: its file is gone
    assert spill.path_for("b").exists() and spill.writes == 2  # "b" made room for it and went to disk
