"""A linear layer whose weight stays in DeepSeek-V4's shipped FP8 block format (see `weights/quant.py`).

Contract: `weight` `[N, K]` in `float8_e4m3fn` and its block scales `scale` `[ceil(N/128), ceil(K/128)]`
(`float8_e8m0fnu` or raw e8m0 bytes in uint8 — official V4 — or float32/bfloat16 — V3 style), so that
`W[i, j] = weight[i, j] * scale[i // 128, j // 128]`. `x` `[..., K]` in bfloat16 or float32 gives
`y = x Wᵀ` `[..., N]` in `x`'s dtype, for any leading dims and any number of rows (1 at decode, thousands
at prefill); N and K need not be multiples of 128.

`groups` = G > 1 is the grouped projection (V4's `wo_a`): `x` `[..., G, K]`, the weight's rows G consecutive
groups of N/G (a multiple of 128, so each group owns whole scale rows), `y` `[..., G, N/G]` with
`y[..., g, :] = x[..., g, :] W_gᵀ`.

* "reference": the exact dequantisation (`quant.dequantize_fp8_block`), then the product in float32, cast
  to `x`'s dtype. The oracle; it materialises the float32 weight.
* "triton": the FP8 weight and its scales read as stored, float32 accumulation per 128-wide K block times
  that block's scale. Up to `GEMV_MAX_ROWS` (2) rows (decode) `fp8_linear_gemv` — a matrix-vector product,
  one launch reading the weight once for all rows, no tensor cores; above, `fp8_linear_triton` — a W8A16
  GEMM on tensor-core tiles (the threshold's measurements are in `fp8_linear_gemv_triton.py`).

`fp8_swiglu(x, gate, up, limit)` is a SwiGLU expert's first half on two FP8 projections of one input:
`silu(min(x W_gateᵀ, l)) · clamp(x W_upᵀ, -l, l)` (clamps when `limit` > 0), in `x`'s dtype. "reference" is
the two products above and `swiglu_activation`'s reference; "triton" at decode sizes is one GEMV launch
reading both weights (`fp8_swiglu_gemv`), above it the two products and the one-launch activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepscout.model_runtime.v4.kernels.grouped_moe import swiglu_activation
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.weights.quant import (
    FP8_BLOCK,
    SCALE_DTYPES,
    dequantize_fp8_block,
    fp8_scale_shape,
)

_ACTIVATION_DTYPES = (torch.bfloat16, torch.float32)


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    *,
    impl: KernelImpl,
    groups: int = 1,
) -> torch.Tensor:
    """`x Wᵀ` in `x`'s dtype for the FP8 block-scaled weight (see the module docstring)."""
    check_fp8_linear(x, weight, scale, groups=groups)
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.fp8_linear_gemv_triton import GEMV_MAX_ROWS, fp8_linear_gemv
        from deepscout.model_runtime.v4.kernels.fp8_linear_triton import fp8_linear_triton

        lead = x.shape[:-2] if groups > 1 else x.shape[:-1]
        flat = x.reshape(-1, groups, x.shape[-1])
        product = fp8_linear_gemv if flat.shape[0] <= GEMV_MAX_ROWS else fp8_linear_triton
        y = product(flat, weight, scale, groups=groups)
        return y.view(*lead, weight.shape[0]) if groups == 1 else y.view(*lead, groups, -1)
    return fp8_linear_reference(x, weight, scale, groups=groups)


def fp8_swiglu(
    x: torch.Tensor,
    gate: tuple[torch.Tensor, torch.Tensor],
    up: tuple[torch.Tensor, torch.Tensor],
    limit: float,
    *,
    impl: KernelImpl,
) -> torch.Tensor:
    """The SwiGLU of two FP8 projections of `x` `[..., K]` (see the module docstring); `gate` and `up` are
    (weight, scale) pairs of the same shape."""
    check_fp8_linear(x, *gate, groups=1)
    check_fp8_linear(x, *up, groups=1)
    if gate[0].shape != up[0].shape:
        raise ValueError(f"SwiGLU gate and up weights differ: {list(gate[0].shape)} vs {list(up[0].shape)}")
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.fp8_linear_gemv_triton import GEMV_MAX_ROWS, fp8_swiglu_gemv

        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= GEMV_MAX_ROWS:
            return fp8_swiglu_gemv(flat, gate, up, limit).view(*x.shape[:-1], gate[0].shape[0])
    h_gate, h_up = (fp8_linear(x, *pair, impl=impl) for pair in (gate, up))
    return swiglu_activation(h_gate, h_up, limit, impl=impl)


def fp8_linear_reference(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, *, groups: int = 1
) -> torch.Tensor:
    """Dequantise exactly, multiply in float32, cast to `x`'s dtype."""
    w = dequantize_fp8_block(weight, scale)
    if groups == 1:
        return F.linear(x.float(), w).to(x.dtype)
    grouped = w.view(groups, -1, w.shape[1])
    return torch.einsum("...gk,gnk->...gn", x.float(), grouped).to(x.dtype)


def check_fp8_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, *, groups: int) -> None:
    """Raise a one-line error unless the operands fit the contract."""
    if weight.dtype != torch.float8_e4m3fn or weight.dim() != 2:
        raise TypeError(
            f"FP8 linear weights must be 2-D float8_e4m3fn, got {weight.dtype} {list(weight.shape)}"
        )
    if scale.dtype not in SCALE_DTYPES:
        raise TypeError(f"FP8 block scales must be one of {SCALE_DTYPES}, got {scale.dtype}")
    n, k = weight.shape
    if tuple(scale.shape) != fp8_scale_shape((n, k)):
        raise ValueError(
            f"FP8 weight {[n, k]} needs block scales {list(fp8_scale_shape((n, k)))}, got {list(scale.shape)}"
        )
    if x.dtype not in _ACTIVATION_DTYPES:
        raise TypeError(f"FP8 linear inputs must be bfloat16 or float32, got {x.dtype}")
    if x.shape[-1] != k:
        raise ValueError(f"FP8 linear input {list(x.shape)} does not end in the weight's K = {k}")
    if groups < 1:
        raise ValueError(f"groups must be at least 1, got {groups}")
    if groups > 1 and (x.dim() < 2 or x.shape[-2] != groups or n % (groups * FP8_BLOCK)):
        raise ValueError(
            f"grouped FP8 linear needs x [..., {groups}, {k}] and N = {n} a multiple of "
            f"{groups} * {FP8_BLOCK}, got x {list(x.shape)}"
        )
    if x.device != weight.device or scale.device != weight.device:
        raise ValueError(
            f"FP8 linear operands on different devices: {x.device}, {weight.device}, {scale.device}"
        )
