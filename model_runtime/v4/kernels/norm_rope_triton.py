"""The Triton kernels behind `rms_norm` and `rope` with impl="triton" (contracts in `norm_rope.py`).

RMS norm: one program per row, the whole row in registers. RoPE: one program per (token, block of
heads), blocks of up to 16 heads, fewer when the tokens are too few to give every multiprocessor a program
(`rope_head_block`); the pass-through channels are copied, the rotated pairs read as (even, odd) halves;
the output rows are a new tensor's, or (`rope_into_rows`) rows of another tensor named per token, with the
token's position stored beside it when asked (the window ring's positions). With a `RowNorm` the program
first RMS-normalises each of its heads' rows (all of a head's channels are its own), rounding the normed
values to x's dtype as the unfused norm stores them, so the rotation sees the same inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.multiprocessors import multiprocessors
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch
from deepscout.model_runtime.v4.kernels.rope_rows import RowNorm, RowPositions


@triton.jit
def _rms_norm_kernel(
    X,
    W,
    OUT,
    dim,
    stride_x,
    stride_out,
    eps,
    HAS_WEIGHT: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    live = cols < dim
    x = tl.load(X + row * stride_x + cols, mask=live, other=0.0)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=0) / dim + eps)
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=live, other=0.0).to(tl.float32)
        out = w * (xf * inv)
    else:
        out = xf * inv.to(x.dtype).to(tl.float32)  # x · scale rounded to x's dtype, as PyTorch computes it
    tl.store(OUT + row * stride_out + cols, out.to(OUT.dtype.element_ty), mask=live)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    dim = x.shape[-1]
    flat = x.reshape(-1, dim)
    if flat.stride(-1) != 1:
        flat = flat.contiguous()
    out = torch.empty(flat.shape, dtype=x.dtype, device=x.device)
    if flat.shape[0]:
        block = triton.next_power_of_2(dim)
        _rms_norm_kernel[(flat.shape[0],)](
            flat,
            flat if weight is None else weight,
            out,
            dim,
            flat.stride(0),
            out.stride(0),
            eps,
            HAS_WEIGHT=weight is not None,
            BLOCK=block,
            num_warps=min(16, max(1, block // 256)),
            **pdl_launch(flat.device),
        )
    return out.view(x.shape)


@triton.jit
def _normed(xf, sumsq, W, at, mask, dim: tl.constexpr, eps, NORM: tl.constexpr, X_DTYPE: tl.constexpr):
    """Channels `at` of rows with sum of squares `sumsq` (float32), RMS-normed as `_rms_norm_kernel` does
    (NORM 2: times the weight at `at`) and rounded to x's dtype, back in float32."""
    inv = tl.rsqrt(sumsq / dim + eps)[:, None]
    if NORM == 2:
        out = tl.load(W + at, mask=mask, other=0.0).to(tl.float32) * (xf * inv)
    else:
        out = xf * inv.to(X_DTYPE).to(tl.float32)
    return out.to(X_DTYPE).to(tl.float32)


