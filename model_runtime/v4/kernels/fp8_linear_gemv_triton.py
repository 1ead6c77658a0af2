"""The decode path of `fp8_linear(..., impl="triton")` (contract in `fp8_linear.py`): a matrix-vector product
for a few rows of activations, one launch, the output written directly in `x`'s dtype.

When it runs: `fp8_linear` takes it for at most `GEMV_MAX_ROWS` (2) rows, the tiled GEMM
(`fp8_linear_triton`) above. Measured on an H200 (`benchmarks/fp8_linear_kernel.py`, CUDA-graph replays,
V4-Flash's FP8 shapes): at one row 2.0–3.1× faster than the tiled path with its split-K reduction (wq_a
3.1 vs 8.0 µs, wq_b 8.9 vs 15.0, wo_a 11.2 vs 25.0), at two rows 1.1–2.4× (wo_a 21.3 vs 23.8). Each
weight byte costs M float32 FMAs on the CUDA cores, so the advantage shrinks with the rows; at eight rows
the whole batch-8 step of the one-GPU shipped stack was 5.3 ms slower than with the tiled path (35.7 →
41.0 ms), so from three rows on the tiled path runs (3–7 rows not timed one by one).

A program owns `block_n` consecutive output columns (weight rows) of one group and all the rows of `x`, so
the weight is read once, in storage order, and walks K `block_k` (a power-of-two multiple of 128) columns a
step: the e4m3 tile `[block_n, block_k/128, 128]` (each row's 128-byte scale blocks contiguous: wide,
coalesced loads) is converted to float32 (exact), then for each row of `x` (unrolled: M is a compile-time
constant) the products with that row's activations are summed per 128-wide K block (`tl.sum` in float32,
no `tl.dot`), the block sums times their scales (`scale[row // 128, k_block]`, decoded by the GEMM's
`_decode_scales`: e8m0 bytes or float32) summed into the row's float32 accumulator. The result is the
reference's float32 sum of the exactly dequantised products in another order; there is no workspace and
no reduction kernel.

With a second weight (`fp8_swiglu_gemv`: a SwiGLU expert's gate and up projections of one input, V4's
shared expert at decode) a program reads both weights' rows for its columns in the same steps, keeps two
accumulators and stores `silu(min(gate, l)) · clamp(up, -l, l)` from them: one launch instead of three
(two products and the activation), the activation on the float32 sums rather than on rounded outputs.

Grid: (column blocks, groups). `choose_gemv_tiles` sizes `block_n` so that N=512..32768 gives at least
about four programs per multiprocessor (fewer columns per program for small N), and `block_k` so that a
step reads about 8 KiB of weight. `groups` > 1 is V4's grouped `wo_a`: x `[M, G, K]`, weight rows in G
consecutive groups of N/G, output `[M, G, N/G]`. Under Triton's interpreter the output is written in
float32 (it truncates what it stores as bf16) and cast afterwards, as in the tiled path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.fp8_linear_triton import _decode_scales, stored_scales
from deepscout.model_runtime.v4.kernels.multiprocessors import multiprocessors
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch
from deepscout.model_runtime.v4.kernels.swiglu_triton import swiglu_values
from deepscout.model_runtime.v4.weights.quant import FP8_BLOCK

GEMV_MAX_ROWS = 2
"""The most rows `fp8_linear` sends down this path (see the module docstring)."""
ROW_LIMIT = 8
"""The most rows the kernel takes (each row unrolled: registers and compile time grow with them)."""
_MAX_BLOCK_N = 64
"""The most output columns per program."""
_PROGRAMS_PER_SM = 4
"""Programs per multiprocessor the decode GEMVs aim for, to keep enough weight loads in flight."""
_STEP_ELEMENTS = 8192
"""Weight elements (bytes) per program and step: 64 per thread of four warps, four 16-byte loads in flight.
Measured on an H200 (`benchmarks/fp8_linear_kernel.py --rows 1 --sweep`, weights streaming, a two-GPU rank's
six decode shapes, weighted by their calls a step): 1.31 ms a step at 64 bytes a thread (8 KiB on four warps,
or 16 KiB on eight), 1.50 ms at 32 (4 KiB on four warps), 1.19 ms with each shape's own best tiles."""


@dataclass(frozen=True)
class GemvTiles:
    """`block_n` output columns per program (a power of two), `block_k` K columns per step (a power-of-two
    multiple of 128), launch `num_warps`/`num_stages`."""

    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1


