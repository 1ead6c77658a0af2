"""Write DeepSeek-V4 checkpoints in the official format from an in-memory model (tests, benchmarks, the CLI).

No real V4 checkpoint is reachable here, so the loader is exercised on checkpoints written by this module in
the layout DeepSeek ships: official tensor names (``layers.0.attn.wq_a.weight``, ``layers.0.ffn.experts.3.w1
.weight``, ``mtp.0.e_proj.weight``, ...), dense linears in FP8 e4m3 with one e8m0 scale per 128×128 block
(``<module>.scale``), routed experts in MXFP4 (packed e2m1 + one e8m0 scale per 32 elements), embeddings,
head, norms, compressor and gate projections in BF16, mHC parameters, sinks, ``ape`` and router biases in
F32, the hash tables ``tid2eid`` in I32; shards of bounded size with ``model.safetensors.index.json``; and a
``config.json`` with the legacy keys (``compress_ratios``, ``num_hash_layers``, ``qk_rope_head_dim``,
``rope_scaling``, ``quantization_config``, ``expert_dtype``).

A DeepSeek-V4-Flash-0731-style checkpoint (``dspark=``) holds the backbone the same way and, instead of MTP
layers, a random DSpark drafter in the layout :mod:`.dspark_drafter` describes (three stages under
``mtp.0``-``mtp.2``, the stage-0 fusing projection, the last stage's Markov and confidence heads), stored
as the backbone's tensors of the same kind are, with the ``dspark_*`` config keys.

Writing *snaps* the model: each parameter is replaced by exactly the value the checkpoint holds (its
dequantised FP8/FP4 value, or its BF16 rounding), so a model loaded from the checkpoint must reproduce the
snapped model's logits bit for bit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, tiny
from deepscout.model_runtime.v4.weights.dspark_drafter import DSparkDrafter
from deepscout.model_runtime.v4.weights.quant import (
    QuantizedTensor,
    ScaleFormat,
    quantize_fp8_block,
    quantize_mxfp4,
)
from deepscout.model_runtime.v4.weights.safetensors_stream import INDEX_FILE

StorageKind = Literal["fp8_block", "mxfp4", "bf16", "f32", "i32"]
ExpertDtype = Literal["fp4", "fp8"]

_EXPERT = re.compile(r"(^|\.)ffn\.experts\.\d+\.w[123]\.weight$")
_FP8_LINEAR = re.compile(
    r"(^|\.)(attn\.(wq_a|wq_b|wkv|wo_a|wo_b)|attn\.indexer\.wq_b|ffn\.shared_experts\.w[123]|e_proj|h_proj|main_proj)\.weight$"
)
_F32_SUFFIXES = ("attn_sink", ".ape", "gate.bias", "_fn", "_base", "_scale")


def official_storage(name: str, *, expert_dtype: ExpertDtype = "fp4") -> StorageKind:
    """How an official V4 checkpoint stores the tensor ``name``."""
    if name.endswith("tid2eid"):
        return "i32"
    if _EXPERT.search(name):
        return "mxfp4" if expert_dtype == "fp4" else "fp8_block"
    if _FP8_LINEAR.search(name):
        return "fp8_block"
    if name.endswith(_F32_SUFFIXES):
        return "f32"
    return "bf16"


def encode_tensor(
    name: str, value: torch.Tensor, kind: StorageKind, *, scale_format: ScaleFormat = "e8m0"
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The stored tensors for ``name`` (weight and, if quantised, its ``.scale``) and the exact float32
    value they decode to."""
    if kind in ("fp8_block", "mxfp4"):
        if kind == "fp8_block":
            data, scale = quantize_fp8_block(value, scale_format=scale_format)
        else:
            data, scale = quantize_mxfp4(value)
        decoded = QuantizedTensor(format=kind, data=data, scale=scale, shape=tuple(value.shape)).dequantize()
        return {name: data, f"{name.removesuffix('.weight')}.scale": scale}, decoded
    if kind == "i32":
        stored = value.to(torch.int32)
        return {name: stored}, stored.to(value.dtype)
    stored = value.detach().to(torch.bfloat16 if kind == "bf16" else torch.float32).contiguous()
    return {name: stored}, stored.to(torch.float32)


