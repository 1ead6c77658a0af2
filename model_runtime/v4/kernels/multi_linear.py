"""Several bias-free linear projections of one input, for the few rows of a decode step.

Contract: `x` `[M, K]` in bfloat16 or float32 with M ≤ `ROW_LIMIT` (4), `weights` a sequence of `[Nᵢ, K]`
contiguous (row-major) tensors in `x`'s dtype on `x`'s device, read where they are (each module keeps its
own weight: nothing is concatenated). Returns `[x Wᵢᵀ for each weight]`, each `[M, Nᵢ]` contiguous in
`x`'s dtype.

* "reference": `F.linear` per weight (cuBLAS on CUDA: a split-K GEMV and its reduction per weight at
  decode). The oracle.
* "triton": one launch for all the weights (`multi_linear_triton`): a matrix-vector product per column
  block, float32 accumulation, the outputs written directly in `x`'s dtype.

When to use it: callers fuse a set of same-input projections with it for at most `FUSED_MAX_ROWS` (2) rows
(a batch-1 or batch-2 decode step), where each separate product is a few microseconds of launch-bound
work; above that the rows' FMAs on the CUDA cores outgrow what a launch costs (as for the FP8 GEMV,
`fp8_linear_gemv_triton.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from deepscout.model_runtime.v4.kernels.impl import KernelImpl

ROW_LIMIT = 4
"""The most rows `multi_linear` takes (the kernel holds every row's products in registers)."""
FUSED_MAX_ROWS = 2
"""The most rows for which callers run same-input projections as one `multi_linear` launch."""

_DTYPES = (torch.bfloat16, torch.float32)


def multi_linear(x: torch.Tensor, weights: Sequence[torch.Tensor], *, impl: KernelImpl) -> list[torch.Tensor]:
    """`[x Wᵢᵀ for each weight]` in `x`'s dtype (see the module docstring)."""
    check_multi_linear(x, weights)
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.multi_linear_triton import multi_linear_triton

        return multi_linear_triton(x, weights)
    return multi_linear_reference(x, weights)


def multi_linear_reference(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`F.linear` per weight."""
    return [F.linear(x, w) for w in weights]


def check_multi_linear(x: torch.Tensor, weights: Sequence[torch.Tensor]) -> None:
    """Raise a one-line error unless the operands fit the contract."""
    if x.dtype not in _DTYPES or x.dim() != 2:
        raise TypeError(f"multi_linear input must be 2-D bfloat16 or float32, got {x.dtype} {list(x.shape)}")
    if x.shape[0] > ROW_LIMIT:
        raise ValueError(f"multi_linear takes at most {ROW_LIMIT} rows, got {x.shape[0]}")
    for i, w in enumerate(weights):
        if w.dim() != 2 or w.shape[1] != x.shape[1]:
            raise ValueError(f"weight {i} {list(w.shape)} is not [N, {x.shape[1]}] for input {list(x.shape)}")
        if w.dtype != x.dtype or w.device != x.device:
            raise TypeError(f"weight {i} is {w.dtype} on {w.device}, the input {x.dtype} on {x.device}")
        if not w.is_contiguous():
            raise ValueError(f"weight {i} must be contiguous (row-major), got strides {w.stride()}")