def choose_gemv_tiles(n: int, k: int, *, groups: int, n_sms: int) -> GemvTiles:
    """`block_n` by `gemv_block_n` over the `groups` of `n` rows, and `block_k` for about 8192 weight bytes
    a step (at least 128, at most K rounded up to a power-of-two number of 128-wide blocks)."""
    block_n = gemv_block_n([n] * groups, n_sms=n_sms)
    k_cover = triton.next_power_of_2(triton.cdiv(k, FP8_BLOCK)) * FP8_BLOCK
    block_k = min(max(FP8_BLOCK, _STEP_ELEMENTS // block_n), k_cover)
    return GemvTiles(block_n=block_n, block_k=block_k)


def device_gemv_tiles(n: int, k: int, *, groups: int, device: torch.device) -> GemvTiles:
    """`choose_gemv_tiles` for `device`."""
    return choose_gemv_tiles(n, k, groups=groups, n_sms=multiprocessors(device))


def gemv_block_n(columns: Sequence[int], *, n_sms: int) -> int:
    """Output columns per program of a matrix-vector launch over weights of `columns` rows each: the widest
    power of two (at most 64) that still gives Σ ⌈columns/block_n⌉ ≥ 4 programs per multiprocessor (1 when
    even that falls short)."""
    block_n = _MAX_BLOCK_N
    while block_n > 1 and sum(triton.cdiv(n, block_n) for n in columns) < _PROGRAMS_PER_SM * n_sms:
        block_n //= 2
    return block_n


@triton.jit
def gemv_activations(ptrs, ks, k_left, EVEN_K: tl.constexpr):
    """One row's activations of a step `[BLOCK_K/128, 128]` in float32, zero past the `k_left` columns."""
    x = tl.load(ptrs) if EVEN_K else tl.load(ptrs, mask=ks < k_left, other=0.0)
    return x.to(tl.float32)


@triton.jit
def fp8_weight_step(w_ptrs, s_ptrs, k0, col_ok, ks, k_blocks, K, SCALE_BLOCK: tl.constexpr,
                    E8M0: tl.constexpr, EVEN_K: tl.constexpr):  # fmt: skip
    """One step's weight tile `[BLOCK_N, BLOCK_K/128, 128]` in float32 and its block scales."""
    if EVEN_K:
        w = tl.load(w_ptrs + k0, mask=col_ok[:, None, None], other=0.0)
        raw_scale = tl.load(s_ptrs + k0 // SCALE_BLOCK, mask=col_ok[:, None], other=0)
    else:
        k_ok = ks < K - k0
        w = tl.load(w_ptrs + k0, mask=col_ok[:, None, None] & k_ok[None, :, :], other=0.0)
        s_mask = col_ok[:, None] & (k_blocks[None, :] * SCALE_BLOCK < K - k0)
        raw_scale = tl.load(s_ptrs + k0 // SCALE_BLOCK, mask=s_mask, other=0)
    return w.to(tl.float32), _decode_scales(raw_scale, E8M0)


@triton.jit
def _fp8_gemv_kernel(
    X,
    W,
    S,
    UP_W,
    UP_S,
    Y,
    N,
    stride_xm,
    stride_xg,
    stride_wn,
    stride_sn,
    stride_ym,
    stride_yg,
    limit,
    ROWS: tl.constexpr,
    ROWS_POW2: tl.constexpr,
    K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SCALE_BLOCK: tl.constexpr,
    E8M0: tl.constexpr,
    EVEN_K: tl.constexpr,
    SWIGLU: tl.constexpr,  # W is the gate, UP_W/UP_S the up projection; the output is their SwiGLU
    CLAMP: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    group = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w_rows = group * N + cols  # the weight's rows (int64)
    k_blocks = tl.arange(0, BLOCK_K // SCALE_BLOCK)
    ks = k_blocks[:, None] * SCALE_BLOCK + tl.arange(0, SCALE_BLOCK)[None, :]  # [BLOCK_K/128, 128]
    w_at = w_rows[:, None, None] * stride_wn + ks[None, :, :]
    s_at = (w_rows // SCALE_BLOCK)[:, None] * stride_sn + k_blocks[None, :]
    x_ptrs = X + group * stride_xg + ks
    slots = tl.arange(0, ROWS_POW2)
    acc = tl.zeros((BLOCK_N, ROWS_POW2), dtype=tl.float32)  # acc[column, row of x]
    up_acc = tl.zeros((BLOCK_N, ROWS_POW2), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        w, scale = fp8_weight_step(W + w_at, S + s_at, k0, col_ok, ks, k_blocks, K, SCALE_BLOCK, E8M0, EVEN_K)
        if SWIGLU:
            up_w, up_scale = fp8_weight_step(
                UP_W + w_at, UP_S + s_at, k0, col_ok, ks, k_blocks, K, SCALE_BLOCK, E8M0, EVEN_K
            )
        for m in tl.static_range(ROWS):
            x = gemv_activations(x_ptrs + m * stride_xm + k0, ks, K - k0, EVEN_K)
            row = tl.sum(tl.sum(w * x[None, :, :], axis=2) * scale, axis=1)  # [BLOCK_N]
            acc = tl.where(slots[None, :] == m, acc + row[:, None], acc)
            if SWIGLU:
                up_row = tl.sum(tl.sum(up_w * x[None, :, :], axis=2) * up_scale, axis=1)
                up_acc = tl.where(slots[None, :] == m, up_acc + up_row[:, None], up_acc)
    if SWIGLU:
        acc = swiglu_values(acc, up_acc, limit, CLAMP)
    y_ptrs = Y + group * stride_yg + slots[None, :].to(tl.int64) * stride_ym + cols[:, None]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=col_ok[:, None] & (slots[None, :] < ROWS))


def fp8_linear_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    *,
    groups: int = 1,
    tiles: GemvTiles | None = None,
) -> torch.Tensor:
    """`x` `[M, G, K]` (bf16 or float32, M ≤ `ROW_LIMIT`) times the FP8 block-scaled `weight` `[N, K]`
    (rows in `groups` consecutive groups) → `[M, G, N/G]` in `x`'s dtype; inputs validated by
    `fp8_linear`. `tiles` overrides `device_gemv_tiles`."""
    return _gemv(x, (weight, scale), None, 0.0, groups=groups, tiles=tiles)


def fp8_swiglu_gemv(
    x: torch.Tensor,
    gate: tuple[torch.Tensor, torch.Tensor],
    up: tuple[torch.Tensor, torch.Tensor],
    limit: float,
    *,
    tiles: GemvTiles | None = None,
) -> torch.Tensor:
    """`silu(min(x W_gateᵀ, l)) · clamp(x W_upᵀ, -l, l)` `[M, N]` (clamps when `limit` > 0) for `x`
    `[M, K]` and the FP8 (weight, scale) pairs `gate` and `up` `[N, K]`, in one launch: each program
    reads both weights' rows for its columns and applies the SwiGLU to its float32 sums before the one
    store. Inputs validated by `fp8_swiglu`."""
    return _gemv(x.unsqueeze(1), gate, up, limit, groups=1, tiles=tiles).squeeze(1)


def _gemv(
    x: torch.Tensor,
    weight: tuple[torch.Tensor, torch.Tensor],
    up: tuple[torch.Tensor, torch.Tensor] | None,
    limit: float,
    *,
    groups: int,
    tiles: GemvTiles | None,
) -> torch.Tensor:
    m, _, k = x.shape
    n_group = weight[0].shape[0] // groups
    if m > ROW_LIMIT:
        raise ValueError(f"the FP8 GEMV takes at most {ROW_LIMIT} rows, got {m}")
    if m == 0:
        return x.new_empty(0, groups, n_group)
    stored_scale, e8m0 = stored_scales(*weight)
    up_weight, up_scale = (weight[0], stored_scale) if up is None else (up[0], stored_scales(*up)[0])
    tiles = tiles or device_gemv_tiles(n_group, k, groups=groups, device=x.device)
    block_k_ok = tiles.block_k % FP8_BLOCK == 0 and triton.next_power_of_2(tiles.block_k) == tiles.block_k
    if triton.next_power_of_2(tiles.block_n) != tiles.block_n or not block_k_ok:
        raise ValueError(f"GEMV tiles need a power-of-two block_n and block_k a power of two >= 128: {tiles}")
    if x.stride(2) != 1:
        x = x.contiguous()
    # as the tiled path: Triton's interpreter truncates what it stores as bf16, so there it writes float32
    out_dtype = torch.float32 if triton.knobs.runtime.interpret else x.dtype
    out = torch.empty(m, groups, n_group, dtype=out_dtype, device=x.device)
    _fp8_gemv_kernel[(triton.cdiv(n_group, tiles.block_n), groups)](
        x,
        weight[0],
        stored_scale,
        up_weight,
        up_scale,
        out,
        n_group,
        x.stride(0),
        x.stride(1),
        weight[0].stride(0),
        stored_scale.stride(0),
        out.stride(0),
        out.stride(1),
        float(limit),
        ROWS=m,
        ROWS_POW2=triton.next_power_of_2(m),
        K=k,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        SCALE_BLOCK=FP8_BLOCK,
        E8M0=e8m0,
        EVEN_K=k % tiles.block_k == 0,
        SWIGLU=up is not None,
        CLAMP=limit > 0,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **pdl_launch(x.device),
    )
    return out.to(x.dtype)
