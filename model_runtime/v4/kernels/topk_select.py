"""Top-k selection over the lightning indexer's scores: each row's `k` best entries, in no particular order.

Contract (`masked_topk(scores, limit, k, impl=...)`): `scores` `[R, N]` float32 are already -inf at and
past each row's `limit` (`[R]`, any integer dtype; a limit past N means the whole row). It returns
`indices` `[R, min(k, N)]` int64 (no order: attention reads a set, and sorting it cost two kernels per
layer and step) and `valid = indices < limit[:, None]`. A row with fewer than `min(k, N)` entries before
its limit gets all of them plus entries past the limit, which `valid` marks false.

* "reference": `torch.topk(sorted=False)`; which of several entries tied at the k-th value it keeps is
  unspecified.
* "triton" (`topk_select_triton.py`): an exact select (radix passes, or for one short decode row each entry
  ranked among the row) with a fixed tie rule: every entry above the k-th value, then the lowest-index
  entries equal to it (-0.0 equals 0.0, NaN ranks above +inf as in torch.topk); the fill past a short row's
  limit is the lowest indices past it. Entries at and past the limit are never read. No host sync (it runs
  inside the decode step's CUDA graph). Used where it is the faster of the two
  (`topk_select_triton.prefers_triton`): rows held in registers (up to 8,192 scores: 2x torch.topk on an
  H200; 3.5-4.7x for one decode row of up to 4,096 ranked), and longer rows only up to `SPLIT_MAX_ROWS` of
  them (decode: 2.4x at 1 x 262,144 scores, 1.9x at 8 x 32,768, even at 8 x 262,144); many long rows
  (prefill) take torch.topk, which selects them 2.2x faster than the split radix passes.
"""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.paged_keys import IndexerInputError


def masked_topk(
    scores: torch.Tensor, limit: torch.Tensor, k: int, *, impl: KernelImpl
) -> tuple[torch.Tensor, torch.Tensor]:
    """The best `min(k, N)` entries of each row of `scores` and their validity (see the module docstring)."""
    if scores.dim() != 2 or tuple(limit.shape) != (scores.shape[0],) or k < 0:
        raise IndexerInputError(
            f"top-k needs scores [R, N], limit [R] and k >= 0, got scores {list(scores.shape)}, "
            f"limit {list(limit.shape)}, k {k}"
        )
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.topk_select_triton import prefers_triton, topk_select_triton

        if prefers_triton(*scores.shape):
            return topk_select_triton(scores, limit, k)
    return masked_topk_reference(scores, limit, k)


def masked_topk_reference(
    scores: torch.Tensor, limit: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: one `torch.topk` over the whole row."""
    indices = scores.topk(min(k, scores.shape[-1]), dim=-1, sorted=False).indices
    return indices, indices < limit[:, None]
