"""V4 attention: shared-KV MQA with sinks over a sliding window, plus the CSA/HCA compressed branch (§2.3).

Attention runs per batch row against that row's cache, which this module reaches only through the cache
protocol: per layer it reads and writes the window ring and lets the compressors append entries.

Attention implementations (`AttnImpl`):
* "sparse": each query attends to its sliding window (a band of the row's raw keys) plus the *selected*
  compressed entries only — the indexer's top-k gathered from the cache on CSA layers, the causally
  complete entries on HCA layers — in query blocks, so memory grows with window + k, not with context.
* "naive": a dense reference: all window keys and all compressed entries with an explicit mask, as the
  transformers implementation builds it. Used to cross-check "sparse".

With `kernels="triton"` the sparse path runs each row's queries through one fused kernel
(`kernels/sparse_attention.py`) instead of the PyTorch query blocks, which stay as its reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from deepscout.model_runtime.v4.cache.protocol import LayerCache
from deepscout.model_runtime.v4.kernels.attention_keys import BandKeys, EntryKeys
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.rope_rows import RowNorm
from deepscout.model_runtime.v4.kernels.sparse_attention import sparse_attention
from deepscout.model_runtime.v4.model.compressor import Compressor
from deepscout.model_runtime.v4.model.indexer import (
    Indexer,
    IndexQueries,
    causal_entry_limit,
    causal_entry_mask,
)
from deepscout.model_runtime.v4.model.packing import RowSegment
from deepscout.model_runtime.v4.model.primitives import (
    RMSNorm,
    RopeSpec,
    RopeTable,
    apply_rope,
)
from deepscout.model_runtime.v4.model.projections import (
    equal_share,
    grouped_projection,
    on_block_bounds,
    project_columns,
    project_rows,
    projection,
)
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, WeightFormat

AttnImpl = Literal["naive", "sparse"]
_QUERY_BLOCK = 64
_INDEX_BLOCK = 1024  # queries scored by the indexer at once on the fused path ([block, entries] float32)


@dataclass(frozen=True)
class AttentionBatch:
    """What one layer's attention needs besides the packed hidden states: the rows' segments, each row's
    cache of this layer, the packed positions (on the device) and RoPE at them, the compressors' RoPE, the
    implementation and the kernels it runs on."""

    segments: Sequence[RowSegment]
    caches: Sequence[LayerCache]
    positions: torch.Tensor
    rope: RopeTable
    compress_rope: RopeSpec
    impl: AttnImpl
    kernels: KernelImpl = "reference"


@dataclass(frozen=True)
class _RowAttention:
    """One row's attention inputs: its queries `[L, heads, dim]` at `positions`, the keys within reach
    (window ring then the row's new keys) at `key_pos`, its layer cache, and its indexer queries (CSA)."""

    q: torch.Tensor
    seg: RowSegment
    positions: torch.Tensor
    keys: torch.Tensor
    key_pos: torch.Tensor
    cache: LayerCache
    index: IndexQueries | None


class Attention(nn.Module):
    """Shared-KV MQA with partial RoPE, per-head sinks, sliding window, optional CSA/HCA compressed branch,
    inverse RoPE on the output and grouped low-rank output projection (paper §2.3). Its projections and
    the indexer's `wq_b` (FP8 in official checkpoints) are built in the `weights` format (`projections`)."""

    def __init__(self, args: ModelArgs, kind: LayerKind, weights: WeightFormat = "dense") -> None:
        super().__init__()
        self.args = args
        self.kind = kind
        self.n_heads = args.num_attention_heads
        self.head_dim = args.head_dim
        self.window = args.sliding_window
        self.scale = self.head_dim**-0.5
        self.attn_sink = nn.Parameter(torch.zeros(self.n_heads, dtype=torch.float32))
        self.wq_a = projection(args.hidden_size, args.q_lora_rank, weights)
        self.q_norm = RMSNorm(args.q_lora_rank, args.rms_norm_eps)
        self.wq_b = projection(args.q_lora_rank, self.n_heads * self.head_dim, weights)
        self.wkv = projection(args.hidden_size, self.head_dim, weights)
        self.kv_norm = RMSNorm(self.head_dim, args.rms_norm_eps)
        group_in = self.n_heads * self.head_dim // args.o_groups
        self.wo_a = projection(group_in, args.o_groups * args.o_lora_rank, weights)
        self.wo_b = projection(args.o_groups * args.o_lora_rank, args.hidden_size, weights)
        self.heads = slice(0, self.n_heads)  # the query heads computed here (`shard_heads`)
        self.groups = slice(0, args.o_groups)  # and their output groups
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.ratio = args.ratio(kind)
        self.compressor: Compressor | None = None
        self.indexer: Indexer | None = None
        if kind is not LayerKind.SLIDING:
            self.compressor = Compressor(args, self.ratio, self.head_dim)
        if kind is LayerKind.CSA:
            self.indexer = Indexer(args, weights)

    def forward(self, x: torch.Tensor, batch: AttentionBatch) -> torch.Tensor:
        """`x` `[N, hidden]` packed normed inputs; returns `[N, hidden]`."""
        rope, compress_rope = batch.rope, batch.compress_rope
        q_residual = self.q_norm(self.wq_a(x))
        q = apply_rope(self.queries(q_residual), rope, norm=self.q_head_norm())
        kv = apply_rope(self.wkv(x), rope, norm=self.kv_norm.before_rope())
        index = None if self.indexer is None else self.indexer.queries(x, q_residual, rope)
        attend = self._attend_naive
        if batch.impl == "sparse":
            attend = self._attend_fused if batch.kernels == "triton" else self._attend_sparse
        outputs = []
        for seg, cache in zip(batch.segments, batch.caches, strict=True):
            rows = slice(seg.offset, seg.offset + seg.length)
            positions = batch.positions[rows]
            window = cache.read_window()
            keys = torch.cat([window.kv.to(kv.dtype), kv[rows]])
            key_pos = torch.cat([window.positions.to(x.device), positions])
            cache.write_window(kv[rows], positions)
            if self.compressor is not None:
                self.compressor.compress(x[rows], cache, "main", compress_rope)
            if self.indexer is not None:
                self.indexer.compressor.compress(x[rows], cache, "indexer", compress_rope)
            row_index = None if index is None else index.rows(rows)
            outputs.append(attend(_RowAttention(q[rows], seg, positions, keys, key_pos, cache, row_index)))
        out = apply_rope(torch.cat(outputs), rope, inverse=True)
        return self.project_out(out)

    def shard_heads(
        self, *, rank: int, world_size: int, reduce: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        """Compute only rank `rank`'s equal share of the query heads (whole output groups; views of the
        weights: `wq_b`'s rows, `wo_a`'s groups, `wo_b`'s columns, the heads' sinks), `reduce` summing the
        ranks' outputs. Every rank keeps the keys, compressors and indexer whole. Left as it is (every head,
        no reduce) when the heads or groups do not split evenly or an FP8 share would cut a scale block."""
        heads = equal_share(self.n_heads, rank=rank, world_size=world_size)
        groups = equal_share(self.args.o_groups, rank=rank, world_size=world_size)
        if heads is None or groups is None:
            return
        q_rows = slice(heads.start * self.head_dim, heads.stop * self.head_dim)
        outputs = self._group_rows(groups)
        parts = ((self.wq_b, q_rows), (self.wo_a, outputs), (self.wo_b, outputs))
        if all(on_block_bounds(layer, part) for layer, part in parts):
            self.heads, self.groups, self.reduce = heads, groups, reduce

    def queries(self, q_residual: torch.Tensor) -> torch.Tensor:
        """The computed heads' queries `[n, heads, head_dim]` (before the head norm and RoPE)."""
        rows = slice(self.heads.start * self.head_dim, self.heads.stop * self.head_dim)
        return project_rows(q_residual, self.wq_b, rows).view(q_residual.shape[0], -1, self.head_dim)

    def sinks(self) -> torch.Tensor:
        """The computed heads' sink logits."""
        return self.attn_sink[self.heads]

    def q_head_norm(self) -> RowNorm:
        """The weightless RMS norm of each query head before its RoPE."""
        return RowNorm(None, self.args.rms_norm_eps)

    def project_out(self, out: torch.Tensor) -> torch.Tensor:
        """Grouped low-rank output projection of the computed heads' outputs `[n, heads, head_dim]`: per
        group `wo_a[g]`, then `wo_b` over the groups (the ranks' parts summed by `reduce`)."""
        count, rows = self.groups.stop - self.groups.start, self._group_rows(self.groups)
        grouped = grouped_projection(out.reshape(out.shape[0], count, -1), self.wo_a, count, rows)
        y = project_columns(grouped.flatten(1), self.wo_b, rows)
        return y if self.reduce is None else self.reduce(y)

    def _group_rows(self, groups: slice) -> slice:
        """The rows of `wo_a`'s outputs (and columns of `wo_b`'s inputs) of the output groups `groups`."""
        lora = self.args.o_lora_rank
        return slice(groups.start * lora, groups.stop * lora)

    # --------------------------------------------------------------- compressed-entry selection
    def _selected_entries(
        self,
        positions: torch.Tensor,
        last_position: int,
        cache: LayerCache,
        index: IndexQueries | None,
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
            return cache.all_entries("main")[:n_needed], causal_entry_mask(n_needed, limit)
        assert self.indexer is not None and index is not None
        keys = cache.all_entries("indexer")
        if keys.shape[0] == 0:
            return None
        indices, valid = self.indexer.top_k(index, keys, limit)
        return cache.gather_entries("main", indices.clamp(max=keys.shape[0] - 1)), valid

    # --------------------------------------------------------------- attention kernels
    def _window_mask(self, key_pos: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`[n, k]`: which keys each query sees in the sliding window (causal, within `window` positions)."""
        causal = key_pos[None, :] <= positions[:, None]
        return causal & (key_pos[None, :] > positions[:, None] - self.window)

    def _softmax_with_sink(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the last dim with one extra per-head sink logit that absorbs mass and is dropped."""
        sink = self.sinks().to(logits.dtype).view(1, -1, 1).expand(logits.shape[0], -1, 1)
        combined = torch.cat([logits, sink], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        return combined.softmax(dim=-1)[..., :-1]

    def _attend_sparse(self, row: _RowAttention) -> torch.Tensor:
        """Window band + selected entries only, in query blocks (bounds from host integers: no syncs)."""
        seg, keys, key_pos = row.seg, row.keys, row.key_pos
        first_key = seg.start - (key_pos.shape[0] - seg.length)  # window positions are consecutive
        outs = []
        for b0 in range(0, row.q.shape[0], _QUERY_BLOCK):
            block = slice(b0, b0 + _QUERY_BLOCK)
            qb, pb = row.q[block], row.positions[block]
            first, last = seg.start + b0, seg.start + b0 + qb.shape[0] - 1
            lo = max(first - self.window + 1 - first_key, 0)
            hi = last - first_key + 1
            band, band_pos = keys[lo:hi], key_pos[lo:hi]
            logits = torch.einsum("nhd,kd->nhk", qb, band) * self.scale
            logits = logits.masked_fill(~self._window_mask(band_pos, pb)[:, None, :], float("-inf"))
            block_index = None if row.index is None else row.index.rows(block)
            selected = self._selected_entries(pb, last, row.cache, block_index)
            if selected is None:
                probs = self._softmax_with_sink(logits)
                outs.append(torch.einsum("nhk,kd->nhd", probs, band))
                continue
            entries, valid = selected
            entries = entries.to(qb.dtype)
            per_query = "nkd" if entries.dim() == 3 else "kd"
            comp_logits = torch.einsum(f"nhd,{per_query}->nhk", qb, entries) * self.scale
            comp_logits = comp_logits.masked_fill(~valid[:, None, :], float("-inf"))
            probs = self._softmax_with_sink(torch.cat([logits, comp_logits], dim=-1))
            pw, pc = probs[..., : band.shape[0]], probs[..., band.shape[0] :]
            comp_out = torch.einsum(f"nhk,{per_query}->nhd", pc, entries)
            outs.append(torch.einsum("nhk,kd->nhd", pw, band) + comp_out)
        return torch.cat(outs)

    def _attend_fused(self, row: _RowAttention) -> torch.Tensor:
        """The sparse path in one kernel call for the row: each query's band of the row's keys (window ring
        then new keys), plus the indexer's choice (CSA) or every causal entry (HCA)."""
        q, seg, device = row.q, row.seg, row.q.device
        first_new = row.keys.shape[0] - seg.length  # key index of the row's first new token
        own = torch.arange(seg.length, device=device) + first_new
        band_start = (own - self.window + 1).clamp(min=0)
        band = BandKeys(
            kv=row.keys.to(q.dtype),
            positions=row.key_pos,
            start=band_start.to(torch.int32),
            length=(own - band_start + 1).to(torch.int32),
            max_length=min(self.window, row.keys.shape[0]),
        )
        return sparse_attention(
            q,
            band,
            self._entry_keys(row),
            self.sinks(),
            row.positions,
            scale=self.scale,
            window=self.window,
            impl="triton",
        )

    def _entry_keys(self, row: _RowAttention) -> EntryKeys | None:
        """The row's compressed entries for the fused kernel: all causal ones (HCA), or the indexer's top-k
        per query (CSA, scored `_INDEX_BLOCK` queries at a time). None when there are none yet."""
        if self.kind is LayerKind.SLIDING or row.cache.num_entries("main") == 0:
            return None
        limit = causal_entry_limit(row.positions, self.ratio)
        entries = row.cache.all_entries("main").to(row.q.dtype)
        if self.kind is LayerKind.HCA:
            return EntryKeys.dense(entries, limit)
        assert self.indexer is not None and row.index is not None
        keys = row.cache.all_entries("indexer")
        chosen = [
            self.indexer.top_k(row.index.rows(block), keys, limit[block], impl="triton")[0]
            for block in (slice(b0, b0 + _INDEX_BLOCK) for b0 in range(0, row.seg.length, _INDEX_BLOCK))
        ]
        return EntryKeys.dense(entries, limit, torch.cat(chosen).to(torch.int32))

    def _attend_naive(self, row: _RowAttention) -> torch.Tensor:
        """Dense reference: every window key and every compressed entry, with a mask."""
        q, positions = row.q, row.positions
        visible = self._window_mask(row.key_pos, positions)
        all_keys = row.keys
        if self.kind is not LayerKind.SLIDING:
            entries = row.cache.all_entries("main").to(q.dtype)
            limit = causal_entry_limit(positions, self.ratio)
            entry_visible = causal_entry_mask(entries.shape[0], limit)
            if self.kind is LayerKind.CSA and entries.shape[0]:
                assert self.indexer is not None and row.index is not None
                indices, valid = self.indexer.top_k(row.index, row.cache.all_entries("indexer"), limit)
                chosen = torch.zeros_like(entry_visible)
                chosen.scatter_(1, indices, valid)
                entry_visible = chosen
            all_keys = torch.cat([row.keys, entries])
            visible = torch.cat([visible, entry_visible], dim=1)
        logits = torch.einsum("nhd,kd->nhk", q, all_keys) * self.scale
        logits = logits.masked_fill(~visible[:, None, :], float("-inf"))
        return torch.einsum("nhk,kd->nhd", self._softmax_with_sink(logits), all_keys)
