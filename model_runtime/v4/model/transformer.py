"""DeepSeek-V4, parts to whole: norms, RoPE, compressors, indexer, attention, MoE, mHC, blocks, model.

Module and parameter names follow DeepSeek's official checkpoint naming (`layers.0.attn.wq_a.weight`, ...), so
a checkpoint's tensors load by name; `weight_names.py` maps them to transformers' names.

The forward pass works on a *packed* batch: the valid tokens of all rows concatenated (`[N, ...]`), each row a
segment with its own start position read from its `SequenceCache`. Everything except attention is per token;
attention runs per row against that row's cache, which this file reaches only through the cache protocol.

Attention implementations (`AttnImpl`):
* "sparse": each query attends to its sliding window (a band of the row's raw keys) plus the *selected*
  compressed entries only — the indexer's top-k gathered from the cache on CSA layers, the causally
  complete entries on HCA layers — in query blocks, so memory grows with window + k, not with context.
* "naive": a dense reference: all window keys and all compressed entries with an explicit mask, as the
  transformers implementation builds it. Used to cross-check "sparse".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.cache.protocol import CompressorName, CompressorTail, LayerCache
from deepscout.model_runtime.v4.cache.protocol import SequenceCache as SequenceCacheProtocol
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, YarnScaling

AttnImpl = Literal["naive", "sparse"]
_QUERY_BLOCK = 64


class ForwardInputError(DeepscoutError, ValueError):
    """The inputs handed to the model's forward are inconsistent (shapes, lengths, caches)."""


# ----------------------------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """RMSNorm with a float32 weight; computes in float32 and casts back once."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * xf).to(x.dtype)


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMS normalisation over the last dim (the scale is computed in float32)."""
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)


# ------------------------------------------------------------------------------------------------ RoPE


def rope_inv_freq(rope_dim: int, theta: float, yarn: YarnScaling | None) -> torch.Tensor:
    """Inverse frequencies (one per interleaved pair), with YaRN interpolation when `yarn` is given."""
    pos_freqs = theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float) / rope_dim)
    inv_freq = 1.0 / pos_freqs
    if yarn is None:
        return inv_freq

    def correction_dim(rotations: float) -> float:
        return (rope_dim * math.log(yarn.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
            2 * math.log(theta)
        )

    low = max(math.floor(correction_dim(yarn.beta_fast)), 0)
    high = min(math.ceil(correction_dim(yarn.beta_slow)), rope_dim - 1)
    span = (high - low) if high != low else 0.001
    ramp = torch.clamp((torch.arange(rope_dim // 2, dtype=torch.float32) - low) / span, 0, 1)
    extrapolation = 1 - ramp
    interpolated = 1.0 / (yarn.factor * pos_freqs)
    return interpolated * (1 - extrapolation) + inv_freq * extrapolation


@dataclass(frozen=True)
class RopeSpec:
    """A RoPE flavour: inverse frequencies and the attention scaling folded into cos/sin."""

    inv_freq: torch.Tensor
    scaling: float = 1.0

    def at(self, positions: torch.Tensor) -> RopeTable:
        return RopeTable.at(positions, self.inv_freq, self.scaling)


@dataclass(frozen=True)
class RopeTable:
    """cos/sin (float32, one per pair) at some positions, plus the attention scaling they carry."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def at(cls, positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0) -> RopeTable:
        freqs = positions.float()[..., None] * inv_freq.to(positions.device)
        return cls(freqs.cos() * scaling, freqs.sin() * scaling)


def apply_rope(x: torch.Tensor, table: RopeTable, *, inverse: bool = False) -> torch.Tensor:
    """Rotate the trailing rope channels (interleaved pairs) of `x` `[n, (heads,) dim]` per table row.

    `inverse` applies the conjugate rotation (used on the attention output, paper §2.3.3).
    """
    cos = table.cos.repeat_interleave(2, dim=-1)
    sin = table.sin.repeat_interleave(2, dim=-1)
    if inverse:
        sin = -sin
    if x.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    rope_dim = cos.shape[-1]
    nope, rope = x[..., :-rope_dim], x[..., -rope_dim:]
    rotated_half = torch.stack((-rope[..., 1::2], rope[..., 0::2]), dim=-1).flatten(-2)
    rotated = (rope.float() * cos + rotated_half.float() * sin).to(x.dtype)
    return torch.cat([nope, rotated], dim=-1)


# ------------------------------------------------------------------------------------------ compressors


