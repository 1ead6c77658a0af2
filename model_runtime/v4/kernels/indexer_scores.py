"""Lightning-indexer scores and top-k over paged compressed keys read as stored (paper eqs. 13-17).

For a packed batch of queries `q` `[M, heads, dim]` with head weights `w` `[M, heads]` (the weights
projection's output as it comes, float32 or bfloat16: the scores are taken in float32), the score of
query `m` against key `t` of its row is

    sum_h w[m, h] * (heads * dim)^-0.5 * ReLU(q[m, h] . K[t])        (-inf where t >= limit[m])

Keys live in a paged pool as stored (`PagedKeys`: plain, FP8 or MXFP4) and each row of the batch reads them
through its block table (`PagedRows`, both in `paged_keys.py`); dense keys `[T, dim]` are one row of one
block. Scores come out as `[M, T_cap]` float32 with `T_cap = max_blocks * per_block`.

`impl="reference"` dequantises the keys as the KV pool reads them (bfloat16 for the quantised formats) and
applies the float32 formula row by row; `impl="triton"` streams the stored bytes through a fused kernel
(`indexer_scores_triton.py`) with no host sync. Both write -inf past each limit, so the causal top-k
(`select_topk`'s contract) is `masked_topk` over them (`topk_select.py`, with the same `impl`).
"""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.paged_keys import (
    IndexerInputError,
    PagedKeys,
    PagedRows,
    key_capacity,
)
from deepscout.model_runtime.v4.kernels.topk_select import masked_topk


def dense_scores(q: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Scores `[n, T]` (float32) of queries `[n, heads, dim]` against keys `[T, dim]`, in float32."""
    logits = torch.matmul(q.float(), keys.float().t()).relu_()  # [n, heads, T]
    head_weights = (weights.float() * score_scale(q)).unsqueeze(1)  # [n, 1, heads]
    return torch.bmm(head_weights, logits).squeeze(1)


def score_scale(q: torch.Tensor) -> float:
    """The constant factor of every head weight, `(heads * dim)^-0.5`, for queries `[n, heads, dim]`."""
    return float(q.shape[1] * q.shape[2]) ** -0.5


def causal_entry_mask(n_entries: int, limit: torch.Tensor) -> torch.Tensor:
    """`[n, n_entries]`: which of the first `n_entries` entries each query may see (index < its limit)."""
    return torch.arange(n_entries, device=limit.device)[None, :] < limit[:, None]


def select_topk(scores: torch.Tensor, limit: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k entry indices `[n, min(k, T)]` among each query's causal entries, and their validity."""
    future = ~causal_entry_mask(scores.shape[-1], limit)
    return masked_topk(scores.masked_fill(future, float("-inf")), limit, k, impl="reference")


def indexer_scores(
    q: torch.Tensor,
    weights: torch.Tensor,
    keys: PagedKeys,
    rows: PagedRows,
    limit: torch.Tensor,
    *,
    impl: KernelImpl,
) -> torch.Tensor:
    """Scores `[M, T_cap]` float32, -inf at and past each query's limit (see the module docstring)."""
    _check(q, weights, keys, rows, limit)
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.indexer_scores_triton import indexer_scores_triton

        return indexer_scores_triton(q, weights, keys, rows, limit, score_scale(q))
    return indexer_scores_reference(q, weights, keys, rows, limit)


def indexer_topk(
    q: torch.Tensor,
    weights: torch.Tensor,
    keys: PagedKeys,
    rows: PagedRows,
    limit: torch.Tensor,
    k: int,
    *,
    impl: KernelImpl,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best `min(k, T_cap)` causal entries per query and their validity (`select_topk`'s contract)."""
    return masked_topk(indexer_scores(q, weights, keys, rows, limit, impl=impl), limit, k, impl=impl)


def indexer_scores_reference(
    q: torch.Tensor, weights: torch.Tensor, keys: PagedKeys, rows: PagedRows, limit: torch.Tensor
) -> torch.Tensor:
    """The oracle: each row's keys dequantised and gathered in logical order, then `dense_scores`.
    (It reads the row boundaries back to the host: one sync per call.)"""
    t_cap = key_capacity(keys, rows)
    stored = keys.dequantize()
    starts = rows.query_starts.tolist()
    parts = []
    for r in range(rows.num_rows):
        blocks = rows.block_table[r].long().clamp(0, stored.shape[0] - 1)  # padding: masked below
        row_keys = stored[blocks].reshape(t_cap, keys.dim)
        parts.append(dense_scores(q[starts[r] : starts[r + 1]], weights[starts[r] : starts[r + 1]], row_keys))
    scores = torch.cat(parts) if parts else q.new_empty(0, t_cap, dtype=torch.float32)
    return scores.masked_fill(~causal_entry_mask(t_cap, limit), float("-inf"))


def _check(
    q: torch.Tensor, weights: torch.Tensor, keys: PagedKeys, rows: PagedRows, limit: torch.Tensor
) -> None:
    """Shape and dtype checks on host-known sizes only (no sync)."""
    if keys.format == "fp8_rope":
        raise IndexerInputError("'fp8_rope' entries are main attention entries, not indexer keys")
    if q.dim() != 3 or q.shape[-1] != keys.dim:
        raise IndexerInputError(f"queries must be [M, heads, {keys.dim}], got {list(q.shape)}")
    if tuple(weights.shape) != tuple(q.shape[:2]) or weights.dtype not in (torch.float32, torch.bfloat16):
        raise IndexerInputError(
            f"head weights must be float32 or bfloat16 {list(q.shape[:2])}, "
            f"got {weights.dtype} {list(weights.shape)}"
        )
    if tuple(limit.shape) != (q.shape[0],):
        raise IndexerInputError(f"limit must be [{q.shape[0]}], got {list(limit.shape)}")
    if rows.query_starts.shape != (rows.num_rows + 1,):
        raise IndexerInputError(
            f"query_starts must be [{rows.num_rows + 1}] for {rows.num_rows} block-table rows, "
            f"got {list(rows.query_starts.shape)}"
        )
