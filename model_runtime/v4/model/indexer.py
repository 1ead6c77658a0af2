"""The lightning indexer of CSA layers and the causal top-k choice of compressed entries (paper eqs. 13-17).

Compressed entry `e` summarises tokens `[e*ratio, (e+1)*ratio)`, so a query at position `p` may only see
the `(p + 1) // ratio` entries that are complete; selections never reach past that limit. The scoring
and selection live in `kernels/indexer_scores.py` (float32 reference, or the fused Triton kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.indexer_scores import (
    causal_entry_mask,
    dense_scores,
    indexer_topk,
    select_topk,
)
from deepscout.model_runtime.v4.kernels.paged_keys import PagedKeys, PagedRows
from deepscout.model_runtime.v4.model.compressor import Compressor
from deepscout.model_runtime.v4.model.primitives import RopeTable, apply_rope
from deepscout.model_runtime.v4.model.projections import projection
from deepscout.model_runtime.v4.model_config import ModelArgs, WeightFormat

__all__ = [
    "IndexQueries",
    "Indexer",
    "causal_entry_limit",
    "causal_entry_mask",
    "select_topk",
]


@dataclass(frozen=True)
class IndexQueries:
    """Indexer queries `[n, heads, dim]` (RoPE'd) and their head weights `[n, heads]` (the weights
    projection's output, in its dtype; the scores scale them, `indexer_scores`), per token."""

    q: torch.Tensor
    weights: torch.Tensor

    def rows(self, rows: slice) -> IndexQueries:
        """The queries of some tokens (a slice of the token axis)."""
        return IndexQueries(self.q[rows], self.weights[rows])


class Indexer(nn.Module):
    """Lightning indexer (paper eqs. 13-17): its own small compressor, and scores
    `sum_h w_{t,h} * ReLU(q_{t,h} . K_s)` of queries against every compressed indexer key."""

    def __init__(self, args: ModelArgs, weights: WeightFormat = "dense") -> None:
        super().__init__()
        self.n_heads = args.index_n_heads
        self.head_dim = args.index_head_dim
        self.topk = args.index_topk
        self.wq_b = projection(args.q_lora_rank, self.n_heads * self.head_dim, weights)  # FP8 when shipped
        self.weights_proj = nn.Linear(args.hidden_size, self.n_heads, bias=False)
        self.compressor = Compressor(args, args.csa_ratio, self.head_dim)

    def queries(self, x: torch.Tensor, q_residual: torch.Tensor, rope: RopeTable) -> IndexQueries:
        """Per-token indexer queries and head weights of the packed tokens."""
        return self.queries_from(self.weights_proj(x), q_residual, rope)

    def queries_from(
        self, head_logits: torch.Tensor, q_residual: torch.Tensor, rope: RopeTable
    ) -> IndexQueries:
        """`queries` given `weights_proj`'s output `head_logits` `[n, heads]` (computed with other projections
        of the same input)."""
        q = self.wq_b(q_residual).view(q_residual.shape[0], self.n_heads, self.head_dim)
        return IndexQueries(apply_rope(q, rope), head_logits)

    def scores(self, queries: IndexQueries, keys: torch.Tensor) -> torch.Tensor:
        """Index scores `[n, T]` (float32) of queries against keys `[T, dim]`."""
        return dense_scores(queries.q, queries.weights, keys)

    def top_k(
        self,
        queries: IndexQueries,
        keys: torch.Tensor,
        limit: torch.Tensor,
        *,
        impl: KernelImpl = "reference",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best-scoring causal entries per query (see `select_topk`), keys `[T, dim]` with T > 0."""
        if impl == "triton":
            rows = PagedRows.single(queries.q.shape[0], keys.device)
            return self.top_k_paged(queries, PagedKeys.dense(keys), rows, limit, impl=impl)
        return select_topk(self.scores(queries, keys), limit, self.topk)

    def top_k_paged(
        self,
        queries: IndexQueries,
        keys: PagedKeys,
        rows: PagedRows,
        limit: torch.Tensor,
        *,
        impl: KernelImpl,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same over several rows' paged keys read as stored: indices `[n, min(k, T_cap)]` into each
        query's own row (see `indexer_scores.PagedRows`)."""
        return indexer_topk(queries.q, queries.weights, keys, rows, limit, self.topk, impl=impl)


def causal_entry_limit(positions: torch.Tensor, ratio: int) -> torch.Tensor:
    """Per query: how many compressed entries are complete (entry e covers tokens [e*ratio, (e+1)*ratio))."""
    return (positions + 1) // ratio
