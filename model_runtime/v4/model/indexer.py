"""The lightning indexer of CSA layers and the causal top-k choice of compressed entries (paper eqs. 13-17).

Compressed entry `e` summarises tokens `[e*ratio, (e+1)*ratio)`, so a query at position `p` may only see
the `(p + 1) // ratio` entries that are complete; selections never reach past that limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepscout.model_runtime.v4.model.compressor import Compressor
from deepscout.model_runtime.v4.model.primitives import RopeTable, apply_rope
from deepscout.model_runtime.v4.model_config import ModelArgs


@dataclass(frozen=True)
class IndexQueries:
    """Indexer queries `[n, heads, dim]` (RoPE'd) and their head weights `[n, heads]` (float32), per token."""

    q: torch.Tensor
    weights: torch.Tensor

    def rows(self, rows: slice) -> IndexQueries:
        """The queries of some tokens (a slice of the token axis)."""
        return IndexQueries(self.q[rows], self.weights[rows])


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

    def queries(self, x: torch.Tensor, q_residual: torch.Tensor, rope: RopeTable) -> IndexQueries:
        """Per-token indexer queries and head weights of the packed tokens."""
        q = self.wq_b(q_residual).view(x.shape[0], self.n_heads, self.head_dim)
        q = apply_rope(q, rope)
        weights = self.weights_proj(x).float() * self.n_heads**-0.5
        return IndexQueries(q, weights)

    def scores(self, queries: IndexQueries, keys: torch.Tensor) -> torch.Tensor:
        """Index scores `[n, T]` (float32) of queries against keys `[T, dim]`."""
        logits = torch.matmul(queries.q.float(), keys.float().t()).relu_()  # [n, heads, T]
        head_weights = (queries.weights * self.head_dim**-0.5).unsqueeze(1)  # [n, 1, heads]
        return torch.bmm(head_weights, logits).squeeze(1)

    def top_k(
        self, queries: IndexQueries, keys: torch.Tensor, limit: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best-scoring causal entries per query (see `select_topk`), keys `[T, dim]` with T > 0."""
        return select_topk(self.scores(queries, keys), limit, self.topk)


def causal_entry_limit(positions: torch.Tensor, ratio: int) -> torch.Tensor:
    """Per query: how many compressed entries are complete (entry e covers tokens [e*ratio, (e+1)*ratio))."""
    return (positions + 1) // ratio


def causal_entry_mask(n_entries: int, limit: torch.Tensor) -> torch.Tensor:
    """`[n, n_entries]`: which of the first `n_entries` entries each query may see (index < its limit)."""
    return torch.arange(n_entries, device=limit.device)[None, :] < limit[:, None]


def select_topk(scores: torch.Tensor, limit: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k entry indices `[n, min(k, T)]` among each query's causal entries, and their validity."""
    n_entries = scores.shape[-1]
    k = min(k, n_entries)
    future = ~causal_entry_mask(n_entries, limit)
    indices = scores.masked_fill(future, float("-inf")).topk(k, dim=-1).indices
    return indices, indices < limit[:, None]
