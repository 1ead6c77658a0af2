"""SwiGLU on the GPU: `silu(min(gate, l)) * clamp(up, -l, l)` (the clamps when `limit` > 0), computed in
float32 and stored once.

`swiglu_values` and `store_swiglu` are the epilogue the expert kernels share (the grouped MoE tiles, the
MXFP4 decode GEMV, the shared expert's FP8 SwiGLU GEMV); `swiglu_triton` is the activation alone as one
launch (`grouped_moe.swiglu_activation` with impl="triton").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch


@triton.jit
def swiglu_values(gate, up, limit, CLAMP: tl.constexpr):
    """`silu(min(gate, l)) * clamp(up, -l, l)` (clamps when CLAMP) of float32 tiles."""
    if CLAMP:
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
    return gate * tl.sigmoid(gate) * up


@triton.jit
def store_swiglu(H, gate, up, limit, rows, cols, stride_h, mask, CLAMP: tl.constexpr):
    """Write `h = silu(min(gate, l)) * clamp(up, -l, l)` (clamps when CLAMP) to the tile's rows of H."""
    h = swiglu_values(gate, up, limit, CLAMP)
    h_ptrs = H + rows[:, None].to(tl.int64) * stride_h + cols[None, :]
    tl.store(h_ptrs, h.to(H.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_kernel(GATE, UP, H, n_cols, limit, BLOCK: tl.constexpr, CLAMP: tl.constexpr, PDL: tl.constexpr):
    """One row's block of columns of `h` from the same block of the (contiguous) gate and up rows."""
    enter_pdl(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n_cols
    offsets = row.to(tl.int64) * n_cols + cols
    gate = tl.load(GATE + offsets, mask=ok, other=0.0).to(tl.float32)[None, :]
    up = tl.load(UP + offsets, mask=ok, other=0.0).to(tl.float32)[None, :]
    store_swiglu(H, gate, up, limit, row + tl.arange(0, 1), cols, n_cols, ok[None, :], CLAMP)


def swiglu_triton(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """`silu(min(gate, l)) * clamp(up, -l, l)` (clamps when `limit` > 0) in one launch, computed in
    float32 and stored in `gate`'s dtype (the reference takes four kernels, each rounding)."""
    gate, up = gate.contiguous(), up.contiguous()
    h = torch.empty_like(gate)
    n_cols = gate.shape[-1]
    rows = gate.numel() // max(n_cols, 1)
    if rows and n_cols:
        block = min(1024, triton.next_power_of_2(n_cols))
        _swiglu_kernel[(rows, triton.cdiv(n_cols, block))](
            gate,
            up,
            h,
            n_cols,
            float(limit),
            BLOCK=block,
            CLAMP=limit > 0,
            **pdl_launch(h.device),
        )
    return h