def official_config(
    args: ModelArgs, *, expert_dtype: ExpertDtype = "fp4", dspark: DSparkDrafter | None = None
) -> dict[str, Any]:
    """config.json as official V4 checkpoints write it (legacy per-layer ``compress_ratios`` and friends);
    with ``dspark``, as DeepSeek-V4-Flash-0731 writes it (drafter stages counted as sliding MTP layers)."""
    ratios = [args.ratio(kind) for kind in (*args.layer_types, *args.mtp_layer_types)]
    n_hash = sum(1 for t in args.mlp_layer_types if t == "hash_moe")
    config: dict[str, Any] = {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "torch_dtype": "bfloat16",
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "moe_intermediate_size": args.moe_intermediate_size,
        "num_hidden_layers": args.num_hidden_layers,
        "num_attention_heads": args.num_attention_heads,
        "num_key_value_heads": 1,
        "head_dim": args.head_dim,
        "qk_rope_head_dim": args.qk_rope_head_dim,
        "q_lora_rank": args.q_lora_rank,
        "o_groups": args.o_groups,
        "o_lora_rank": args.o_lora_rank,
        "n_routed_experts": args.n_routed_experts,
        "n_shared_experts": args.n_shared_experts,
        "num_experts_per_tok": args.num_experts_per_tok,
        "scoring_func": args.scoring_func,
        "norm_topk_prob": True,
        "routed_scaling_factor": args.routed_scaling_factor,
        "swiglu_limit": args.swiglu_limit,
        "sliding_window": args.sliding_window,
        "compress_ratios": ratios,
        "rope_theta": args.rope_theta,
        "compress_rope_theta": args.compress_rope_theta,
        "index_n_heads": args.index_n_heads,
        "index_head_dim": args.index_head_dim,
        "index_topk": args.index_topk,
        "hc_mult": args.hc_mult,
        "hc_sinkhorn_iters": args.hc_sinkhorn_iters,
        "hc_eps": args.hc_eps,
        "rms_norm_eps": args.rms_norm_eps,
        "num_nextn_predict_layers": args.num_nextn_predict_layers,
        "max_position_embeddings": args.max_position_embeddings,
        "bos_token_id": args.bos_token_id,
        "eos_token_id": args.eos_token_id,
        "tie_word_embeddings": False,
        "quantization_config": {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "scale_fmt": "ue8m0",
            "weight_block_size": [128, 128],
        },
        "expert_dtype": expert_dtype,
    }
    if list(args.mlp_layer_types) == ["hash_moe"] * n_hash + ["moe"] * (args.num_hidden_layers - n_hash):
        config["num_hash_layers"] = n_hash
    else:
        config["mlp_layer_types"] = list(args.mlp_layer_types)
    if args.rope_scaling is not None:
        yarn = args.rope_scaling
        config["rope_scaling"] = {
            "type": "yarn",
            "factor": yarn.factor,
            "original_max_position_embeddings": yarn.original_max_position_embeddings,
            "beta_fast": yarn.beta_fast,
            "beta_slow": yarn.beta_slow,
        }
        if yarn.attention_factor != 1.0:
            config["rope_scaling"]["attention_factor"] = yarn.attention_factor
    if dspark is not None:
        config["num_nextn_predict_layers"] = dspark.num_stages
        config["compress_ratios"] = ratios + [0] * dspark.num_stages
        config |= {
            "dspark_num_stages": dspark.num_stages,
            "dspark_markov_rank": dspark.markov_rank,
            "dspark_target_layer_ids": list(dspark.target_layer_ids),
            "dspark_block_size": 5,
            "dspark_noise_token_id": args.vocab_size - 1,
        }
    return config


def synthetic_drafter(args: ModelArgs, *, markov_rank: int = 32) -> DSparkDrafter:
    """A 0731-shaped drafter for ``args``: three stages fed by the last three layers, a small Markov head."""
    n = args.num_hidden_layers
    targets = tuple(range(max(0, n - 3), n))
    return DSparkDrafter(num_stages=3, markov_rank=markov_rank, target_layer_ids=targets)


