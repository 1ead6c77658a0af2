"""DeepSeek-V4 model arguments: read from a checkpoint's config.json (legacy keys included), validated."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from deepscout.errors import DeepscoutError

MlpKind = Literal["hash_moe", "moe"]
ScoringFunc = Literal["sqrtsoftplus", "softmax", "sigmoid"]
WeightFormat = Literal["dense", "shipped"]
"""How a built model holds the weights official checkpoints quantise: "dense" dequantised into the model's
dtype (`nn.Linear`s, stacked float experts); "shipped" as stored, FP8 block-scaled projections
(`Fp8BlockLinear`) and MXFP4 routed experts (packed uint8 bytes and e8m0 scale bytes)."""


class LayerKind(StrEnum):
    """Attention layer kinds, named as in transformers' `layer_types`."""

    SLIDING = "sliding_attention"
    CSA = "compressed_sparse_attention"
    HCA = "heavily_compressed_attention"


_RATIO_TO_KIND = {0: LayerKind.SLIDING, 4: LayerKind.CSA, 128: LayerKind.HCA}


class ModelConfigError(DeepscoutError, ValueError):
    """A V4 config is inconsistent or names something this runtime does not support."""


@dataclass(frozen=True)
class YarnScaling:
    """YaRN parameters of the compressed layers' RoPE (`rope_scaling` in config.json)."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float = 1.0


@dataclass(frozen=True)
class ModelArgs:
    """Shapes and hyper-parameters of a DeepSeek-V4 model (names follow config.json / transformers)."""

    vocab_size: int = 129280
    hidden_size: int = 4096
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 43
    num_attention_heads: int = 64
    head_dim: int = 512
    qk_rope_head_dim: int = 64
    q_lora_rank: int = 1024
    o_groups: int = 8
    o_lora_rank: int = 1024
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 6
    scoring_func: ScoringFunc = "sqrtsoftplus"
    routed_scaling_factor: float = 1.5
    swiglu_limit: float = 10.0
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    rope_scaling: YarnScaling | None = None
    layer_types: tuple[LayerKind, ...] = ()
    mlp_layer_types: tuple[MlpKind, ...] = ()
    csa_ratio: int = 4
    hca_ratio: int = 128
    sliding_window: int = 128
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    rms_norm_eps: float = 1e-6
    num_nextn_predict_layers: int = 1
    mtp_layer_types: tuple[LayerKind, ...] = ()
    max_position_embeddings: int = 1048576
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = self.num_hidden_layers
        if not self.layer_types:
            object.__setattr__(self, "layer_types", _default_layer_types(n))
        if not self.mlp_layer_types:
            object.__setattr__(self, "mlp_layer_types", _mlp_schedule(n, 3))
        if not self.mtp_layer_types:
            object.__setattr__(self, "mtp_layer_types", (LayerKind.SLIDING,) * self.num_nextn_predict_layers)
        object.__setattr__(self, "layer_types", tuple(LayerKind(t) for t in self.layer_types))
        object.__setattr__(self, "mtp_layer_types", tuple(LayerKind(t) for t in self.mtp_layer_types))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ModelConfigError naming the first inconsistency."""
        positive = [
            "vocab_size",
            "hidden_size",
            "moe_intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "head_dim",
            "q_lora_rank",
            "o_groups",
            "o_lora_rank",
            "n_routed_experts",
            "num_experts_per_tok",
            "sliding_window",
            "index_n_heads",
            "index_head_dim",
            "index_topk",
            "hc_mult",
            "hc_sinkhorn_iters",
            "csa_ratio",
            "hca_ratio",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ModelConfigError(f"{name} must be positive, got {getattr(self, name)}")
        checks: list[tuple[bool, str]] = [
            (
                len(self.layer_types) == self.num_hidden_layers,
                "len(layer_types) must equal num_hidden_layers",
            ),
            (
                len(self.mlp_layer_types) == self.num_hidden_layers,
                "len(mlp_layer_types) must equal num_hidden_layers",
            ),
            (all(t in ("hash_moe", "moe") for t in self.mlp_layer_types), "mlp_layer_types: hash_moe|moe"),
            (
                len(self.mtp_layer_types) == self.num_nextn_predict_layers,
                "len(mtp_layer_types) must equal num_nextn_predict_layers",
            ),
            (
                0 < self.qk_rope_head_dim <= self.head_dim and self.qk_rope_head_dim % 2 == 0,
                "qk_rope_head_dim must be even and in (0, head_dim]",
            ),
            (
                self.index_head_dim >= self.qk_rope_head_dim,
                "index_head_dim must hold the rope dims (>= qk_rope_head_dim)",
            ),
            (
                (self.num_attention_heads * self.head_dim) % self.o_groups == 0,
                "num_attention_heads * head_dim must be divisible by o_groups",
            ),
            (self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok > n_routed_experts"),
            (self.n_shared_experts == 1, "exactly one shared expert is supported (n_shared_experts=1)"),
            (self.scoring_func in ("sqrtsoftplus", "softmax", "sigmoid"), "scoring_func unknown"),
            (self.csa_ratio == 4, "CSA uses overlapping windows of m=4 (csa_ratio must be 4)"),
            (self.hca_ratio % self.csa_ratio == 0, "hca_ratio must be a multiple of csa_ratio"),
        ]
        for ok, message in checks:
            if not ok:
                raise ModelConfigError(f"invalid DeepSeek-V4 config: {message}")

    # ------------------------------------------------------------------ derived
    @property
    def num_mtp_layers(self) -> int:
        return self.num_nextn_predict_layers

    def ratio(self, kind: LayerKind) -> int:
        """Compression ratio of a layer kind (0 for sliding-only layers)."""
        return {LayerKind.SLIDING: 0, LayerKind.CSA: self.csa_ratio, LayerKind.HCA: self.hca_ratio}[kind]

    def with_(self, **changes: Any) -> ModelArgs:
        """A copy with some fields changed (re-validated)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ config.json
    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> ModelArgs:
        """Build from a config.json dict, folding in the legacy keys official checkpoints ship (the MTP
        layer count is ``num_nextn_predict_layers``, else the official inference code's ``n_mtp_layers``,
        else 1)."""
        c = dict(config)
        n = int(c.get("num_hidden_layers", cls.num_hidden_layers))
        n_mtp = int(c.get("num_nextn_predict_layers", c.get("n_mtp_layers", cls.num_nextn_predict_layers)))
        rates = dict(c.get("compress_rates") or {})
        csa = int(c.pop("compress_rate_csa", rates.get(LayerKind.CSA.value, 4)))
        hca = int(c.pop("compress_rate_hca", rates.get(LayerKind.HCA.value, 128)))
        ratio_to_kind = {0: LayerKind.SLIDING, csa: LayerKind.CSA, hca: LayerKind.HCA}
        layer_types: tuple[LayerKind, ...] = tuple(LayerKind(t) for t in c.get("layer_types") or ())
        mtp_types: tuple[LayerKind, ...] = ()
        legacy_ratios = c.get("compress_ratios")
        if legacy_ratios is not None:
            try:
                kinds = tuple(ratio_to_kind[int(r)] for r in legacy_ratios)
            except KeyError as exc:
                raise ModelConfigError(f"compress_ratios holds an unknown ratio {exc.args[0]}") from None
            layer_types = layer_types or kinds[:n]
            mtp_types = kinds[n : n + n_mtp]
        mtp_types = mtp_types + (LayerKind.SLIDING,) * (n_mtp - len(mtp_types))
        mlp_types: tuple[MlpKind, ...] = tuple(c.get("mlp_layer_types") or ())
        if not mlp_types:
            n_hash = int(c.get("num_hash_layers", 3))
            mlp_types = _mlp_schedule(n, n_hash)
        rope_dim = c.get("qk_rope_head_dim")
        head_dim = int(c.get("head_dim", cls.head_dim))
        if rope_dim is None:
            factor = c.get("partial_rotary_factor")
            rope_dim = int(head_dim * factor) if factor is not None else 64
        eos = c.get("eos_token_id", 1)
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        simple = {k: v for k, v in c.items() if k in known and k not in _NON_SCALAR}
        extra = {k: v for k, v in c.items() if k not in known}
        try:
            return cls(
                **simple,
                qk_rope_head_dim=int(rope_dim),
                layer_types=layer_types[:n],
                mlp_layer_types=tuple(mlp_types[:n]),
                num_nextn_predict_layers=n_mtp,
                mtp_layer_types=mtp_types,
                csa_ratio=csa,
                hca_ratio=hca,
                rope_scaling=_yarn_from(c),
                eos_token_id=eos[0] if isinstance(eos, list) else eos,
                extra=extra,
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ModelConfigError):
                raise
            raise ModelConfigError(f"invalid DeepSeek-V4 config.json: {exc}") from exc

    @classmethod
    def from_json(cls, path: str | Path) -> ModelArgs:
        """Read `config.json` (or the config.json inside a checkpoint directory)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ModelConfigError(f"no config.json at {path}; point at a DeepSeek-V4 checkpoint directory")
        return cls.from_dict(json.loads(path.read_text()))

    def to_hf_dict(self) -> dict[str, Any]:
        """The equivalent transformers `DeepseekV4Config` kwargs (modern keys)."""
        rope_scaling: dict[str, Any] = {}
        if self.rope_scaling is not None:
            rope_scaling = {"rope_type": "yarn", **asdict(self.rope_scaling)}
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": 1,
            "head_dim": self.head_dim,
            "partial_rotary_factor": self.qk_rope_head_dim / self.head_dim,
            "q_lora_rank": self.q_lora_rank,
            "o_groups": self.o_groups,
            "o_lora_rank": self.o_lora_rank,
            "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "scoring_func": self.scoring_func,
            "routed_scaling_factor": self.routed_scaling_factor,
            "swiglu_limit": self.swiglu_limit,
            "rope_theta": self.rope_theta,
            "compress_rope_theta": self.compress_rope_theta,
            "rope_parameters": rope_scaling or None,
            "layer_types": [t.value for t in self.layer_types],
            "mlp_layer_types": list(self.mlp_layer_types),
            "compress_rates": {LayerKind.CSA.value: self.csa_ratio, LayerKind.HCA.value: self.hca_ratio},
            "sliding_window": self.sliding_window,
            "index_n_heads": self.index_n_heads,
            "index_head_dim": self.index_head_dim,
            "index_topk": self.index_topk,
            "hc_mult": self.hc_mult,
            "hc_sinkhorn_iters": self.hc_sinkhorn_iters,
            "hc_eps": self.hc_eps,
            "rms_norm_eps": self.rms_norm_eps,
            "num_nextn_predict_layers": self.num_nextn_predict_layers,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": False,
        }


_NON_SCALAR = {
    "layer_types",
    "mlp_layer_types",
    "mtp_layer_types",
    "num_nextn_predict_layers",
    "rope_scaling",
    "qk_rope_head_dim",
    "eos_token_id",
    "csa_ratio",
    "hca_ratio",
}


def _mlp_schedule(n: int, n_hash: int) -> tuple[MlpKind, ...]:
    """The first `n_hash` layers hash-routed, the rest routed by score."""
    hashed: MlpKind = "hash_moe"
    routed: MlpKind = "moe"
    return (hashed,) * min(n, n_hash) + (routed,) * max(0, n - n_hash)


def _default_layer_types(n: int) -> tuple[LayerKind, ...]:
    """transformers' default schedule: 2 HCA, then CSA/HCA interleaved."""
    rest = tuple(LayerKind.CSA if i % 2 else LayerKind.HCA for i in range(max(n - 2, 0)))
    return ((LayerKind.HCA,) * min(n, 2) + rest)[:n]


def _yarn_from(config: dict[str, Any]) -> YarnScaling | None:
    params = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if isinstance(params.get("compress"), dict):
        params = params["compress"]
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return None
    if kind != "yarn":
        raise ModelConfigError(f"rope scaling {kind!r} is not supported; DeepSeek-V4 uses 'yarn' or none")
    factor = params.get("factor")
    original = params.get("original_max_position_embeddings")
    if factor is None or original is None:
        raise ModelConfigError("yarn rope_scaling needs 'factor' and 'original_max_position_embeddings'")
    return YarnScaling(
        factor=float(factor),
        original_max_position_embeddings=int(original),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        attention_factor=float(params.get("attention_factor", 1.0)),
    )


def tiny(
    layer_types: tuple[LayerKind | str, ...] = (LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA),
    *,
    num_hash_layers: int = 1,
    **overrides: Any,
) -> ModelArgs:
    """A small config for tests and benchmarks (hidden 64, vocab 256, short window/ratios kept real)."""
    kinds = tuple(LayerKind(t) for t in layer_types)
    n = len(kinds)
    base: dict[str, Any] = {
        "vocab_size": 256,
        "hidden_size": 64,
        "moe_intermediate_size": 32,
        "num_hidden_layers": n,
        "num_attention_heads": 4,
        "head_dim": 32,
        "qk_rope_head_dim": 8,
        "q_lora_rank": 32,
        "o_groups": 2,
        "o_lora_rank": 16,
        "n_routed_experts": 8,
        "num_experts_per_tok": 2,
        "layer_types": kinds,
        "mlp_layer_types": _mlp_schedule(n, num_hash_layers),
        "sliding_window": 128,
        "index_n_heads": 32,
        "index_head_dim": 16,
        "index_topk": 16,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "num_nextn_predict_layers": 1,
        "rope_scaling": YarnScaling(factor=16.0, original_max_position_embeddings=256),
        "max_position_embeddings": 4096,
    }
    base.update(overrides)
    return ModelArgs(**base)


def flash_shaped(num_hidden_layers: int = 43) -> ModelArgs:
    """V4-Flash shapes (43 layers: 2 sliding, then CSA/HCA alternating) for memory/speed measurements."""
    kinds = (LayerKind.SLIDING,) * 2 + tuple(
        LayerKind.CSA if i % 2 == 0 else LayerKind.HCA for i in range(max(0, num_hidden_layers - 2))
    )
    return ModelArgs(
        num_hidden_layers=num_hidden_layers,
        layer_types=kinds[:num_hidden_layers],
        rope_scaling=YarnScaling(factor=16.0, original_max_position_embeddings=65536),
    )