@triton.jit
def _rope_kernel(
    X,
    COS,
    SIN,
    OUT,
    OUT_ROWS,
    n_heads,
    dim,
    stride_xt,
    stride_xh,
    stride_ot,
    stride_oh,
    stride_c,
    sign,
    W,
    eps,
    POS,
    POS_OUT,
    NOPE: tl.constexpr,
    HALF: tl.constexpr,
    NOPE_BLOCK: tl.constexpr,
    HB: tl.constexpr,
    HAS_OUT_ROWS: tl.constexpr,
    NORM: tl.constexpr,  # 0: none, 1: weightless RMS norm first, 2: RMS norm with the weight W first
    HAS_POS: tl.constexpr,  # also POS_OUT[OUT_ROWS[token]] = POS[token] (with HAS_OUT_ROWS)
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * HB + tl.arange(0, HB)
    hmask = heads < n_heads
    x_row = X + token * stride_xt + heads[:, None] * stride_xh
    out_token = token
    if HAS_OUT_ROWS:
        out_token = tl.load(OUT_ROWS + token).to(tl.int64)
        if HAS_POS and tl.program_id(1) == 0:
            tl.store(POS_OUT + out_token, tl.load(POS + token))
    o_row = OUT + out_token * stride_ot + heads[:, None] * stride_oh
    cols = tl.arange(0, NOPE_BLOCK)
    keep = hmask[:, None] & (cols[None, :] < NOPE)
    pairs = tl.arange(0, HALF)
    even_at = NOPE + 2 * pairs[None, :]
    ef = tl.load(x_row + even_at, mask=hmask[:, None], other=0.0).to(tl.float32)
    of = tl.load(x_row + even_at + 1, mask=hmask[:, None], other=0.0).to(tl.float32)
    if NOPE > 0:
        nope = tl.load(x_row + cols[None, :], mask=keep, other=0.0)
        if NORM > 0:
            nf = nope.to(tl.float32)
            sumsq = tl.sum(nf * nf, axis=1) + tl.sum(ef * ef + of * of, axis=1)
            nope = _normed(nf, sumsq, W, cols, keep, NOPE + 2 * HALF, eps, NORM, X.dtype.element_ty)
            ef = _normed(
                ef, sumsq, W, even_at, hmask[:, None], NOPE + 2 * HALF, eps, NORM, X.dtype.element_ty
            )
            of = _normed(
                of, sumsq, W, even_at + 1, hmask[:, None], NOPE + 2 * HALF, eps, NORM, X.dtype.element_ty
            )
        tl.store(o_row + cols[None, :], nope.to(OUT.dtype.element_ty), mask=keep)
    elif NORM > 0:
        sumsq = tl.sum(ef * ef + of * of, axis=1)
        ef = _normed(ef, sumsq, W, even_at, hmask[:, None], 2 * HALF, eps, NORM, X.dtype.element_ty)
        of = _normed(of, sumsq, W, even_at + 1, hmask[:, None], 2 * HALF, eps, NORM, X.dtype.element_ty)
    cos = tl.load(COS + token * stride_c + pairs)[None, :]
    sin = tl.load(SIN + token * stride_c + pairs)[None, :] * sign
    tl.store(o_row + even_at, (ef * cos - of * sin).to(OUT.dtype.element_ty), mask=hmask[:, None])
    tl.store(o_row + even_at + 1, (of * cos + ef * sin).to(OUT.dtype.element_ty), mask=hmask[:, None])


def rope_triton(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    inverse: bool,
    out: torch.Tensor | None = None,
    out_rows: torch.Tensor | None = None,
    norm: RowNorm | None = None,
    positions: RowPositions | None = None,
) -> torch.Tensor:
    """`x` rotated (RMS-normed first with `norm`), into a new tensor; or with `out` `[R, dim]` and
    `out_rows` `[n]`, token i's row written to `out[out_rows[i]]` (in `out`'s dtype), and `out` returned;
    with `positions` also `positions.out[out_rows[i]] = positions.values[i]`."""
    x3 = x if x.dim() == 3 else x.unsqueeze(1)
    if x3.stride(-1) != 1:
        x3 = x3.contiguous()
    n, heads, dim = x3.shape
    half = cos.shape[-1]
    if out is None:
        out3 = torch.empty(x3.shape, dtype=x.dtype, device=x.device)
    else:
        if out_rows is None or x.dim() != 2 or out.dim() != 2 or out.shape[1] != dim or out.stride(1) != 1:
            raise ValueError("rows of x [n, dim] go to rows out_rows of out [R, dim]")
        out3 = out.unsqueeze(1)
    if positions is not None and (out_rows is None or not positions.out.is_contiguous()):
        raise ValueError("positions are written beside rows out_rows, into a contiguous [R] tensor")
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    if n:
        nope = dim - 2 * half
        head_block = rope_head_block(n, heads, programs=multiprocessors(x3.device))
        _rope_kernel[(n, triton.cdiv(heads, head_block))](
            x3,
            cos,
            sin,
            out3,
            out3 if out_rows is None else out_rows,
            heads,
            dim,
            x3.stride(0),
            x3.stride(1),
            out3.stride(0),
            out3.stride(1),
            cos.stride(0),
            -1.0 if inverse else 1.0,
            x3 if norm is None or norm.weight is None else norm.weight.float().contiguous(),
            0.0 if norm is None else norm.eps,
            x3 if positions is None else positions.values,
            x3 if positions is None else positions.out,
            NOPE=nope,
            HALF=half,
            NOPE_BLOCK=triton.next_power_of_2(max(nope, 1)),
            HB=head_block,
            HAS_OUT_ROWS=out_rows is not None,
            NORM=0 if norm is None else 1 if norm.weight is None else 2,
            HAS_POS=positions is not None,
            num_warps=4,
            **pdl_launch(x3.device),
        )
    if out is not None:
        return out
    return out3 if x.dim() == 3 else out3.squeeze(1)


def rope_head_block(n: int, heads: int, *, programs: int) -> int:
    """Heads per program for `n` tokens of `heads` heads: up to 16, fewer while the launch would have
    fewer than `programs` programs (a decode step's 64 query heads as 4 programs left the step's largest
    RoPE launch on 4 multiprocessors; under the interpreter, one program a token is fastest)."""
    block = min(16, triton.next_power_of_2(heads))
    while block > 1 and n * triton.cdiv(heads, block) < programs:
        block //= 2
    return block