def _drafter_tensors(
    drafter: DSparkDrafter, args: ModelArgs, expert_dtype: ExpertDtype, scale_format: ScaleFormat, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    for name, shape in drafter.known_shapes(args).items():
        value = torch.randn(shape, generator=generator) * 0.05
        kind = official_storage(name, expert_dtype=expert_dtype)
        yield encode_tensor(name, value, kind, scale_format=scale_format)[0]


def _stored_tensors(
    model: DeepseekV4Model, expert_dtype: ExpertDtype, scale_format: ScaleFormat, snap: bool
) -> Iterator[dict[str, torch.Tensor]]:
    with torch.no_grad():
        for name, target in model.state_dict(keep_vars=True).items():
            kind = official_storage(name, expert_dtype=expert_dtype)
            stored, decoded = encode_tensor(name, target.detach(), kind, scale_format=scale_format)
            if snap:
                target.copy_(decoded)
            yield stored


class _ShardWriter:
    """Collects stored tensors into shards of at most ``max_bytes`` (a tensor group never splits), writes
    each full shard at once, and names them ``model-0000i-of-0000n`` once the count is known."""

    def __init__(self, out: Path, max_bytes: int) -> None:
        self.out = out
        self.max_bytes = max_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.current_bytes = 0
        self.written: list[Path] = []
        self.shard_of: dict[str, int] = {}
        self.total_bytes = 0

    def add(self, group: dict[str, torch.Tensor]) -> None:
        nbytes = sum(t.numel() * t.element_size() for t in group.values())
        if self.current and self.current_bytes + nbytes > self.max_bytes:
            self._flush()
        for key, tensor in group.items():
            self.current[key] = tensor
            self.shard_of[key] = len(self.written)
        self.current_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        path = self.out / f".shard-{len(self.written):05d}.tmp"
        save_file(self.current, str(path), metadata={"format": "pt"})
        self.written.append(path)
        self.current, self.current_bytes = {}, 0

    def finish(self) -> dict[str, object]:
        """Rename the shards to their final names; returns the index json."""
        if self.current:
            self._flush()
        count = len(self.written)
        names = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        for path, final in zip(self.written, names, strict=True):
            path.replace(self.out / final)
        weight_map = {key: names[i] for key, i in sorted(self.shard_of.items())}
        return {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}


def write_checkpoint(
    model: DeepseekV4Model,
    out_dir: str | Path,
    *,
    expert_dtype: ExpertDtype = "fp4",
    scale_format: ScaleFormat = "e8m0",
    max_shard_bytes: int = 256 << 20,
    snap: bool = True,
    dspark: DSparkDrafter | None = None,
    seed: int = 0,
) -> Path:
    """Write ``model`` to ``out_dir`` as an official-format checkpoint; with ``snap`` the model's parameters
    become exactly what the checkpoint holds. With ``dspark`` (``model`` without MTP layers) a random drafter
    drawn from ``seed`` is added, DeepSeek-V4-Flash-0731-style. Returns ``out_dir``."""
    if dspark is not None and model.args.num_mtp_layers:
        raise ValueError("a DSpark checkpoint stores the drafter in mtp.*: write a model without MTP layers")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out, max_shard_bytes)
    for group in _stored_tensors(model, expert_dtype, scale_format, snap):
        writer.add(group)
    if dspark is not None:
        for group in _drafter_tensors(dspark, model.args, expert_dtype, scale_format, seed):
            writer.add(group)
    (out / INDEX_FILE).write_text(json.dumps(writer.finish(), indent=2) + "\n")
    config = official_config(model.args, expert_dtype=expert_dtype, dspark=dspark)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


_FLASH_SMALL_SHAPES: dict[str, Any] = {
    "moe_intermediate_size": 128,
    "head_dim": 128,
    "qk_rope_head_dim": 64,
    "q_lora_rank": 128,
    "o_lora_rank": 128,
    "mtp_layer_types": (LayerKind.SLIDING,),
    "index_n_heads": 4,
    "index_head_dim": 128,
    "index_topk": 8,
    "max_position_embeddings": 8192,
}
"""Where `flash_shaped_small` departs from `tiny`: every quantised dimension a multiple of 128."""


def flash_shaped_small(
    layer_types: tuple[LayerKind, ...] = (LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA),
    *,
    num_hash_layers: int = 1,
    hidden_size: int = 256,
    vocab_size: int = 512,
    n_routed_experts: int = 8,
    **overrides: Any,
) -> ModelArgs:
    """V4-Flash's structure at reduced width: real FP8 128×128 and FP4 32-element blocks (every quantised
    dimension a multiple of 128), real window/ratios, sinks, hash layers, YaRN, one MTP layer.

    It is `tiny()` (same heads, groups, routing, window and YaRN) at the widths of `_FLASH_SMALL_SHAPES`.
    """
    sizes = {"hidden_size": hidden_size, "vocab_size": vocab_size, "n_routed_experts": n_routed_experts}
    return tiny(layer_types, num_hash_layers=num_hash_layers, **{**_FLASH_SMALL_SHAPES, **sizes, **overrides})


def make_synthetic_checkpoint(
    out_dir: str | Path,
    args: ModelArgs | None = None,
    *,
    seed: int = 0,
    expert_dtype: ExpertDtype = "fp4",
    max_shard_bytes: int = 4 << 20,
    dspark: bool = False,
) -> DeepseekV4Model:
    """A random V4-Flash-shaped model written to ``out_dir`` (with a byte-level tokenizer.json when the
    vocabulary holds 256 ids); returns the (snapped) model it holds. With ``dspark`` it is written
    DeepSeek-V4-Flash-0731-style: the model without MTP layers plus a `synthetic_drafter`."""
    args = args or flash_shaped_small()
    if dspark:
        args = args.with_(num_nextn_predict_layers=0, mtp_layer_types=())
    model = DeepseekV4Model.random(args, seed=seed)
    drafter = synthetic_drafter(args) if dspark else None
    write_checkpoint(
        model, out_dir, expert_dtype=expert_dtype, max_shard_bytes=max_shard_bytes, dspark=drafter, seed=seed
    )
    if model.args.vocab_size >= 256:
        write_byte_tokenizer(out_dir)
    return model


def write_byte_tokenizer(out_dir: str | Path) -> Path:
    """A byte-level ``tokenizer.json`` (ids 0..255, no merges) so ``--text`` runs on synthetic checkpoints."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    path = Path(out_dir) / "tokenizer.json"
    tokenizer.save(str(path))
    return path
