"""Weight names of DeepSeek-V4: official checkpoint naming <-> transformers naming.

Our model (`model.transformer.DeepseekV4Model`) uses the **official DeepSeek naming** of the released
safetensors (`embed.weight`, `layers.{i}.attn.wq_a.weight`, `layers.{i}.ffn.experts.{e}.w1.weight`,
`mtp.{k}.*`, ...), so its `state_dict()` keys are the checkpoint's keys (quantisation scales aside, which the
loader consumes).

transformers' `DeepseekV4ForCausalLM` uses its own names (`model.layers.{i}.self_attn.q_a_proj.weight`, ...)
and stacks the routed experts per layer into `mlp.experts.gate_up_proj` `[E, 2I, H]` (w1 rows then w3 rows)
and `mlp.experts.down_proj` `[E, H, I]`. It has no MTP layer: `mtp.*` has no transformers name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from deepscout.errors import DeepscoutError

_LAYER_LEAVES: dict[str, str] = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "hc_attn_fn": "attn_hc.fn",
    "hc_attn_base": "attn_hc.base",
    "hc_attn_scale": "attn_hc.scale",
    "hc_ffn_fn": "ffn_hc.fn",
    "hc_ffn_base": "ffn_hc.base",
    "hc_ffn_scale": "ffn_hc.scale",
    "attn.attn_sink": "self_attn.sinks",
    "attn.wq_a.weight": "self_attn.q_a_proj.weight",
    "attn.q_norm.weight": "self_attn.q_a_norm.weight",
    "attn.wq_b.weight": "self_attn.q_b_proj.weight",
    "attn.wkv.weight": "self_attn.kv_proj.weight",
    "attn.kv_norm.weight": "self_attn.kv_norm.weight",
    "attn.wo_a.weight": "self_attn.o_a_proj.weight",
    "attn.wo_b.weight": "self_attn.o_b_proj.weight",
    "attn.indexer.wq_b.weight": "self_attn.compressor.indexer.q_b_proj.weight",
    "attn.indexer.weights_proj.weight": "self_attn.compressor.indexer.scorer.weights_proj.weight",
    "ffn.gate.weight": "mlp.gate.weight",
    "ffn.gate.bias": "mlp.gate.e_score_correction_bias",
    "ffn.gate.tid2eid": "mlp.gate.tid2eid",
    "ffn.shared_experts.w1.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn.shared_experts.w2.weight": "mlp.shared_experts.down_proj.weight",
    "ffn.shared_experts.w3.weight": "mlp.shared_experts.up_proj.weight",
}
_COMPRESSOR_LEAVES = {
    "ape": "position_bias",
    "wkv.weight": "kv_proj.weight",
    "wgate.weight": "gate_proj.weight",
}
_COMPRESSOR_LEAVES["norm.weight"] = "kv_norm.weight"
for _official, _hf in list(_COMPRESSOR_LEAVES.items()):
    _LAYER_LEAVES[f"attn.compressor.{_official}"] = f"self_attn.compressor.{_hf}"
    _LAYER_LEAVES[f"attn.indexer.compressor.{_official}"] = f"self_attn.compressor.indexer.{_hf}"

_TOP_LEVEL: dict[str, str] = {
    "embed.weight": "model.embed_tokens.weight",
    "head.weight": "lm_head.weight",
    "norm.weight": "model.norm.weight",
    "hc_head_fn": "model.hc_head.hc_fn",
    "hc_head_base": "model.hc_head.hc_base",
    "hc_head_scale": "model.hc_head.hc_scale",
}
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^layers\.(\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_EXPERTS = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


class UnknownWeightNameError(DeepscoutError, KeyError):
    """A tensor name that is not part of DeepSeek-V4 (in the naming it was looked up in)."""


def is_mtp(official_name: str) -> bool:
    """True for the multi-token-prediction layer's tensors (`mtp.{k}.*`), which transformers does not hold."""
    return official_name.startswith("mtp.")


@dataclass(frozen=True)
class _Renaming:
    """One direction of the 1:1 renaming: whole top-level names, and per-layer leaves under `layer`."""

    top: dict[str, str]
    layer: re.Pattern[str]
    leaves: dict[str, str]
    target_layers: str
    """The target naming's layer prefix (`layers.{i}.` is written after it)."""
    missing: str
    """Start of the error message for a name with no counterpart."""

    def __call__(self, name: str) -> str:
        if name in self.top:
            return self.top[name]
        match = self.layer.match(name)
        if match and match.group(2) in self.leaves:
            return f"{self.target_layers}layers.{match.group(1)}.{self.leaves[match.group(2)]}"
        raise UnknownWeightNameError(f"{self.missing} {name!r}")


_TO_HF = _Renaming(_TOP_LEVEL, _LAYER, _LAYER_LEAVES, "model.", "no transformers name for official tensor")
_TO_OFFICIAL = _Renaming(
    {hf: official for official, hf in _TOP_LEVEL.items()},
    _HF_LAYER,
    {hf: official for official, hf in _LAYER_LEAVES.items()},
    "",
    "no official name for transformers tensor",
)


def hf_name(official_name: str) -> str:
    """transformers name of a 1:1 official tensor (not routed experts, which are stacked; not MTP)."""
    return _TO_HF(official_name)


def official_name(hf_tensor_name: str) -> str:
    """Official name of a 1:1 transformers tensor (inverse of `hf_name`)."""
    return _TO_OFFICIAL(hf_tensor_name)


def to_hf_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official-named tensors -> transformers-named tensors (experts stacked; MTP tensors dropped)."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for name, tensor in official.items():
        if is_mtp(name):
            continue
        match = _EXPERT.match(name)
        if match:
            layer, expert, which = int(match.group(1)), int(match.group(2)), match.group(3)
            experts.setdefault(layer, {}).setdefault(expert, {})[which] = tensor
            continue
        out[hf_name(name)] = tensor
    for layer, by_expert in experts.items():
        ids = sorted(by_expert)
        if ids != list(range(len(ids))):
            raise UnknownWeightNameError(f"layer {layer}: routed experts are not numbered 0..{len(ids) - 1}")
        prefix = f"model.layers.{layer}.mlp.experts"
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([by_expert[e]["w1"], by_expert[e]["w3"]]) for e in ids]
        )
        out[f"{prefix}.down_proj"] = torch.stack([by_expert[e]["w2"] for e in ids])
    return out


def from_hf_state_dict(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers-named tensors -> official-named tensors (stacked experts split per expert)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf.items():
        match = _HF_EXPERTS.match(name)
        if match:
            layer, which = match.group(1), match.group(2)
            for e in range(tensor.shape[0]):
                prefix = f"layers.{layer}.ffn.experts.{e}"
                if which == "down_proj":
                    out[f"{prefix}.w2.weight"] = tensor[e]
                else:
                    w1, w3 = tensor[e].chunk(2, dim=0)
                    out[f"{prefix}.w1.weight"] = w1
                    out[f"{prefix}.w3.weight"] = w3
            continue
        out[official_name(name)] = tensor
    return out
