"""Our DeepSeek-V4 forward against transformers' DeepseekV4ForCausalLM (float32, CPU, random tiny configs).

Tolerance everywhere: max|ours - ref| <= 1e-4 * max|ref| over the whole logits tensor.
"""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, tiny

S, C, H = LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA

SCHEDULES: dict[str, ModelArgs] = {
    "sliding": tiny((S, S), num_hash_layers=2),
    "csa": tiny((C, C), num_hash_layers=0),
    "hca": tiny((H, H), num_hash_layers=1),
    "mixed": tiny((S, C, H, C), num_hash_layers=1, scoring_func="sqrtsoftplus"),
}


@pytest.mark.parametrize("impl", ["sparse", "naive"])
@pytest.mark.parametrize("length", [1, 4, 7, 128, 256, 301])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_full_prefill_matches_oracle(make_pair, v4, schedule: str, length: int, impl: str) -> None:
    pair = make_pair(SCHEDULES[schedule])
    ids = v4.random_ids(pair.args, length, seed=length)
    v4.assert_close(pair.prefill(ids, impl=impl), pair.oracle_logits(ids))


@pytest.mark.parametrize("chunks", [[5] * 60 + [1000], [64] * 10, [128, 128, 1000], [3, 200, 1, 1000]])
def test_chunked_prefill_matches_oracle(make_pair, v4, chunks: list[int]) -> None:
    pair = make_pair(SCHEDULES["mixed"])
    ids = v4.random_ids(pair.args, 517, seed=3)
    v4.assert_close(pair.prefill(ids, chunks), pair.oracle_logits(ids))


@pytest.mark.parametrize("schedule", ["mixed", "hca"])
def test_token_by_token_decode_matches_oracle(make_pair, v4, schedule: str) -> None:
    """Prefill 250 tokens, then feed 20 tokens one at a time across the 256-token boundary
    (a CSA entry every 4 tokens, an HCA entry at 256)."""
    pair = make_pair(SCHEDULES[schedule])
    ids = v4.random_ids(pair.args, 270, seed=4)
    ours = pair.prefill(ids, [250] + [1] * 20)
    v4.assert_close(ours, pair.oracle_logits(ids))


def test_context_past_several_hca_blocks(make_pair, v4) -> None:
    """700 tokens: 5 complete HCA entries and 175 CSA entries (top-k 16 keeps a small subset)."""
    pair = make_pair(SCHEDULES["mixed"])
    ids = v4.random_ids(pair.args, 700, seed=5)
    v4.assert_close(pair.prefill(ids, [300, 129, 271]), pair.oracle_logits(ids))
    cache = v4.new_cache(pair.args)
    with torch.no_grad():
        pair.model(ids, [cache])
    assert cache.layer(2).num_entries("main") == 5
    assert cache.layer(1).num_entries("main") == 175 > pair.args.index_topk


def test_topk_truncation_is_real_and_exact(make_pair, v4) -> None:
    """CSA with 32 indexer heads and index_topk=8 over 100 entries: sparse selection == oracle's mask."""
    args = tiny((C, C), num_hash_layers=0, index_n_heads=32, index_topk=8)
    pair = make_pair(args)
    ids = v4.random_ids(args, 400, seed=6)
    oracle = pair.oracle_logits(ids)
    v4.assert_close(pair.prefill(ids, impl="sparse"), oracle)
    v4.assert_close(pair.prefill(ids, [100, 37, 263], impl="sparse"), oracle)
    # the selection matters: with every entry visible (top-k >= entries) the logits differ clearly
    wide = make_pair(args.with_(index_topk=1000))
    wide.model.load_state_dict(pair.model.state_dict())
    diff = (wide.prefill(ids) - oracle).abs().max().item()
    assert diff > 1e-2 * oracle.abs().max().item()


@pytest.mark.parametrize(("schedule", "prompt_length"), [("mixed", 130), ("hca", 250), ("csa", 61)])
def test_greedy_generation_is_token_identical(make_pair, v4, schedule: str, prompt_length: int) -> None:
    pair = make_pair(SCHEDULES[schedule])
    prompt = v4.random_ids(pair.args, prompt_length, seed=7)
    new_tokens = 12
    with torch.no_grad():
        reference = pair.oracle.generate(
            prompt, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, prompt.shape[1] :]
        cache = v4.new_cache(pair.args)
        logits = pair.model(prompt, [cache], last_only=True)
        ours = []
        for _ in range(new_tokens):
            token = logits.argmax(dim=-1)
            ours.append(int(token))
            logits = pair.model(token.view(1, 1), [cache], last_only=True)
    assert ours == reference.tolist()


def test_equal_length_batch_matches_oracle(make_pair, v4) -> None:
    pair = make_pair(SCHEDULES["mixed"])
    ids = v4.random_ids(pair.args, 140, batch=3, seed=8)
    v4.assert_close(pair.prefill(ids, [97, 43]), pair.oracle_logits(ids))
