"""DeepSeek-V4, parts to whole: the layer block (mHC-wrapped attention and MoE), MTP blocks, and the model.

Module and parameter names follow DeepSeek's official checkpoint naming (`layers.0.attn.wq_a.weight`, ...), so
a checkpoint's tensors load by name; `weights/weight_names.py` maps them to transformers' names.

The parts live beside this module: `primitives` (RMSNorm, RoPE), `compressor`, `indexer`, `attention`
(sliding/CSA/HCA, sparse and naive paths), `moe`, `mhc` (hyper-connections), `packing` (the packed batch)
and `random_weights`. The forward pass works on a packed batch, each row continuing its own `SequenceCache`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from deepscout.model_runtime.v4.cache.protocol import SequenceCache
from deepscout.model_runtime.v4.kernels.hc_streams import MERGE_COLLAPSE_MAX_ROWS
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.model.attention import Attention, AttentionBatch, AttnImpl
from deepscout.model_runtime.v4.model.decode_step import DecodeStep, LayerStorage, decode_attention
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model.mhc import (
    HcInput,
    HcSettings,
    HcState,
    hc_head,
    hc_head_parameters,
    hc_merge,
    hc_merge_into,
    hc_split,
)
from deepscout.model_runtime.v4.model.moe import MoE, RoutedExperts
from deepscout.model_runtime.v4.model.packing import RowSegment, pack_rows, packed_positions
from deepscout.model_runtime.v4.model.primitives import RMSNorm, RopeSpec, rope_inv_freq
from deepscout.model_runtime.v4.model.projections import projection
from deepscout.model_runtime.v4.model.random_weights import fill_random_
from deepscout.model_runtime.v4.model.side_streams import SideStreams
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, ModelConfigError, WeightFormat
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK, FP8_BLOCK

# Parameters kept in float32 when the model is cast to a lower precision (as the official checkpoints ship
# them; the router's weight too, as routing runs in float32 and converting it per call cost every decode step
# 43 conversions of 2 MB).
_FLOAT32_SUFFIXES = ("attn_sink", "ape", "gate.bias", "ffn.gate.weight", "norm.weight")
_FLOAT32_MARKERS = ("hc_attn_", "hc_ffn_", "hc_head_")


class Block(nn.Module):
    """One layer: mHC-wrapped attention, then mHC-wrapped MoE (projections and experts in `weights`).

    `hc_arrivals` is the counter the merges' one-launch collapse meets by (`mhc.hc_merge_into`), an element
    a token: not saved, a multiple of the launch's program count between launches. Whatever (re)places it
    leaves it zero: `_apply` zeroes it (`to_empty`, `.to(device)`), and the loader allocates unsaved buffers
    zeroed."""

    hc_arrivals: torch.Tensor

    def __init__(
        self, args: ModelArgs, kind: LayerKind, hash_routed: bool, weights: WeightFormat = "dense"
    ) -> None:
        super().__init__()
        self.args = args
        self.attn = Attention(args, kind, weights)
        self.ffn = MoE(args, hash_routed, weights)
        self.attn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.ffn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        mix = (2 + args.hc_mult) * args.hc_mult
        hc_dim = args.hc_mult * args.hidden_size
        self.hc_attn_fn = nn.Parameter(torch.zeros(mix, hc_dim, dtype=torch.float32))
        self.hc_ffn_fn = nn.Parameter(torch.zeros(mix, hc_dim, dtype=torch.float32))
        self.hc_attn_base = nn.Parameter(torch.zeros(mix, dtype=torch.float32))
        self.hc_ffn_base = nn.Parameter(torch.zeros(mix, dtype=torch.float32))
        self.hc_attn_scale = nn.Parameter(torch.ones(3, dtype=torch.float32))
        self.hc_ffn_scale = nn.Parameter(torch.ones(3, dtype=torch.float32))
        self.register_buffer("hc_arrivals", torch.zeros(MERGE_COLLAPSE_MAX_ROWS, dtype=torch.int64), False)

    @property
    def hc_attn_input(self) -> HcInput:
        return HcInput(self.hc_attn_fn, self.hc_attn_scale, self.hc_attn_base, self.attn_norm)

    @property
    def hc_ffn_input(self) -> HcInput:
        return HcInput(self.hc_ffn_fn, self.hc_ffn_scale, self.hc_ffn_base, self.ffn_norm)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Block:
        super()._apply(fn, recurse)
        with torch.no_grad():
            self.hc_arrivals.zero_()
        return self

    def forward(
        self, streams: torch.Tensor, token_ids: torch.Tensor, batch: AttentionBatch, dtype: torch.dtype
    ) -> torch.Tensor:
        """New hc streams `[N, hc, dim]` (the token ids feed the hash router; attention and MoE compute in
        the model's `dtype`)."""
        return self.run(
            HcState(streams), token_ids, lambda x: self.attn(x, batch), batch.kernels, dtype
        ).streams

    def run(
        self,
        state: HcState,
        token_ids: torch.Tensor,
        attend: Callable[[torch.Tensor], torch.Tensor],
        kernels: KernelImpl,
        dtype: torch.dtype,
        side: SideStreams | None = None,
        after: HcInput | None = None,
    ) -> HcState:
        """The block around an attention call `attend(normed inputs) -> outputs` (the protocol path's or
        the device decode step's), its branches fed in the model's `dtype`; with `side` (a device decode
        step's streams, `side_streams.py`) the mHC mappings run on its `mix` stream (`mhc.py`) and the MoE's
        routing on its `route` stream. With `after` (the next layer's or the hyper-head's input) the last
        merge also computes the new streams' premix by it and its input."""
        hc = HcSettings.of(self.args)
        mix_stream = side.mix if side is not None else None
        arrivals = self.hc_arrivals
        x, mapping = hc_split(state, self.hc_attn_input, hc, dtype, kernels, mix_stream)
        ffn_input = self.hc_ffn_input
        state = hc_merge_into(attend(x), state.streams, mapping, ffn_input, hc, dtype, kernels, arrivals)
        x, mapping = hc_split(state, ffn_input, hc, dtype, kernels, mix_stream)
        out = self.ffn(x, token_ids, kernels, side.route if side is not None else None)
        if after is None:
            return HcState(hc_merge(out, state.streams, mapping, kernels))
        return hc_merge_into(out, state.streams, mapping, after, hc, dtype, kernels, arrivals)


class MTPBlock(Block):
    """Multi-token-prediction layer: fuses the next token's embedding with the main model's streams, runs one
    block, and predicts with its own hyper-head (weights `mtp.{k}.*` of official checkpoints)."""

    def __init__(self, args: ModelArgs, kind: LayerKind, weights: WeightFormat = "dense") -> None:
        super().__init__(args, kind, hash_routed=False, weights=weights)
        self.e_proj = projection(args.hidden_size, args.hidden_size, weights)
        self.h_proj = projection(args.hidden_size, args.hidden_size, weights)
        self.enorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.hnorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.hc_head_fn, self.hc_head_base, self.hc_head_scale = hc_head_parameters(args)


class DeepseekV4Model(nn.Module):
    """The whole DeepSeek-V4 causal LM over explicit per-sequence caches.

    `weights` says how the checkpoint-quantised weights are held (`WeightFormat`): "dense" in the model's
    dtype, or "shipped" — FP8 block-scaled projections (attention, indexer `wq_b`, shared experts, MTP
    `e_proj`/`h_proj`) and MXFP4 routed experts, as official checkpoints store them."""

    main_inv_freq: torch.Tensor
    compress_inv_freq: torch.Tensor

    def __init__(
        self,
        args: ModelArgs,
        *,
        attn_impl: AttnImpl = "sparse",
        kernels: KernelImpl = "reference",
        weights: WeightFormat = "dense",
    ) -> None:
        super().__init__()
        if weights == "shipped":
            check_shipped_shapes(args)
        self.args = args
        self.attn_impl: AttnImpl = attn_impl
        self.weight_format: WeightFormat = weights
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(
            Block(args, kind, mlp == "hash_moe", weights)
            for kind, mlp in zip(args.layer_types, args.mlp_layer_types, strict=True)
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self.vocab_parallelism: VocabParallelism | None = None
        self.hc_head_fn, self.hc_head_base, self.hc_head_scale = hc_head_parameters(args)
        self.mtp = nn.ModuleList(MTPBlock(args, kind, weights) for kind in args.mtp_layer_types)
        self.compute_buffers()
        self.compress_rope_scaling = 1.0 if args.rope_scaling is None else args.rope_scaling.attention_factor
        self._hc = HcSettings.of(args)
        self.kernels = kernels

    def compute_buffers(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the buffers derived from `args` alone (the RoPE inverse frequencies, not saved in
        checkpoints) on `device` (None: the default device): at construction, and after a model built on
        the meta device is allocated."""
        args, rope_dim = self.args, self.args.qk_rope_head_dim
        main = rope_inv_freq(rope_dim, args.rope_theta, None)
        compress = rope_inv_freq(rope_dim, args.compress_rope_theta, args.rope_scaling)
        self.register_buffer("main_inv_freq", main.to(device), persistent=False)
        self.register_buffer("compress_inv_freq", compress.to(device), persistent=False)

    @property
    def kernels(self) -> KernelImpl:
        """Which path every fused operation takes: "reference" (PyTorch) or "triton"."""
        return self._kernels

    @kernels.setter
    def kernels(self, kernels: KernelImpl) -> None:
        self._kernels: KernelImpl = kernels
        for module in self.modules():
            if isinstance(module, RMSNorm | Fp8BlockLinear):
                module.kernels = kernels

    def rope_spec(self, kind: LayerKind) -> RopeSpec:
        """Sliding layers use the main RoPE; CSA/HCA layers and their compressors YaRN's."""
        if kind is LayerKind.SLIDING:
            return RopeSpec(self.main_inv_freq, kernels=self.kernels)
        return RopeSpec(self.compress_inv_freq, self.compress_rope_scaling, self.kernels)

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(
        cls,
        args: ModelArgs,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        attn_impl: AttnImpl = "sparse",
        kernels: KernelImpl = "reference",
        device: torch.device | str = "cpu",
        weights: WeightFormat = "dense",
    ) -> DeepseekV4Model:
        """Random weights for tests/benchmarks (see `random_weights`), so every code path is exercised.

        Values are drawn on `device` (fast for large shapes); a seed gives different values per device type.
        With `weights="shipped"` the FP8 projections and MXFP4 experts are drawn and quantised there one
        projection (one expert's) at a time.
        """
        with torch.device(device):
            model = cls(args, attn_impl=attn_impl, kernels=kernels, weights=weights)
        fill_random_(model, args, torch.Generator(device=device).manual_seed(seed))
        return model.cast(dtype)

    def cast(self, dtype: torch.dtype) -> DeepseekV4Model:
        """Cast weights to `dtype`, keeping norms, sinks, biases and mHC parameters in float32."""
        for module in self.modules():
            if isinstance(module, RoutedExperts):
                module.to(dtype)  # one conversion per stacked projection; the experts' weights stay views
        for name, param in self.named_parameters():
            keep = name.endswith(_FLOAT32_SUFFIXES) or any(m in name for m in _FLOAT32_MARKERS)
            param.data = param.data.to(torch.float32 if keep else dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        caches: Sequence[SequenceCache],
        lengths: Sequence[int] | None = None,
        *,
        last_only: bool = False,
        attn_impl: AttnImpl | None = None,
    ) -> torch.Tensor:
        """Logits for `input_ids` `[B, S]` continuing each row's cache (rows right-padded to S when `lengths`
        is given). Returns `[B, S, vocab]` (padding positions are zero) or `[B, vocab]` with `last_only`."""
        streams, segments = self.forward_streams(input_ids, caches, lengths, attn_impl=attn_impl)
        if last_only:
            last = torch.tensor([s.offset + s.length - 1 for s in segments], device=streams.device)
            return self.logits(streams[last])
        logits = self.logits(streams)
        out = logits.new_zeros(input_ids.shape[0], input_ids.shape[1], logits.shape[-1])
        for row, seg in enumerate(segments):
            out[row, : seg.length] = logits[seg.offset : seg.offset + seg.length]
        return out

    def forward_streams(
        self,
        input_ids: torch.Tensor,
        caches: Sequence[SequenceCache],
        lengths: Sequence[int] | None = None,
        *,
        attn_impl: AttnImpl | None = None,
    ) -> tuple[torch.Tensor, list[RowSegment]]:
        """Run all layers; returns the packed final hc streams `[N, hc, dim]` and the row segments."""
        token_ids, segments = pack_rows(input_ids, caches, lengths)
        impl = attn_impl or self.attn_impl
        x = self.embed(token_ids)
        # the residual streams stay in float32 whatever the weights' dtype (blocks compute in that dtype)
        streams = x.float().unsqueeze(1).expand(-1, self.args.hc_mult, -1).contiguous()
        positions = packed_positions(segments, x.device)
        compress_rope = self.rope_spec(LayerKind.CSA)
        tables = {kind: self.rope_spec(kind).at(positions) for kind in (LayerKind.SLIDING, LayerKind.CSA)}
        for i, module in enumerate(self.layers):
            layer = cast(Block, module)
            sliding = layer.attn.kind is LayerKind.SLIDING
            table = tables[LayerKind.SLIDING if sliding else LayerKind.CSA]
            layer_caches = [c.layer(i) for c in caches]
            batch = AttentionBatch(
                segments, layer_caches, positions, table, compress_rope, impl, self.kernels
            )
            streams = layer(streams, token_ids, batch, self.dtype)
        for cache, seg in zip(caches, segments, strict=True):
            cache.advance(seg.length)
        return streams, segments

    def decode(self, step: DecodeStep, storage: Sequence[LayerStorage]) -> torch.Tensor:
        """Float32 next-token logits `[B, vocab]` of one device decode step (`decode_step.py`): every row adds
        one token, reading and writing the engine's storage directly; no host sync, graph-capturable."""
        x = self.embed(step.token_ids)
        state = HcState(x.float().unsqueeze(1).expand(-1, self.args.hc_mult, -1).contiguous())
        compress_rope = self.rope_spec(LayerKind.CSA)
        for i, module in enumerate(self.layers):
            layer = cast(Block, module)
            kind = LayerKind.SLIDING if layer.attn.kind is LayerKind.SLIDING else LayerKind.CSA
            table = step.derived(("rope", kind), partial(self.rope_spec(kind).at, step.positions))
            attend = partial(
                decode_attention,
                layer.attn,
                storage=storage[i],
                step=step,
                rope=table,
                compress_rope=compress_rope,
            )
            last = i + 1 == len(self.layers)
            after = _head_input(self) if last else cast(Block, self.layers[i + 1]).hc_attn_input
            state = layer.run(
                state, step.token_ids, attend, step.kernels, self.dtype, step.side_streams, after
            )
        return self._head_logits(self, state).float()

    def logits(self, streams: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits from final streams `[n, hc, dim]` (hyper-head, norm, head)."""
        return self._head_logits(self, HcState(streams))

    def forward_mtp(
        self,
        next_ids: torch.Tensor,
        streams: torch.Tensor,
        segments: Sequence[RowSegment],
        caches: Sequence[SequenceCache],
        depth: int = 0,
        *,
        attn_impl: AttnImpl | None = None,
    ) -> torch.Tensor:
        """Draft logits `[N, vocab]` of MTP layer `depth` from the main model's packed streams and the packed
        next-token ids; uses cache layer `num_hidden_layers + depth` (positions as in `segments`)."""
        block = cast(MTPBlock, self.mtp[depth])
        e = block.enorm(self.embed(next_ids))
        h = block.h_proj(block.hnorm(streams).to(self.dtype))
        x = (block.e_proj(e).unsqueeze(1) + h).float()
        positions = packed_positions(segments, x.device)
        table = self.rope_spec(block.attn.kind).at(positions)
        layer_caches = [c.layer(self.args.num_hidden_layers + depth) for c in caches]
        impl = attn_impl or self.attn_impl
        compress_rope = self.rope_spec(LayerKind.CSA)
        batch = AttentionBatch(segments, layer_caches, positions, table, compress_rope, impl, self.kernels)
        x = block(x, next_ids, batch, self.dtype)
        return self._head_logits(block, HcState(x))

    def _head_logits(self, owner: DeepseekV4Model | MTPBlock, state: HcState) -> torch.Tensor:
        """Logits through `owner`'s hyper-head and final norm (the model's own, or an MTP block's), from the
        state's premix and collapse when the last merge computed them."""
        x = hc_head(state, _head_input(owner), self._hc, self.head.weight.dtype, self.kernels)
        share = self.vocab_parallelism
        if share is None:
            return self.head(x)
        return share.gather(F.linear(x, self.head.weight[share.rows]))


def _head_input(owner: DeepseekV4Model | MTPBlock) -> HcInput:
    """The hyper-head's collapse: `owner`'s head mixing parameters and its final norm."""
    return HcInput(owner.hc_head_fn, owner.hc_head_scale, owner.hc_head_base, owner.norm)


@dataclass(frozen=True)
class VocabParallelism:
    """One rank's part in the logits (`DeepseekV4Model.vocab_parallelism`): it computes the logits of the
    vocabulary `rows` of the head (a view: every rank holds the whole head and reads only its rows), and
    `gather` puts the ranks' equal shares side by side in rank order, on every rank."""

    rows: slice
    gather: Callable[[torch.Tensor], torch.Tensor]


def check_shipped_shapes(args: ModelArgs) -> None:
    """Raise unless `args` fits the shipped formats: each `wo_a` group whole 128-row FP8 scale blocks, the
    experts' rows whole 32-element MXFP4 groups."""
    if args.o_lora_rank % FP8_BLOCK:
        raise ModelConfigError(
            f"shipped weights need o_lora_rank a multiple of {FP8_BLOCK} (grouped FP8 wo_a), "
            f"got {args.o_lora_rank}"
        )
    if args.hidden_size % FP4_BLOCK or args.moe_intermediate_size % FP4_BLOCK:
        raise ModelConfigError(
            f"shipped weights need hidden_size and moe_intermediate_size multiples of {FP4_BLOCK} (MXFP4 "
            f"experts), got {args.hidden_size} and {args.moe_intermediate_size}"
        )
