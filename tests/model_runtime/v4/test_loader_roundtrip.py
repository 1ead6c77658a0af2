"""Synthetic V4-Flash-shaped checkpoints in the official format round-trip through the loader: the layout is
what DeepSeek ships, and the loaded model reproduces the written model's weights and logits bit for bit."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import ModelArgs
from deepscout.model_runtime.v4.weights.checkpoint import Checkpoint
from deepscout.model_runtime.v4.weights.loader import load_model
from deepscout.model_runtime.v4.weights.quant import QuantizedTensor
from deepscout.model_runtime.v4.weights.synthetic import flash_shaped_small, make_synthetic_checkpoint


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeepseekV4Model]:
    torch.set_num_threads(2)
    directory = tmp_path_factory.mktemp("v4_fp4")
    return directory, make_synthetic_checkpoint(directory, seed=3, max_shard_bytes=2 << 20)


def _stored(directory: Path) -> dict[str, tuple[str, list[int]]]:
    index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for shard in sorted(set(index.values())):
        with safe_open(str(directory / shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                view = handle.get_slice(name)
                out[name] = (view.get_dtype(), list(view.get_shape()))
    return out


def _logits(model: DeepseekV4Model, ids: torch.Tensor, decode_steps: int, v4: Any) -> torch.Tensor:
    cache = v4.new_cache(model.args)
    with torch.no_grad():
        out = [model(ids, [cache])[0]]
        token = out[0][-1].argmax().view(1, 1)
        for _ in range(decode_steps):
            step = model(token, [cache])[0]
            out.append(step)
            token = step[-1].argmax().view(1, 1)
    return torch.cat(out)


def test_the_checkpoint_has_the_official_layout(written: tuple[Path, DeepseekV4Model]) -> None:
    directory, model = written
    stored = _stored(directory)
    shards = sorted(p.name for p in directory.glob("*.safetensors"))
    assert len(shards) >= 2 and shards[0].startswith("model-00001-of-")
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(stored) and index["metadata"]["total_size"] > 0
    # every model tensor under its own name, plus one `.scale` per quantised weight
    scales = {n for n in stored if n.endswith(".scale")}
    assert set(stored) - scales == set(model.state_dict())
    args = model.args
    h, inter = args.hidden_size, args.moe_intermediate_size
    assert stored["layers.1.ffn.experts.0.w1.weight"] == ("I8", [inter, h // 2])
    assert stored["layers.1.ffn.experts.0.w1.scale"] == ("F8_E8M0", [inter, h // 32])
    assert stored["mtp.0.ffn.experts.7.w2.weight"] == ("I8", [h, inter // 2])
    assert stored["layers.0.attn.wq_a.weight"] == ("F8_E4M3", [args.q_lora_rank, h])
    assert stored["layers.0.attn.wq_a.scale"] == ("F8_E8M0", [args.q_lora_rank // 128, h // 128])
    assert stored["layers.1.attn.indexer.wq_b.weight"][0] == "F8_E4M3"
    assert stored["layers.2.ffn.shared_experts.w2.weight"][0] == "F8_E4M3"
    assert stored["mtp.0.e_proj.weight"][0] == "F8_E4M3"
    assert stored["embed.weight"] == ("BF16", [args.vocab_size, h])
    assert stored["layers.1.attn.compressor.wkv.weight"][0] == "BF16"
    assert stored["layers.1.attn.indexer.compressor.wgate.weight"][0] == "BF16"
    assert stored["layers.0.ffn.gate.weight"][0] == "BF16"
    for name in (
        "layers.0.hc_attn_fn",
        "layers.0.attn.attn_sink",
        "layers.1.attn.compressor.ape",
        "hc_head_scale",
    ):
        assert stored[name][0] == "F32", name
    assert stored["layers.1.ffn.gate.bias"][0] == "F32"
    assert stored["layers.0.ffn.gate.tid2eid"] == ("I32", [args.vocab_size, args.num_experts_per_tok])


def test_config_json_uses_the_legacy_keys_and_parses_back(written: tuple[Path, DeepseekV4Model]) -> None:
    directory, model = written
    config = json.loads((directory / "config.json").read_text())
    assert config["compress_ratios"] == [0, 4, 128, 0]  # three layers, then the MTP layer
    assert config["num_hash_layers"] == 1 and config["qk_rope_head_dim"] == 64
    assert "layer_types" not in config and "mlp_layer_types" not in config
    assert config["expert_dtype"] == "fp4" and config["quantization_config"]["weight_block_size"] == [
        128,
        128,
    ]
    assert config["rope_scaling"]["type"] == "yarn"
    assert ModelArgs.from_dict(config) == model.args


def test_loading_reproduces_weights_and_logits_bit_for_bit(
    written: tuple[Path, DeepseekV4Model], v4: Any
) -> None:
    directory, model = written
    loaded, report = load_model(directory)
    assert report.tensors == len(model.state_dict())
    assert report.formats["mxfp4"] == 4 * 8 * 3  # 3 layers + MTP, 8 experts, w1/w2/w3
    assert report.formats["fp8_block"] > 0 and report.formats["int32"] == 1
    expected = model.state_dict()
    for name, value in loaded.state_dict().items():
        assert value.dtype == expected[name].dtype and torch.equal(value, expected[name]), name
    # 150 tokens: past the 128-token window and an HCA block, CSA entries (37) beyond index_topk (8)
    ids = torch.randint(2, model.args.vocab_size, (1, 150), generator=torch.Generator().manual_seed(0))
    ours = _logits(loaded, ids, 3, v4)
    assert torch.equal(ours, _logits(model, ids, 3, v4))


def test_bf16_load_equals_the_written_model_cast_to_bf16(written: tuple[Path, DeepseekV4Model]) -> None:
    directory, model = written
    loaded, _ = load_model(directory, dtype=torch.bfloat16)
    reference = copy.deepcopy(model).cast(torch.bfloat16).state_dict()
    for name, value in loaded.state_dict().items():
        assert value.dtype == reference[name].dtype and torch.equal(value, reference[name]), name
    assert loaded.layers[0].attn.wq_a.weight.dtype == torch.bfloat16
    assert loaded.layers[0].hc_attn_fn.dtype == torch.float32


def test_quantised_weights_can_be_read_as_stored(written: tuple[Path, DeepseekV4Model]) -> None:
    directory, model = written
    checkpoint = Checkpoint(directory)
    expert = checkpoint.read_stored("layers.2.ffn.experts.5.w3.weight")
    assert isinstance(expert, QuantizedTensor) and expert.format == "mxfp4" and expert.block == (1, 32)
    assert torch.equal(expert.dequantize(), model.layers[2].ffn.experts[5].w3.weight)
    dense = checkpoint.read_stored("layers.2.attn.wo_b.weight")
    assert isinstance(dense, QuantizedTensor) and dense.format == "fp8_block"
    assert dense.nbytes < dense.dequantize().numel() * 4 // 3
    checkpoint.close()


def test_fp8_experts_and_several_layer_schedules_round_trip(tmp_path: Path, v4: Any) -> None:
    kinds = flash_shaped_small().layer_types
    args = flash_shaped_small((kinds[2], kinds[1], kinds[1], kinds[0]), num_hash_layers=2, n_routed_experts=4)
    model = make_synthetic_checkpoint(tmp_path, args, seed=5, expert_dtype="fp8")
    checkpoint = Checkpoint(tmp_path)
    assert checkpoint.weights["layers.3.ffn.experts.3.w1.weight"].format == "fp8_block"
    assert json.loads((tmp_path / "config.json").read_text())["compress_ratios"] == [128, 4, 4, 0, 0]
    loaded, _ = load_model(tmp_path)
    ids = torch.randint(2, args.vocab_size, (1, 70), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(loaded, ids, 2, v4), _logits(model, ids, 2, v4))


def test_transformers_loads_the_same_checkpoint_to_the_same_weights_and_logits(
    written: tuple[Path, DeepseekV4Model], v4: Any
) -> None:
    """An independent reader of the official format: transformers' DeepSeek-V4 renaming plus its FP8/FP4
    dequantiser read our synthetic checkpoint with nothing missing or unexpected, to identical weights."""
    import transformers
    from transformers import DeepseekV4ForCausalLM, FineGrainedFP8Config

    from deepscout.model_runtime.v4.weights.weight_names import is_mtp, to_hf_state_dict

    directory, _ = written
    transformers.logging.set_verbosity_error()
    oracle, info = DeepseekV4ForCausalLM.from_pretrained(
        directory,
        quantization_config=FineGrainedFP8Config(dequantize=True),
        dtype=torch.float32,
        output_loading_info=True,
    )
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    loaded, _ = load_model(directory)
    ours = to_hf_state_dict({k: v for k, v in loaded.state_dict().items() if not is_mtp(k)})
    theirs = oracle.state_dict()
    assert set(ours) == set(theirs)
    for name, value in ours.items():
        assert torch.equal(theirs[name].to(value.dtype), value), name
    # transformers leaves dequantised weights in bfloat16 (exact: e4m3/e2m1 times a power of two fits)
    oracle = oracle.float().eval()
    oracle.config._attn_implementation = "eager"
    ids = torch.randint(2, loaded.args.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = oracle(ids).logits[0]
        mine = loaded(ids, [v4.new_cache(loaded.args)])[0]
    v4.assert_close(mine, reference)