class Compressor(nn.Module):
    """Learned KV compressor: softmax-gated pooling of `ratio` tokens into one entry (paper eqs. 9-12, 20-23).

    With `overlap` (CSA, ratio 4) each token projects to two series: Ca (`[:dim]`, feeds the *next* window's
    entry) and Cb (`[dim:]`, feeds its own window's entry); entry w pools window w-1's Ca with window w's Cb.
    """

    def __init__(self, args: ModelArgs, ratio: int, dim: int) -> None:
        super().__init__()
        self.ratio = ratio
        self.dim = dim
        self.overlap = ratio == args.csa_ratio
        width = (2 if self.overlap else 1) * dim
        self.ape = nn.Parameter(torch.zeros(ratio, width, dtype=torch.float32))
        self.wkv = nn.Linear(args.hidden_size, width, bias=False)
        self.wgate = nn.Linear(args.hidden_size, width, bias=False)
        self.norm = RMSNorm(dim, args.rms_norm_eps)

    def compress(
        self, x: torch.Tensor, cache: LayerCache, name: CompressorName, rope: RopeSpec
    ) -> torch.Tensor:
        """Project one row's new tokens `x` `[L, hidden]`, append the completed entries to the cache.

        Returns the new entries `[n_new, dim]` (already normed and RoPE'd at position entry_index * ratio).
        """
        kv, gate = self.wkv(x), self.wgate(x)
        tail = cache.read_tail(name)
        if tail is not None and tail.kv.shape[0]:
            kv = torch.cat([tail.kv.to(kv.dtype), kv])
            gate = torch.cat([tail.gate.to(gate.dtype), gate])
        usable = (kv.shape[0] // self.ratio) * self.ratio
        overlap_kv = None if tail is None else tail.overlap_kv
        overlap_gate = None if tail is None else tail.overlap_gate
        first_entry = cache.num_entries(name)
        n_windows = usable // self.ratio
        if n_windows == 0:
            entries = kv.new_zeros(0, self.dim)
        else:
            chunk_kv = kv[:usable].view(n_windows, self.ratio, -1)
            chunk_gate = gate[:usable].view(n_windows, self.ratio, -1) + self.ape
            if self.overlap:
                slots_kv, slots_gate = self._overlap_slots(chunk_kv, chunk_gate, overlap_kv, overlap_gate)
                overlap_kv = chunk_kv[-1, :, : self.dim].clone()
                overlap_gate = chunk_gate[-1, :, : self.dim].clone()
            else:
                slots_kv, slots_gate = chunk_kv, chunk_gate
            weights = slots_gate.softmax(dim=1, dtype=torch.float32).to(slots_kv.dtype)
            entries = self.norm((slots_kv * weights).sum(dim=1))
            positions = (torch.arange(n_windows, device=x.device) + first_entry) * self.ratio
            entries = apply_rope(entries, rope.at(positions))
            cache.append_entries(name, entries)
        cache.write_tail(name, CompressorTail(kv[usable:], gate[usable:], overlap_kv, overlap_gate))
        return entries

    def _overlap_slots(
        self,
        chunk_kv: torch.Tensor,
        chunk_gate: torch.Tensor,
        prior_kv: torch.Tensor | None,
        prior_gate: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lay out `[windows, 2*ratio, dim]`: previous window's Ca in the first half, own Cb in the second."""
        n, r, d = chunk_kv.shape[0], self.ratio, self.dim
        slots_kv = chunk_kv.new_zeros(n, 2 * r, d)
        slots_gate = chunk_gate.new_full((n, 2 * r, d), float("-inf"))
        slots_kv[:, r:] = chunk_kv[..., d:]
        slots_gate[:, r:] = chunk_gate[..., d:]
        slots_kv[1:, :r] = chunk_kv[:-1, :, :d]
        slots_gate[1:, :r] = chunk_gate[:-1, :, :d]
        if prior_kv is not None and prior_gate is not None:
            slots_kv[0, :r] = prior_kv.to(slots_kv.dtype)
            slots_gate[0, :r] = prior_gate.to(slots_gate.dtype)
        return slots_kv, slots_gate


class Indexer(nn.Module):
    """Lightning indexer (paper eqs. 13-17): its own small compressor, and scores
    `sum_h w_{t,h} * ReLU(q_{t,h} . K_s)` of queries against every compressed indexer key."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.index_n_heads
        self.head_dim = args.index_head_dim
        self.topk = args.index_topk
        self.wq_b = nn.Linear(args.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.weights_proj = nn.Linear(args.hidden_size, self.n_heads, bias=False)
        self.compressor = Compressor(args, args.csa_ratio, self.head_dim)

    def queries(
        self, x: torch.Tensor, q_residual: torch.Tensor, rope: RopeTable
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token indexer queries `[n, heads, dim]` (RoPE'd) and head weights `[n, heads]` (float32)."""
        q = self.wq_b(q_residual).view(x.shape[0], self.n_heads, self.head_dim)
        q = apply_rope(q, rope)
        weights = self.weights_proj(x).float() * self.n_heads**-0.5
        return q, weights

    def scores(self, q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Index scores `[n, T]` (float32) of queries against keys `[T, dim]`."""
        logits = torch.matmul(q.float(), keys.float().t()).relu_()  # [n, heads, T]
        head_weights = (weights * self.head_dim**-0.5).unsqueeze(1)  # [n, 1, heads]
        return torch.bmm(head_weights, logits).squeeze(1)


def causal_entry_limit(positions: torch.Tensor, ratio: int) -> torch.Tensor:
    """Per query: how many compressed entries are complete (entry e covers tokens [e*ratio, (e+1)*ratio))."""
    return (positions + 1) // ratio


def select_topk(scores: torch.Tensor, limit: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k entry indices `[n, min(k, T)]` among each query's causal entries, and their validity."""
    n_entries = scores.shape[-1]
    k = min(k, n_entries)
    entry = torch.arange(n_entries, device=scores.device)
    future = entry[None, :] >= limit[:, None]
    indices = scores.masked_fill(future, float("-inf")).topk(k, dim=-1).indices
    return indices, indices < limit[:, None]


# -------------------------------------------------------------------------------------------- attention


@dataclass(frozen=True)
class RowSegment:
    """One batch row inside the packed tokens: `offset` into the packed axis, `start` position, `length`."""

    offset: int
    start: int
    length: int

    @property
    def positions(self) -> torch.Tensor:
        return torch.arange(self.start, self.start + self.length)


class Attention(nn.Module):
    """Shared-KV MQA with partial RoPE, per-head sinks, sliding window, optional CSA/HCA compressed branch,
    inverse RoPE on the output and grouped low-rank output projection (paper §2.3)."""

    def __init__(self, args: ModelArgs, kind: LayerKind) -> None:
        super().__init__()
        self.args = args
        self.kind = kind
        self.n_heads = args.num_attention_heads
        self.head_dim = args.head_dim
        self.window = args.sliding_window
        self.scale = self.head_dim**-0.5
        self.attn_sink = nn.Parameter(torch.zeros(self.n_heads, dtype=torch.float32))
        self.wq_a = nn.Linear(args.hidden_size, args.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(args.q_lora_rank, args.rms_norm_eps)
        self.wq_b = nn.Linear(args.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.wkv = nn.Linear(args.hidden_size, self.head_dim, bias=False)
        self.kv_norm = RMSNorm(self.head_dim, args.rms_norm_eps)
        group_in = self.n_heads * self.head_dim // args.o_groups
        self.wo_a = nn.Linear(group_in, args.o_groups * args.o_lora_rank, bias=False)
        self.wo_b = nn.Linear(args.o_groups * args.o_lora_rank, args.hidden_size, bias=False)
        self.ratio = args.ratio(kind)
        self.compressor: Compressor | None = None
        self.indexer: Indexer | None = None
        if kind is not LayerKind.SLIDING:
            self.compressor = Compressor(args, self.ratio, self.head_dim)
        if kind is LayerKind.CSA:
            self.indexer = Indexer(args)

    def forward(
        self,
        x: torch.Tensor,
        segments: Sequence[RowSegment],
        caches: Sequence[LayerCache],
        rope: RopeTable,
        compress_rope: RopeSpec,
        impl: AttnImpl,
    ) -> torch.Tensor:
        """`x` `[N, hidden]` packed normed inputs; `rope` at the packed positions; returns `[N, hidden]`."""
        n = x.shape[0]
        q_residual = self.q_norm(self.wq_a(x))
        q = rms_normalize(self.wq_b(q_residual).view(n, self.n_heads, self.head_dim), self.args.rms_norm_eps)
        q = apply_rope(q, rope)
        kv = apply_rope(self.kv_norm(self.wkv(x)), rope)
        index_q: torch.Tensor | None = None
        index_w: torch.Tensor | None = None
        if self.indexer is not None:
            index_q, index_w = self.indexer.queries(x, q_residual, rope)
        outputs = []
        for seg, cache in zip(segments, caches, strict=True):
            rows = slice(seg.offset, seg.offset + seg.length)
            positions = seg.positions.to(x.device)
            window = cache.read_window()
            keys = torch.cat([window.kv.to(kv.dtype), kv[rows]])
            key_pos = torch.cat([window.positions.to(x.device), positions])
            cache.write_window(kv[rows], positions)
            if self.compressor is not None:
                self.compressor.compress(x[rows], cache, "main", compress_rope)
            if self.indexer is not None:
                self.indexer.compressor.compress(x[rows], cache, "indexer", compress_rope)
            row_index = None
            if index_q is not None and index_w is not None:
                row_index = (index_q[rows], index_w[rows])
            attend = self._attend_sparse if impl == "sparse" else self._attend_naive
            outputs.append(attend(q[rows], seg, positions, keys, key_pos, cache, row_index))
        out = apply_rope(torch.cat(outputs), rope, inverse=True)
        return self._project_out(out)

    def _project_out(self, out: torch.Tensor) -> torch.Tensor:
        """Grouped low-rank output projection: per group `wo_a[g]`, then `wo_b` over all groups."""
        groups = self.args.o_groups
        grouped = out.reshape(out.shape[0], groups, -1)
        weight = self.wo_a.weight.view(groups, -1, grouped.shape[-1])
        mid = torch.einsum("ngi,gri->ngr", grouped, weight).flatten(1)
        return self.wo_b(mid)

    # --------------------------------------------------------------- compressed-entry selection
    def _selected_entries(
        self,
        positions: torch.Tensor,
        last_position: int,
        cache: LayerCache,
        row_index: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For queries at `positions` (the last is `last_position`): the compressed entries they attend to
        and their validity `[n, k]`.

        CSA: the indexer's top-k among causal entries, gathered per query (`[n, k, dim]`). HCA: every causal
        entry, shared by the block's queries (`[k, dim]`). None when there is nothing to attend to.
        """
        if self.kind is LayerKind.SLIDING:
            return None
        limit = causal_entry_limit(positions, self.ratio)
        if self.kind is LayerKind.HCA:
            n_needed = (last_position + 1) // self.ratio
            if n_needed == 0:
                return None
            entries = cache.all_entries("main")[:n_needed]
            valid = torch.arange(n_needed, device=positions.device)[None, :] < limit[:, None]
            return entries, valid
        assert self.indexer is not None and row_index is not None
        keys = cache.all_entries("indexer")
        if keys.shape[0] == 0:
            return None
        scores = self.indexer.scores(row_index[0], row_index[1], keys)
        indices, valid = select_topk(scores, limit, self.indexer.topk)
        return cache.gather_entries("main", indices.clamp(max=keys.shape[0] - 1)), valid

    # --------------------------------------------------------------- attention kernels
    def _softmax_with_sink(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the last dim with one extra per-head sink logit that absorbs mass and is dropped."""
        sink = self.attn_sink.to(logits.dtype).view(1, -1, 1).expand(logits.shape[0], -1, 1)
        combined = torch.cat([logits, sink], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        return combined.softmax(dim=-1)[..., :-1]

    def _attend_sparse(
        self,
        q: torch.Tensor,
        seg: RowSegment,
        positions: torch.Tensor,
        keys: torch.Tensor,
        key_pos: torch.Tensor,
        cache: LayerCache,
        row_index: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Window band + selected entries only, in query blocks (bounds from host integers: no syncs)."""
        first_key = seg.start - (key_pos.shape[0] - seg.length)  # window positions are consecutive
        outs = []
        for b0 in range(0, q.shape[0], _QUERY_BLOCK):
            qb, pb = q[b0 : b0 + _QUERY_BLOCK], positions[b0 : b0 + _QUERY_BLOCK]
            first, last = seg.start + b0, seg.start + b0 + qb.shape[0] - 1
            lo = max(first - self.window + 1 - first_key, 0)
            hi = last - first_key + 1
            band, band_pos = keys[lo:hi], key_pos[lo:hi]
            logits = torch.einsum("nhd,kd->nhk", qb, band) * self.scale
            visible = (band_pos[None, :] <= pb[:, None]) & (band_pos[None, :] > pb[:, None] - self.window)
            logits = logits.masked_fill(~visible[:, None, :], float("-inf"))
            row_idx = None
            if row_index is not None:
                row_idx = (row_index[0][b0 : b0 + _QUERY_BLOCK], row_index[1][b0 : b0 + _QUERY_BLOCK])
            selected = self._selected_entries(pb, last, cache, row_idx)
            if selected is None:
                probs = self._softmax_with_sink(logits)
                outs.append(torch.einsum("nhk,kd->nhd", probs, band))
                continue
            entries, valid = selected
            entries = entries.to(q.dtype)
            per_query = "nkd" if entries.dim() == 3 else "kd"
            comp_logits = torch.einsum(f"nhd,{per_query}->nhk", qb, entries) * self.scale
            comp_logits = comp_logits.masked_fill(~valid[:, None, :], float("-inf"))
            probs = self._softmax_with_sink(torch.cat([logits, comp_logits], dim=-1))
            pw, pc = probs[..., : band.shape[0]], probs[..., band.shape[0] :]
            comp_out = torch.einsum(f"nhk,{per_query}->nhd", pc, entries)
            outs.append(torch.einsum("nhk,kd->nhd", pw, band) + comp_out)
        return torch.cat(outs)

    def _attend_naive(
        self,
        q: torch.Tensor,
        seg: RowSegment,
        positions: torch.Tensor,
        keys: torch.Tensor,
        key_pos: torch.Tensor,
        cache: LayerCache,
        row_index: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Dense reference: every window key and every compressed entry, with a mask."""
        visible = (key_pos[None, :] <= positions[:, None]) & (
            key_pos[None, :] > positions[:, None] - self.window
        )
        all_keys = keys
        if self.kind is not LayerKind.SLIDING:
            entries = cache.all_entries("main").to(q.dtype)
            limit = causal_entry_limit(positions, self.ratio)
            entry_visible = torch.arange(entries.shape[0], device=q.device)[None, :] < limit[:, None]
            if self.kind is LayerKind.CSA and entries.shape[0]:
                assert self.indexer is not None and row_index is not None
                scores = self.indexer.scores(row_index[0], row_index[1], cache.all_entries("indexer"))
                indices, valid = select_topk(scores, limit, self.indexer.topk)
                chosen = torch.zeros_like(entry_visible)
                chosen.scatter_(1, indices, valid)
                entry_visible = chosen
            all_keys = torch.cat([keys, entries])
            visible = torch.cat([visible, entry_visible], dim=1)
        logits = torch.einsum("nhd,kd->nhk", q, all_keys) * self.scale
        logits = logits.masked_fill(~visible[:, None, :], float("-inf"))
        return torch.einsum("nhk,kd->nhd", self._softmax_with_sink(logits), all_keys)


# ------------------------------------------------------------------------------------------------- MoE


class Expert(nn.Module):
    """SwiGLU expert with clamped pre-activations: w2(silu(min(w1 x, l)) * clamp(w3 x, -l, l))."""

    def __init__(self, dim: int, inter_dim: int, swiglu_limit: float) -> None:
        super().__init__()
        self.limit = swiglu_limit
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x), self.w3(x)
        if self.limit > 0:
            gate = gate.clamp(max=self.limit)
            up = up.clamp(min=-self.limit, max=self.limit)
        return self.w2(F.silu(gate) * up)


class Gate(nn.Module):
    """Router. Hash layers pick experts by the frozen `tid2eid[token]` table; others by top-k of
    score + bias. Either way the weights are the picked experts' scores, normalised, times the route scale."""

    tid2eid: torch.Tensor

    def __init__(self, args: ModelArgs, hash_routed: bool) -> None:
        super().__init__()
        self.hash_routed = hash_routed
        self.top_k = args.num_experts_per_tok
        self.score_func = args.scoring_func
        self.route_scale = args.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(args.n_routed_experts, args.hidden_size))
        self.bias: nn.Parameter | None = None
        if hash_routed:
            self.register_buffer(
                "tid2eid", torch.zeros(args.vocab_size, self.top_k, dtype=torch.long), persistent=True
            )
        else:
            self.bias = nn.Parameter(torch.zeros(args.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (weights `[n, k]`, expert indices `[n, k]`)."""
        logits = F.linear(x.float(), self.weight.float())  # routing decisions in float32
        if self.score_func == "sqrtsoftplus":
            scores = F.softplus(logits).sqrt()
        elif self.score_func == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = logits.softmax(dim=-1)
        if self.hash_routed:
            indices = self.tid2eid[token_ids].long()
        else:
            assert self.bias is not None
            indices = torch.topk(scores + self.bias, self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(1, indices)
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.route_scale, indices


class MoE(nn.Module):
    """Routed experts plus one always-on shared expert."""

    def __init__(self, args: ModelArgs, hash_routed: bool) -> None:
        super().__init__()
        self.gate = Gate(args, hash_routed)
        self.experts = nn.ModuleList(
            Expert(args.hidden_size, args.moe_intermediate_size, args.swiglu_limit)
            for _ in range(args.n_routed_experts)
        )
        self.shared_experts = Expert(args.hidden_size, args.moe_intermediate_size, args.swiglu_limit)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        weights, indices = self.gate(x, token_ids)
        routed = torch.zeros_like(x)
        for expert_id in torch.unique(indices).tolist():
            token_idx, slot = torch.where(indices == expert_id)
            out = self.experts[expert_id](x[token_idx]) * weights[token_idx, slot, None]
            routed.index_add_(0, token_idx, out.to(x.dtype))
        return routed + self.shared_experts(x)


# ------------------------------------------------------------------------------------- hyper-connections


@dataclass(frozen=True)
class HcSettings:
    """mHC constants: Sinkhorn iterations, the numerical floor, and the RMS-norm epsilon."""

    sinkhorn_iters: int
    eps: float
    norm_eps: float


def hc_split(
    streams: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    hc: HcSettings,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC mappings from streams `[n, hc, dim]`: collapsed input `[n, dim]`, post `[n, hc]`, and the
    doubly-stochastic (Sinkhorn-Knopp) residual mix `[n, hc, hc]`, the latter two in float32."""
    n, eps = streams.shape[1], hc.eps
    mixes = F.linear(rms_normalize(streams.flatten(1).float(), hc.norm_eps), fn.float())
    pre_w, post_w, comb_w = mixes.split([n, n, n * n], dim=-1)
    pre_b, post_b, comb_b = base.split([n, n, n * n])
    pre = torch.sigmoid(pre_w * scale[0] + pre_b) + eps
    post = 2 * torch.sigmoid(post_w * scale[1] + post_b)
    comb = torch.softmax(comb_w.view(-1, n, n) * scale[2] + comb_b.view(n, n), dim=-1) + eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    for _ in range(hc.sinkhorn_iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    collapsed = (pre.unsqueeze(-1) * streams).sum(dim=1).to(streams.dtype)
    return collapsed, post, comb


def hc_merge(
    block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    """New streams: post-weighted block output plus the residual streams mixed by comb^T."""
    dtype = streams.dtype
    return post.to(dtype).unsqueeze(-1) * block_out.unsqueeze(-2) + torch.matmul(
        comb.to(dtype).transpose(-1, -2), streams
    )


def hc_head(
    streams: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    hc: HcSettings,
) -> torch.Tensor:
    """Final collapse of the hc streams `[n, hc, dim]` to `[n, dim]`."""
    mixes = F.linear(rms_normalize(streams.flatten(1).float(), hc.norm_eps), fn.float())
    pre = torch.sigmoid(mixes * scale.float() + base.float()) + hc.eps
    return (pre.unsqueeze(-1) * streams).sum(dim=1).to(streams.dtype)


# ---------------------------------------------------------------------------------------------- blocks


class Block(nn.Module):
    """One layer: mHC-wrapped attention, then mHC-wrapped MoE."""

    def __init__(self, args: ModelArgs, kind: LayerKind, hash_routed: bool) -> None:
        super().__init__()
        self.args = args
        self.attn = Attention(args, kind)
        self.ffn = MoE(args, hash_routed)
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

    def forward(
        self,
        streams: torch.Tensor,
        token_ids: torch.Tensor,
        segments: Sequence[RowSegment],
        caches: Sequence[LayerCache],
        rope: RopeTable,
        compress_rope: RopeSpec,
        impl: AttnImpl,
    ) -> torch.Tensor:
        a = self.args
        hc = HcSettings(a.hc_sinkhorn_iters, a.hc_eps, a.rms_norm_eps)
        x, post, comb = hc_split(streams, self.hc_attn_fn, self.hc_attn_scale, self.hc_attn_base, hc)
        dtype = self.attn.wq_a.weight.dtype
        out = self.attn(self.attn_norm(x).to(dtype), segments, caches, rope, compress_rope, impl)
        streams = hc_merge(out, streams, post, comb)
        x, post, comb = hc_split(streams, self.hc_ffn_fn, self.hc_ffn_scale, self.hc_ffn_base, hc)
        return hc_merge(self.ffn(self.ffn_norm(x).to(dtype), token_ids), streams, post, comb)


class MTPBlock(Block):
    """Multi-token-prediction layer: fuses the next token's embedding with the main model's streams, runs one
    block, and predicts with its own hyper-head (weights `mtp.{k}.*` of official checkpoints)."""

    def __init__(self, args: ModelArgs, kind: LayerKind) -> None:
        super().__init__(args, kind, hash_routed=False)
        self.e_proj = nn.Linear(args.hidden_size, args.hidden_size, bias=False)
        self.h_proj = nn.Linear(args.hidden_size, args.hidden_size, bias=False)
        self.enorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.hnorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        hc_dim = args.hc_mult * args.hidden_size
        self.hc_head_fn = nn.Parameter(torch.zeros(args.hc_mult, hc_dim, dtype=torch.float32))
        self.hc_head_base = nn.Parameter(torch.zeros(args.hc_mult, dtype=torch.float32))
        self.hc_head_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))


# ----------------------------------------------------------------------------------------------- model

# Parameters kept in float32 when the model is cast to a lower precision (as the official checkpoints ship).
_FLOAT32_SUFFIXES = ("attn_sink", "ape", "gate.bias", "norm.weight")
_FLOAT32_MARKERS = ("hc_attn_", "hc_ffn_", "hc_head_")


class DeepseekV4Model(nn.Module):
    """The whole DeepSeek-V4 causal LM over explicit per-sequence caches."""

    main_inv_freq: torch.Tensor
    compress_inv_freq: torch.Tensor

    def __init__(self, args: ModelArgs, *, attn_impl: AttnImpl = "sparse") -> None:
        super().__init__()
        self.args = args
        self.attn_impl: AttnImpl = attn_impl
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(
            Block(args, kind, mlp == "hash_moe")
            for kind, mlp in zip(args.layer_types, args.mlp_layer_types, strict=True)
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        hc_dim = args.hc_mult * args.hidden_size
        self.hc_head_fn = nn.Parameter(torch.zeros(args.hc_mult, hc_dim, dtype=torch.float32))
        self.hc_head_base = nn.Parameter(torch.zeros(args.hc_mult, dtype=torch.float32))
        self.hc_head_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))
        self.mtp = nn.ModuleList(MTPBlock(args, kind) for kind in args.mtp_layer_types)
        rope_dim = args.qk_rope_head_dim
        self.register_buffer(
            "main_inv_freq", rope_inv_freq(rope_dim, args.rope_theta, None), persistent=False
        )
        self.register_buffer(
            "compress_inv_freq",
            rope_inv_freq(rope_dim, args.compress_rope_theta, args.rope_scaling),
            persistent=False,
        )
        self.compress_rope_scaling = 1.0 if args.rope_scaling is None else args.rope_scaling.attention_factor
        self._hc = HcSettings(args.hc_sinkhorn_iters, args.hc_eps, args.rms_norm_eps)

    def rope_spec(self, kind: LayerKind) -> RopeSpec:
        """Sliding layers use the main RoPE; CSA/HCA layers and their compressors YaRN's."""
        if kind is LayerKind.SLIDING:
            return RopeSpec(self.main_inv_freq)
        return RopeSpec(self.compress_inv_freq, self.compress_rope_scaling)

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(
        cls,
        args: ModelArgs,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        attn_impl: AttnImpl = "sparse",
        device: torch.device | str = "cpu",
    ) -> DeepseekV4Model:
        """Random weights for tests/benchmarks, including what transformers' init leaves at zero (hash table,
        attention sinks, compressor position biases, router bias), so every code path is exercised.

        Values are drawn on `device` (fast for large shapes); a seed gives different values per device type.
        """
        with torch.device(device):
            model = cls(args, attn_impl=attn_impl)
        gen = torch.Generator(device=device).manual_seed(seed)
        branch_scale = (2 * (args.num_hidden_layers + args.num_nextn_predict_layers)) ** -0.5
        with torch.no_grad():
            for name, param in model.named_parameters():
                value = _random_like(name, param, gen)
                if name.endswith(_RESIDUAL_OUTPUTS):  # scaled like GPT-2's residual projections
                    value = value * branch_scale
                param.copy_(value)
            for module in model.modules():
                if isinstance(module, Gate) and module.hash_routed:
                    table = torch.rand(
                        args.vocab_size, args.n_routed_experts, generator=gen, device=gen.device
                    )
                    table = table.argsort(dim=-1)
                    module.tid2eid.copy_(table[:, : args.num_experts_per_tok])
        return model.cast(dtype)

    def cast(self, dtype: torch.dtype) -> DeepseekV4Model:
        """Cast weights to `dtype`, keeping norms, sinks, biases and mHC parameters in float32."""
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
        caches: Sequence[SequenceCacheProtocol],
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
        caches: Sequence[SequenceCacheProtocol],
        lengths: Sequence[int] | None = None,
        *,
        attn_impl: AttnImpl | None = None,
    ) -> tuple[torch.Tensor, list[RowSegment]]:
        """Run all layers; returns the packed final hc streams `[N, hc, dim]` and the row segments."""
        token_ids, segments = _pack(input_ids, caches, lengths)
        impl = attn_impl or self.attn_impl
        x = self.embed(token_ids)
        # the residual streams stay in float32 whatever the weights' dtype (blocks compute in that dtype)
        streams = x.float().unsqueeze(1).expand(-1, self.args.hc_mult, -1).contiguous()
        positions = torch.cat([s.positions for s in segments]).to(x.device)
        compress_rope = self.rope_spec(LayerKind.CSA)
        tables = {kind: self.rope_spec(kind).at(positions) for kind in (LayerKind.SLIDING, LayerKind.CSA)}
        for i, module in enumerate(self.layers):
            layer = cast(Block, module)
            sliding = layer.attn.kind is LayerKind.SLIDING
            table = tables[LayerKind.SLIDING if sliding else LayerKind.CSA]
            layer_caches = [c.layer(i) for c in caches]
            streams = layer(streams, token_ids, segments, layer_caches, table, compress_rope, impl)
        for cache, seg in zip(caches, segments, strict=True):
            cache.advance(seg.length)
        return streams, segments

    def logits(self, streams: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits from final streams `[n, hc, dim]` (hyper-head, norm, head)."""
        x = hc_head(
            streams,
            self.hc_head_fn,
            self.hc_head_scale,
            self.hc_head_base,
            self._hc,
        )
        return self.head(self.norm(x).to(self.head.weight.dtype))

    def forward_mtp(
        self,
        next_ids: torch.Tensor,
        streams: torch.Tensor,
        segments: Sequence[RowSegment],
        caches: Sequence[SequenceCacheProtocol],
        depth: int = 0,
        *,
        attn_impl: AttnImpl | None = None,
    ) -> torch.Tensor:
        """Draft logits `[N, vocab]` of MTP layer `depth` from the main model's packed streams and the packed
        next-token ids; uses cache layer `num_hidden_layers + depth` (positions as in `segments`)."""
        a = self.args
        block = cast(MTPBlock, self.mtp[depth])
        e = block.enorm(self.embed(next_ids))
        h = block.h_proj(block.hnorm(streams).to(block.h_proj.weight.dtype))
        x = (block.e_proj(e).unsqueeze(1) + h).float()
        positions = torch.cat([s.positions for s in segments]).to(x.device)
        table = self.rope_spec(block.attn.kind).at(positions)
        layer_caches = [c.layer(a.num_hidden_layers + depth) for c in caches]
        impl = attn_impl or self.attn_impl
        x = block(x, next_ids, segments, layer_caches, table, self.rope_spec(LayerKind.CSA), impl)
        x = hc_head(
            x,
            block.hc_head_fn,
            block.hc_head_scale,
            block.hc_head_base,
            self._hc,
        )
        return self.head(block.norm(x).to(self.head.weight.dtype))


def _pack(
    input_ids: torch.Tensor, caches: Sequence[SequenceCacheProtocol], lengths: Sequence[int] | None
) -> tuple[torch.Tensor, list[RowSegment]]:
    """Valid tokens of all rows concatenated, and each row's segment (start position from its cache)."""
    if input_ids.dim() != 2:
        raise ForwardInputError(f"input_ids must be [batch, seq]; got shape {tuple(input_ids.shape)}")
    batch, seq = input_ids.shape
    if len(caches) != batch:
        raise ForwardInputError(f"need one cache per row: {batch} rows, {len(caches)} caches")
    lens = [seq] * batch if lengths is None else [int(n) for n in lengths]
    if len(lens) != batch or any(n < 1 or n > seq for n in lens):
        raise ForwardInputError(f"lengths must be {batch} values in [1, {seq}]; got {lens}")
    segments, offset = [], 0
    for n, cache in zip(lens, caches, strict=True):
        segments.append(RowSegment(offset, cache.num_tokens, n))
        offset += n
    token_ids = torch.cat([input_ids[row, :n] for row, n in enumerate(lens)])
    return token_ids, segments


_RESIDUAL_OUTPUTS = ("attn.wo_b.weight", "w2.weight")


def _random_like(name: str, param: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random values with healthy magnitudes for each kind of parameter."""
    shape = param.shape
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith(("attn_sink", "ape")):
        return torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith("gate.bias"):
        return 0.1 * torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith(("_base",)):
        return 0.5 * torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith("_scale"):
        return 0.5 + torch.rand(shape, generator=gen, device=gen.device)
    if name == "embed.weight":
        return torch.randn(shape, generator=gen, device=gen.device)
    fan_in = shape[-1]
    return torch.randn(shape, generator=gen, device=gen.device) * fan_in**-0.5
