"""V4 sparse attention with sinks: each query attends to its sliding-window band plus compressed entries.

One call covers a packed batch of queries `q` `[M, heads, dim]` (shared K = V, one KV head):

* the *band*: rows `[band_start[m], band_start[m] + band_len[m])` of a flat key buffer with their absolute
  positions; a key is seen when `p - window < key_pos <= p` (so unwritten ring slots, whose positions are
  a sentinel larger than any query's, never are);
* the *entries* (CSA/HCA layers): compressed entries in a paged pool `[blocks, per_block, dim]` (plain
  rows, or FP8 with BF16 RoPE dims, read as stored), entry `e`
  of the query's row at `(block_table[row, e // per_block], e % per_block)`; either the indices chosen by
  the indexer (`indices` `[M, k]`, CSA) or all of `[0, limit[m])` (HCA). An entry is seen when
  `0 <= e < limit[m]`.

The softmax has one extra per-head sink logit that absorbs mass and carries no value. The Triton kernel
keeps an online softmax per (query, head block); with several splits of the entries (decode: few queries,
many entries) each split writes a partial output and log-sum-exp, combined with the sink afterwards.
`sparse_attention_reference` computes the same function densely in float32 (the oracle).
"""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.kernels.attention_keys import BandKeys, EntryKeys
from deepscout.model_runtime.v4.kernels.impl import KernelImpl


def sparse_attention(
    q: torch.Tensor,
    band: BandKeys,
    entries: EntryKeys | None,
    sink: torch.Tensor,
    query_pos: torch.Tensor,
    *,
    scale: float,
    window: int,
    impl: KernelImpl,
) -> torch.Tensor:
    """Attention output `[M, heads, dim]` in `q`'s dtype (see the module docstring)."""
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.sparse_attention_triton import sparse_attention_triton

        return sparse_attention_triton(q, band, entries, sink, query_pos, scale=scale, window=window)
    return sparse_attention_reference(q, band, entries, sink, query_pos, scale=scale, window=window)


def sparse_attention_reference(
    q: torch.Tensor,
    band: BandKeys,
    entries: EntryKeys | None,
    sink: torch.Tensor,
    query_pos: torch.Tensor,
    *,
    scale: float,
    window: int,
) -> torch.Tensor:
    """The same function, gathered densely per query in float32."""
    m = q.shape[0]
    device = q.device
    offsets = torch.arange(band.max_length, device=device)
    rows = band.start.long()[:, None] + offsets[None, :]  # [M, Lb]
    in_band = offsets[None, :] < band.length.long()[:, None]
    rows = torch.where(in_band, rows, 0)
    keys = band.kv[rows].float()  # [M, Lb, dim]
    key_pos = band.positions[rows]
    p = query_pos.long()[:, None]
    visible = in_band & (key_pos <= p) & (key_pos > p - window)
    if entries is not None and entries.max_count > 0:
        if entries.indices is None:
            idx = torch.arange(entries.max_count, device=device).expand(m, -1)
        else:
            idx = entries.indices.long()
        limit = entries.limit.long()[:, None]
        ok = (idx >= 0) & (idx < limit)
        safe = torch.where(ok, idx, 0)
        per_block = entries.keys.per_block
        table = entries.block_table.long()[entries.row.long()]  # [M, max_blocks]
        blocks = table.gather(1, (safe // per_block).clamp(max=table.shape[1] - 1))
        entry_keys = entries.keys.read(blocks, safe % per_block).float()
        keys = torch.cat([keys, entry_keys], dim=1)
        visible = torch.cat([visible, ok], dim=1)
    logits = torch.einsum("mhd,mkd->mhk", q.float(), keys) * scale
    logits = logits.masked_fill(~visible[:, None, :], float("-inf"))
    sink_logits = sink.float().view(1, -1, 1).expand(m, -1, 1)
    combined = torch.cat([logits, sink_logits], dim=-1)
    probs = combined.softmax(dim=-1)[..., :-1]
    return torch.einsum("mhk,mkd->mhd", probs, keys).to(q.dtype)
