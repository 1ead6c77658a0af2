"""The Triton kernels behind `grouped_moe(..., impl="triton")` for experts kept in MXFP4 (W4A16).

The dispatch, the tiles, the two launches and their epilogues are `grouped_moe_triton`'s (`plan_launches`,
`_tile_rows`, `_store_weighted`; `swiglu_triton.store_swiglu`); only the weight operand differs. Each
reduction step of `BLOCK_K` columns loads the expert's packed bytes `[BLOCK_K/2, BLOCK_N]` and scale bytes
`[BLOCK_K/32, BLOCK_N]` (the scales one step ahead: a byte per thread is too narrow for Triton to pipeline
the load itself), splits every byte into its low nibble (even column) and high nibble (odd column),
maps each e2m1 code to its value arithmetically (twice the magnitude is `((2 + m) << e) >> 1`, less one for
code 0), multiplies by its 32-column group's `2^(b-127)` in float32 and casts to the activations' dtype.
The activation tile `[BLOCK_M, BLOCK_K]` is split into its even and odd columns, each dotted with its
nibble half: two dots, no interleaving. `BLOCK_K` must be a multiple of 32 (one scale per 32 columns).

Exactness: an e2m1 value times a power of two has at most 2 significant bits, so the dequantised operand is
bit for bit `dequantize_mxfp4(...)` cast to the activations' dtype (float32 or bfloat16, same exponent
range) for scale bytes 1..254; a product past the dtype's range is ±inf, as in the float32 reference.
Byte 0 is 2^-127, a float32 subnormal (exact unless the device flushes subnormals, then 0); byte 255 is
e8m0's NaN, as in `decode_scales`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice
from deepscout.model_runtime.v4.kernels.grouped_moe_triton import (
    TileConfig,
    _operand,
    _store_weighted,
    _tile_rows,
    plan_launches,
    sum_pairs,
)
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch
from deepscout.model_runtime.v4.kernels.swiglu_triton import store_swiglu
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK

#: columns per scale, as the kernels see it.
SCALE_BLOCK: tl.constexpr = tl.constexpr(FP4_BLOCK)


@triton.jit
def _e2m1(code):
    """float32 values of e2m1 codes (int32, 0..15; bit 3 the sign, then 2 exponent bits, 1 mantissa bit)."""
    magnitude = code & 7
    twice = ((2 + (magnitude & 1)) << (magnitude >> 1)) >> 1
    twice -= (magnitude == 0).to(tl.int32)
    return tl.where(code >= 8, -twice, twice).to(tl.float32) * 0.5


@triton.jit
def _e8m0(byte):
    """float32 `2^(b-127)` of e8m0 bytes built from its bits (0: the subnormal 2^-127, 255: NaN)."""
    exponent = byte.to(tl.int32)
    bits = tl.where(exponent == 0, 1 << 22, exponent << 23)
    bits = tl.where(exponent == 255, 0x7FC00000, bits)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _scaled(values, scale, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """`values` `[BLOCK_K/2, BLOCK_N]` (one nibble half) times the scale of their 32-column group (`scale`
    `[BLOCK_K/32, BLOCK_N]`: 16 packed rows per group)."""
    grouped = tl.reshape(values, (BLOCK_K // SCALE_BLOCK, SCALE_BLOCK // 2, BLOCK_N))
    return tl.reshape(grouped * scale[:, None, :], (BLOCK_K // 2, BLOCK_N))


@triton.jit
def _scale_bytes(s_ptrs, col_ok, scale_ks, k0, K: tl.constexpr):
    """The e8m0 bytes `[BLOCK_K/32, BLOCK_N]` of the reduction step at column `k0` (127, i.e. 1, past K)."""
    mask = col_ok[None, :] & (scale_ks < (K - k0) // SCALE_BLOCK)[:, None]
    return tl.load(s_ptrs, mask=mask, other=127)


@triton.jit
def _mxfp4_dot(
    acc,
    x_even,
    x_odd,
    w_ptrs,
    w_mask,
    scale_bytes,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """`acc` plus one reduction step: the even activation columns times the low nibbles' values, the odd
    ones times the high nibbles', each value scaled and cast to the activations' dtype."""
    packed = tl.load(w_ptrs, mask=w_mask, other=0).to(tl.int32)
    scale = _e8m0(scale_bytes)
    low = _scaled(_e2m1(packed & 15), scale, BLOCK_K, BLOCK_N).to(x_even.dtype)
    high = _scaled(_e2m1(packed >> 4), scale, BLOCK_K, BLOCK_N).to(x_odd.dtype)
    acc = tl.dot(x_even, low, acc, input_precision=PRECISION)
    return tl.dot(x_odd, high, acc, input_precision=PRECISION)


@triton.jit
def _even_odd(block, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """A `[BLOCK_M, BLOCK_K]` activation tile as its even and odd columns."""
    return tl.split(tl.reshape(block, (BLOCK_M, BLOCK_K // 2, 2)))


@triton.jit
def _mxfp4_gate_up_kernel(
    X,
    W1,
    W3,
    S1,
    S3,
    H,
    PAIR_IDS,
    TILE_EXPERT,
    n_pairs,
    top_k,
    n_experts,
    n_tiles,
    limit,
    stride_x,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_h,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    CLAMP: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    expert, rows, pair, valid, cols, col_ok = _tile_rows(
        PAIR_IDS, TILE_EXPERT, n_pairs, n_tiles, INTER, BLOCK_M, BLOCK_N, GROUP_M
    )
    if expert >= n_experts:
        return
    token = (pair // top_k).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    packed_ks = tl.arange(0, BLOCK_K // 2)
    scale_ks = tl.arange(0, BLOCK_K // SCALE_BLOCK)
    x_ptrs = X + token[:, None] * stride_x + ks[None, :]
    w_offsets = expert * stride_we + cols[None, :] * stride_wn + packed_ks[:, None]  # [BLOCK_K/2, BLOCK_N]
    s_offsets = expert * stride_se + cols[None, :] * stride_sn + scale_ks[:, None]  # [BLOCK_K/32, BLOCK_N]
    w1_ptrs, w3_ptrs = W1 + w_offsets, W3 + w_offsets
    s1_ptrs, s3_ptrs = S1 + s_offsets, S3 + s_offsets
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    s1 = _scale_bytes(s1_ptrs, col_ok, scale_ks, 0, HIDDEN)
    s3 = _scale_bytes(s3_ptrs, col_ok, scale_ks, 0, HIDDEN)
    for k0 in range(0, HIDDEN, BLOCK_K):
        s1_ptrs += BLOCK_K // SCALE_BLOCK
        s3_ptrs += BLOCK_K // SCALE_BLOCK
        s1_next = _scale_bytes(s1_ptrs, col_ok, scale_ks, k0 + BLOCK_K, HIDDEN)
        s3_next = _scale_bytes(s3_ptrs, col_ok, scale_ks, k0 + BLOCK_K, HIDDEN)
        if HIDDEN % BLOCK_K == 0:
            x_mask = valid[:, None]
            w_mask = col_ok[None, :]
        else:
            x_mask = valid[:, None] & (ks < HIDDEN - k0)[None, :]
            w_mask = col_ok[None, :] & (packed_ks < (HIDDEN - k0) // 2)[:, None]
        x_even, x_odd = _even_odd(_operand(tl.load(x_ptrs, mask=x_mask, other=0.0), UPCAST), BLOCK_M, BLOCK_K)
        gate = _mxfp4_dot(gate, x_even, x_odd, w1_ptrs, w_mask, s1, BLOCK_K, BLOCK_N, PRECISION)
        up = _mxfp4_dot(up, x_even, x_odd, w3_ptrs, w_mask, s3, BLOCK_K, BLOCK_N, PRECISION)
        x_ptrs += BLOCK_K
        w1_ptrs += BLOCK_K // 2
        w3_ptrs += BLOCK_K // 2
        s1, s3 = s1_next, s3_next
    store_swiglu(H, gate, up, limit, rows, cols, stride_h, valid[:, None] & col_ok[None, :], CLAMP)


@triton.jit
def _mxfp4_down_kernel(
    H,
    W2,
    S2,
    OUT,
    PAIR_IDS,
    TILE_EXPERT,
    ROUTE,
    n_pairs,
    n_experts,
    n_tiles,
    stride_h,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_out,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    expert, rows, pair, valid, cols, col_ok = _tile_rows(
        PAIR_IDS, TILE_EXPERT, n_pairs, n_tiles, HIDDEN, BLOCK_M, BLOCK_N, GROUP_M
    )
    if expert >= n_experts:
        return
    ks = tl.arange(0, BLOCK_K)
    packed_ks = tl.arange(0, BLOCK_K // 2)
    scale_ks = tl.arange(0, BLOCK_K // SCALE_BLOCK)
    h_ptrs = H + rows[:, None].to(tl.int64) * stride_h + ks[None, :]
    w_ptrs = W2 + expert * stride_we + cols[None, :] * stride_wn + packed_ks[:, None]
    s_ptrs = S2 + expert * stride_se + cols[None, :] * stride_sn + scale_ks[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    scale = _scale_bytes(s_ptrs, col_ok, scale_ks, 0, INTER)
    for k0 in range(0, INTER, BLOCK_K):
        s_ptrs += BLOCK_K // SCALE_BLOCK
        scale_next = _scale_bytes(s_ptrs, col_ok, scale_ks, k0 + BLOCK_K, INTER)
        if INTER % BLOCK_K == 0:
            h_mask = valid[:, None]
            w_mask = col_ok[None, :]
        else:
            h_mask = valid[:, None] & (ks < INTER - k0)[None, :]
            w_mask = col_ok[None, :] & (packed_ks < (INTER - k0) // 2)[:, None]
        h_even, h_odd = _even_odd(_operand(tl.load(h_ptrs, mask=h_mask, other=0.0), UPCAST), BLOCK_M, BLOCK_K)
        acc = _mxfp4_dot(acc, h_even, h_odd, w_ptrs, w_mask, scale, BLOCK_K, BLOCK_N, PRECISION)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K // 2
        scale = scale_next
    _store_weighted(OUT, acc, ROUTE, pair, valid, cols, col_ok, stride_out)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """A packed or scale stack as the uint8 bytes the kernels read (a view; row-major required)."""
    if t.stride(-1) != 1:
        raise ValueError("the MXFP4 stacks must be row-major in their last dimension")
    return t.view(torch.uint8)


def stack_bytes(stacks: Mxfp4ExpertStacks) -> tuple[torch.Tensor, ...]:
    """`(w1, w2, w3, w1_scale, w2_scale, w3_scale)` as the uint8 bytes the kernels read (views); w1 and w3
    (and their scales) must share one layout, as the gate-up kernels address both with the same strides."""
    w1, w2, w3 = _bytes(stacks.w1), _bytes(stacks.w2), _bytes(stacks.w3)
    s1, s2, s3 = _bytes(stacks.w1_scale), _bytes(stacks.w2_scale), _bytes(stacks.w3_scale)
    if w1.stride() != w3.stride() or s1.stride() != s3.stride():
        raise ValueError("w1 and w3 (and their scales) must share one layout")
    return w1, w2, w3, s1, s2, s3


def grouped_moe_mxfp4_triton(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    stacks: Mxfp4ExpertStacks,
    swiglu_limit: float,
    *,
    tiles: TileConfig | None = None,
    experts: ExpertSlice | None = None,
    add: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The routed experts' summed output `[N, hidden]` (plus `add`, in `out_dtype`: `sum_pairs`), from
    MXFP4 `stacks`; `tiles` overrides `choose_tiles` (its `block_k` must be a multiple of 32); with
    `experts` the stacks hold only that slice and the other experts' pairs add nothing."""
    n_tokens, hidden = x.shape
    top_k = indices.shape[1]
    n_pairs = n_tokens * top_k
    n_experts, inter, _ = stacks.w1.shape
    if stacks.w1.shape[2] * 2 != hidden:
        raise ValueError(f"the MXFP4 stacks are for hidden {stacks.w1.shape[2] * 2}, x has {hidden}")
    if n_pairs == 0:
        return sum_pairs(x.new_empty(0, hidden), x, add=add, out_dtype=out_dtype)
    x = x.contiguous()
    plan = plan_launches(x, weights, indices, n_experts=n_experts, inter=inter, tiles=tiles, experts=experts)
    tiles, groups, h, pair_out = plan.tiles, plan.groups, plan.h, plan.pair_out
    if tiles.block_k % FP4_BLOCK:
        raise ValueError(f"MXFP4 tiles need block_k a multiple of {FP4_BLOCK}, got {tiles.block_k}")
    w1, w2, w3, s1, s2, s3 = stack_bytes(stacks)
    _mxfp4_gate_up_kernel[(groups.n_tiles * triton.cdiv(inter, tiles.gate_up_n),)](
        x,
        w1,
        w3,
        s1,
        s3,
        h,
        groups.pair_ids,
        groups.tile_expert,
        n_pairs,
        top_k,
        n_experts,
        groups.n_tiles,
        float(swiglu_limit),
        x.stride(0),
        w1.stride(0),
        w1.stride(1),
        s1.stride(0),
        s1.stride(1),
        h.stride(0),
        HIDDEN=hidden,
        INTER=inter,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.gate_up_n,
        BLOCK_K=tiles.block_k,
        GROUP_M=tiles.group_m,
        CLAMP=swiglu_limit > 0,
        PRECISION=plan.precision,
        UPCAST=plan.upcast,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **pdl_launch(x.device),
    )
    _mxfp4_down_kernel[(groups.n_tiles * triton.cdiv(hidden, tiles.down_n),)](
        h,
        w2,
        s2,
        pair_out,
        groups.pair_ids,
        groups.tile_expert,
        plan.route,
        n_pairs,
        n_experts,
        groups.n_tiles,
        h.stride(0),
        w2.stride(0),
        w2.stride(1),
        s2.stride(0),
        s2.stride(1),
        pair_out.stride(0),
        HIDDEN=hidden,
        INTER=inter,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.down_n,
        BLOCK_K=tiles.block_k,
        GROUP_M=tiles.group_m,
        PRECISION=plan.precision,
        UPCAST=plan.upcast,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **pdl_launch(h.device),
    )
    return plan.summed(x, add=add, out_dtype=out_dtype)
