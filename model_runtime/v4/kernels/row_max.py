"""Each row's largest entry and log-sum-exp: what a sampler reads of a step's logits `[B, V]`.

`row_max_logsumexp(logits, impl=...)` gives, per row of float32 logits, the index of its first largest
entry (long, as `argmax`) and its log-sum-exp (float32), so a token's log-probability is its logit less the
latter. "reference" is `argmax` and `logsumexp`; at V4's vocabulary (129,280) each reduces a row in one
thread block, 27-29 µs apiece on an H200 at batch 1, on the decode step's critical path. "triton"
(`row_max_triton.py`) spreads a row over many programs: 2 launches of a few µs.
"""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.kernels.impl import KernelImpl


def row_max_logsumexp(logits: torch.Tensor, *, impl: KernelImpl) -> tuple[torch.Tensor, torch.Tensor]:
    """(first index of each row's largest entry `[B]` long, each row's log-sum-exp `[B]` float32) of the
    float32 `logits` `[B, V]`."""
    if logits.dim() != 2 or logits.dtype != torch.float32 or logits.shape[1] == 0:
        raise ValueError(f"row_max_logsumexp takes float32 [B, V] logits with V > 0, got {logits.dtype} "
                         f"{list(logits.shape)}")  # fmt: skip
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.row_max_triton import row_max_logsumexp_triton

        return row_max_logsumexp_triton(logits)
    return logits.argmax(dim=-1), torch.logsumexp(logits, dim=-1)
