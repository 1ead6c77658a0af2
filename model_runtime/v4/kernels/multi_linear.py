"""Several bias-free linear projections of one input, for the few rows of a decode step.

Contract: `x` `[M, K]` in bfloat16 or float32 with M ≤ `ROW_LIMIT` (4), `weights` a sequence of weights on
`x`'s device, each either

* plain: a `[Nᵢ, K]` contiguous (row-major) tensor in `x`'s dtype, giving `x Wᵢᵀ`; or
* FP8 block-scaled (`Fp8Weight`): `weight` `[Nᵢ, K]` in `float8_e4m3fn` and its block scales `scale`
  `[ceil(Nᵢ/128), ceil(K/128)]` (`float8_e8m0fnu` or raw e8m0 bytes in uint8, float32 or bfloat16), both
  contiguous, giving `x Wᵢᵀ` with `Wᵢ[r, c] = weight[r, c] * scale[r // 128, c // 128]`: what
  `fp8_linear(x, weight, scale)` gives (`fp8_linear.py`); Nᵢ and K need not be multiples of 128.

read where they are (each module keeps its own weight: nothing is concatenated or dequantised). Returns
`[x Wᵢᵀ for each weight]`, each `[M, Nᵢ]` contiguous in `x`'s dtype.

* "reference": `F.linear` per plain weight (cuBLAS on CUDA: a split-K GEMV and its reduction per weight at
  decode), `fp8_linear`'s reference (exact dequantisation, float32 product) per FP8 one. The oracle.
* "triton": one launch for all the weights, plain and FP8 alike (`multi_linear_triton`): a matrix-vector
  product per column block, float32 accumulation (per 128-wide K block times its scale for FP8 weights),
  the outputs written directly in `x`'s dtype.

When to use it: callers fuse a set of same-input projections with it for at most `FUSED_MAX_ROWS` (2) rows
(a batch-1 or batch-2 decode step), where each separate product is a few microseconds of launch-bound
work; above that the rows' FMAs on the CUDA cores outgrow what a launch costs (as for the FP8 GEMV,
`fp8_linear_gemv_triton.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import torch
import torch.nn.functional as F

from deepscout.model_runtime.v4.kernels.fp8_linear import fp8_linear_reference
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.weights.quant import SCALE_DTYPES, fp8_scale_shape

ROW_LIMIT = 4
"""The most rows `multi_linear` takes (the kernel holds every row's products in registers)."""
FUSED_MAX_ROWS = 2
"""The most rows for which callers run same-input projections as one `multi_linear` launch."""

_DTYPES = (torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class Fp8Weight:
    """An FP8 block-scaled weight as stored: `weight` `[N, K]` float8_e4m3fn, `scale` `[ceil(N/128),
    ceil(K/128)]` (see the module docstring)."""

    weight: torch.Tensor
    scale: torch.Tensor


LinearWeight: TypeAlias = torch.Tensor | Fp8Weight
"""One `multi_linear` weight: plain (in the input's dtype) or FP8 block-scaled."""


def multi_linear(x: torch.Tensor, weights: Sequence[LinearWeight], *, impl: KernelImpl) -> list[torch.Tensor]:
    """`[x Wᵢᵀ for each weight]` in `x`'s dtype (see the module docstring)."""
    check_multi_linear(x, weights)
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.multi_linear_triton import multi_linear_triton

        return multi_linear_triton(
            x, [(w.weight, w.scale) if isinstance(w, Fp8Weight) else w for w in weights]
        )
    return multi_linear_reference(x, weights)


def multi_linear_reference(x: torch.Tensor, weights: Sequence[LinearWeight]) -> list[torch.Tensor]:
    """`F.linear` per plain weight, the exact dequantisation and a float32 product per FP8 one."""
    return [
        fp8_linear_reference(x, w.weight, w.scale) if isinstance(w, Fp8Weight) else F.linear(x, w)
        for w in weights
    ]


def check_multi_linear(x: torch.Tensor, weights: Sequence[LinearWeight]) -> None:
    """Raise a one-line error unless the operands fit the contract."""
    if x.dtype not in _DTYPES or x.dim() != 2:
        raise TypeError(f"multi_linear input must be 2-D bfloat16 or float32, got {x.dtype} {list(x.shape)}")
    if x.shape[0] > ROW_LIMIT:
        raise ValueError(f"multi_linear takes at most {ROW_LIMIT} rows, got {x.shape[0]}")
    for i, w in enumerate(weights):
        if isinstance(w, Fp8Weight):
            _check_fp8(x, i, w)
        else:
            _check_matrix(x, i, w, x.dtype)


def _check_matrix(x: torch.Tensor, i: int, w: torch.Tensor, dtype: torch.dtype) -> None:
    """Weight `i` must be `[N, K]` in `dtype`, contiguous, on `x`'s device."""
    if w.dim() != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"weight {i} {list(w.shape)} is not [N, {x.shape[1]}] for input {list(x.shape)}")
    if w.dtype != dtype or w.device != x.device:
        raise TypeError(f"weight {i} is {w.dtype} on {w.device}, needs {dtype} on the input's {x.device}")
    if not w.is_contiguous():
        raise ValueError(f"weight {i} must be contiguous (row-major), got strides {w.stride()}")


def _check_fp8(x: torch.Tensor, i: int, w: Fp8Weight) -> None:
    """FP8 weight `i` must be `[N, K]` e4m3 with `[ceil(N/128), ceil(K/128)]` contiguous block scales."""
    _check_matrix(x, i, w.weight, torch.float8_e4m3fn)
    scale = w.scale
    if scale.dtype not in SCALE_DTYPES or scale.device != x.device:
        raise TypeError(
            f"weight {i}'s block scales are {scale.dtype} on {scale.device}, need one of {SCALE_DTYPES} "
            f"on the input's {x.device}"
        )
    want = fp8_scale_shape(tuple(w.weight.shape))
    if tuple(scale.shape) != want:
        raise ValueError(
            f"weight {i} {list(w.weight.shape)} needs block scales {list(want)}, got {list(scale.shape)}"
        )
    if not scale.is_contiguous():
        raise ValueError(f"weight {i}'s block scales must be contiguous, got strides {scale.stride()}")
