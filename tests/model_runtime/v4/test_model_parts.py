"""Parts of the V4 model: config parsing, weight naming, the contiguous cache, random init, RoPE, MTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deepscout.model_runtime.v4.cache.contiguous import CacheUsageError, ContiguousLayerCache
from deepscout.model_runtime.v4.cache.protocol import CompressorTail, LayerCache, SequenceCache
from deepscout.model_runtime.v4.model.moe import Gate
from deepscout.model_runtime.v4.model.primitives import rope_inv_freq
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import (
    LayerKind,
    ModelArgs,
    ModelConfigError,
    YarnScaling,
    flash_shaped,
    tiny,
)
from deepscout.model_runtime.v4.weights.weight_names import (
    UnknownWeightNameError,
    from_hf_state_dict,
    hf_name,
    official_name,
    to_hf_state_dict,
)

S, C, H = LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA

FLASH_STYLE_CONFIG = {
    "architectures": ["DeepseekV4ForCausalLM"],
    "model_type": "deepseek_v4",
    "vocab_size": 129280,
    "hidden_size": 4096,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 4,
    "num_attention_heads": 64,
    "head_dim": 512,
    "qk_rope_head_dim": 64,
    "q_lora_rank": 1024,
    "o_groups": 8,
    "o_lora_rank": 1024,
    "n_routed_experts": 256,
    "num_experts_per_tok": 6,
    "compress_ratios": [0, 4, 128, 4, 0],
    "num_hash_layers": 3,
    "num_nextn_predict_layers": 1,
    "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536},
    "torch_dtype": "bfloat16",
    "eos_token_id": [1],
}


def test_config_json_with_legacy_keys(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(FLASH_STYLE_CONFIG))
    args = ModelArgs.from_json(tmp_path)
    assert args.layer_types == (S, C, H, C)
    assert args.mtp_layer_types == (S,)
    assert args.mlp_layer_types == ("hash_moe", "hash_moe", "hash_moe", "moe")
    assert args.rope_scaling == YarnScaling(16.0, 65536)
    assert args.eos_token_id == 1 and args.extra["torch_dtype"] == "bfloat16"
    from transformers import DeepseekV4Config

    hf = DeepseekV4Config(**args.to_hf_dict())
    legacy = DeepseekV4Config(**{k: v for k, v in FLASH_STYLE_CONFIG.items() if k != "rope_scaling"})
    assert hf.layer_types == legacy.layer_types and hf.mlp_layer_types == legacy.mlp_layer_types
    assert hf.rope_parameters["compress"]["rope_type"] == "yarn"
    assert flash_shaped().layer_types.count(C) == 21 and flash_shaped().layer_types.count(H) == 20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"compress_ratios": [0, 4, 64, 4]}, "unknown ratio 64"),
        ({"num_attention_heads": 0}, "num_attention_heads must be positive"),
        ({"qk_rope_head_dim": 7}, "qk_rope_head_dim"),
        ({"o_groups": 3}, "o_groups"),
        ({"n_shared_experts": 2}, "shared expert"),
        ({"rope_scaling": {"type": "linear", "factor": 2}}, "'linear' is not supported"),
        ({"layer_types": ["sliding_attention"]}, "num_hidden_layers"),
    ],
)
def test_bad_configs_are_named(change: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        ModelArgs.from_dict({**FLASH_STYLE_CONFIG, **change})
    with pytest.raises(ModelConfigError, match=r"no config\.json"):
        ModelArgs.from_json("/nonexistent-dir")


def test_yarn_frequencies_equal_transformers() -> None:
    from transformers import DeepseekV4Config
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4RotaryEmbedding

    args = tiny()
    reference = DeepseekV4RotaryEmbedding(DeepseekV4Config(**args.to_hf_dict()))
    ours = rope_inv_freq(args.qk_rope_head_dim, args.compress_rope_theta, args.rope_scaling)
    assert torch.equal(ours, reference.compress_inv_freq)
    assert torch.equal(rope_inv_freq(args.qk_rope_head_dim, args.rope_theta, None), reference.main_inv_freq)
    assert not torch.equal(ours, rope_inv_freq(args.qk_rope_head_dim, args.compress_rope_theta, None))


def test_weight_names_round_trip_and_use_official_naming() -> None:
    model = DeepseekV4Model.random(tiny((S, C, H), num_hash_layers=1), seed=1)
    official = model.state_dict()
    for name in [
        "embed.weight",
        "head.weight",
        "hc_head_fn",
        "layers.1.attn.indexer.compressor.ape",
        "layers.1.attn.indexer.weights_proj.weight",
        "layers.2.attn.compressor.wkv.weight",
        "layers.0.ffn.gate.tid2eid",
        "layers.1.ffn.gate.bias",
        "layers.2.ffn.experts.7.w3.weight",
        "mtp.0.e_proj.weight",
        "mtp.0.hc_head_scale",
    ]:
        assert name in official, name
    hf = to_hf_state_dict(official)
    assert hf["model.layers.2.mlp.experts.gate_up_proj"].shape == (8, 64, 64)
    assert not any(k.startswith("mtp") for k in hf)
    back = from_hf_state_dict(hf)
    assert set(back) == {k for k in official if not k.startswith("mtp.")}
    assert all(torch.equal(back[k], official[k]) for k in back)
    assert official_name(hf_name("layers.1.attn.q_norm.weight")) == "layers.1.attn.q_norm.weight"
    with pytest.raises(UnknownWeightNameError):
        hf_name("layers.0.attn.not_a_tensor")


def test_random_init_randomises_what_transformers_zeroes() -> None:
    args = tiny((S, C, H), num_hash_layers=2)
    model = DeepseekV4Model.random(args, seed=2)
    gate = model.layers[0].ffn.gate
    assert isinstance(gate, Gate) and gate.hash_routed
    table = gate.tid2eid
    assert table.unique().numel() == args.n_routed_experts
    assert all(row.unique().numel() == args.num_experts_per_tok for row in table)
    assert model.layers[0].attn.attn_sink.abs().min() > 0
    assert model.layers[2].attn.compressor.ape.std() > 0.5
    assert torch.equal(DeepseekV4Model.random(args, seed=2).head.weight, model.head.weight)
    bf16 = DeepseekV4Model.random(args, seed=2, dtype=torch.bfloat16)
    assert bf16.layers[1].attn.wq_a.weight.dtype == torch.bfloat16
    assert bf16.layers[1].attn.attn_sink.dtype == torch.float32
    assert bf16.layers[1].hc_attn_fn.dtype == torch.float32


def test_contiguous_cache_follows_the_protocol(v4) -> None:
    args = tiny((S, C, H))
    cache = v4.new_cache(args)
    assert isinstance(cache, SequenceCache)
    csa = cache.layer(1)
    assert isinstance(csa, LayerCache) and csa.kind is C
    layer = ContiguousLayerCache(H, head_dim=4, index_head_dim=2, sliding_window=3)
    layer.write_window(torch.arange(20.0).view(5, 4), torch.arange(5))
    assert layer.read_window().positions.tolist() == [2, 3, 4]
    with pytest.raises(CacheUsageError, match="increase"):
        layer.write_window(torch.zeros(1, 4), torch.tensor([4]))
    layer.append_entries("main", torch.arange(12.0).view(3, 4))
    layer.append_entries("main", torch.arange(100.0, 140.0).view(10, 4))
    assert layer.num_entries("main") == 13
    assert layer.gather_entries("main", torch.tensor([[12, 0]]))[0, :, 0].tolist() == [136.0, 0.0]
    with pytest.raises(CacheUsageError, match="no 'indexer'"):
        layer.num_entries("indexer")
    layer.write_tail("main", CompressorTail(torch.zeros(2, 4), torch.zeros(2, 4)))
    assert layer.read_tail("main") is not None and layer.nbytes() > 0


def test_cache_state_after_prefill_matches_the_protocol(v4) -> None:
    args = tiny((S, C, H))
    model = DeepseekV4Model.random(args, seed=3).eval()
    cache = v4.new_cache(args)
    with torch.no_grad():
        model(v4.random_ids(args, 301), [cache])
    assert cache.num_tokens == 301
    window = cache.layer(0).read_window()
    assert window.positions.tolist() == list(range(301 - args.sliding_window, 301))
    csa, hca = cache.layer(1), cache.layer(2)
    assert csa.num_entries("main") == csa.num_entries("indexer") == 75
    tail = csa.read_tail("main")
    assert tail is not None and tail.kv.shape == (1, 2 * args.head_dim)
    assert tail.overlap_kv is not None and tail.overlap_kv.shape == (4, args.head_dim)
    assert hca.num_entries("main") == 2
    hca_tail = hca.read_tail("main")
    assert hca_tail is not None and hca_tail.kv.shape[0] == 301 - 256 and hca_tail.overlap_kv is None


def test_mtp_layer_loads_and_drafts(v4) -> None:
    args = tiny((S, C), num_nextn_predict_layers=1, mtp_layer_types=(C,))
    model = DeepseekV4Model.random(args, seed=4).eval()
    assert model.mtp[0].attn.kind is C
    clone = DeepseekV4Model(args)
    clone.load_state_dict(model.state_dict(), strict=True)
    ids = v4.random_ids(args, 40)
    caches = [v4.new_cache(args)]
    with torch.no_grad():
        streams, segments = model.forward_streams(ids, caches)
        draft = model.forward_mtp(ids[0, 1:].new_tensor([*ids[0, 1:].tolist(), 0]), streams, segments, caches)
    assert draft.shape == (40, args.vocab_size) and torch.isfinite(draft).all()
    assert caches[0].layer(args.num_hidden_layers).num_entries("main") == 10


def test_attention_implementations_agree(v4) -> None:
    args = tiny((C, H), num_hash_layers=0, index_topk=8)
    model = DeepseekV4Model.random(args, seed=5).eval()
    ids = v4.random_ids(args, 333)
    with torch.no_grad():
        sparse = model(ids, [v4.new_cache(args)], attn_impl="sparse")
        naive = model(ids, [v4.new_cache(args)], attn_impl="naive")
    v4.assert_close(sparse, naive, rel=1e-5)
