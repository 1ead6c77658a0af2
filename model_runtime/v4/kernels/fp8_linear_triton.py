"""The Triton kernel behind `fp8_linear(..., impl="triton")` (contract in `fp8_linear.py`): a W8A16 GEMM that
reads the FP8 weight as stored.

A program owns one `[BLOCK_M, BLOCK_N]` output tile (programs in groups of `group_m` row tiles sweep all
column tiles together, so a group's activations and weights stay in L2) and walks its share of the 128-wide
K blocks. Per K block it loads the e4m3 weight tile, converts it to the activations' dtype (exact: every
e4m3 value is a bf16 value), accumulates `x · wᵀ` over the block in a float32 partial (`128 / block_k` dots),
then adds the partial times the block's scales — one per 128×128 block, loaded per output column as
`scale[col // 128, k_block]`, so any `block_n` works — into the float32 accumulator.

Scales are read as stored: float32 multipliers (bfloat16 ones are widened per call), or e8m0 exponent
bytes (a uint8 view of `float8_e8m0fnu`) turned into 2^(e-127) in the kernel from their bits — exactly
`quant.decode_scales` (byte 0 is the subnormal 2^-127, byte 255 NaN) — so for official checkpoints nothing
is converted per call or kept beside the weight.

Tiles (`choose_tiles`): few rows (decode) stream the weight — thin column tiles and, when they are fewer
than the device's multiprocessors, split-K: each of `split_k` programs per tile (a divisor of the number
of K blocks) reduces an equal contiguous share of them into its own float32 slice of a `[split_k, M, N]`
workspace, summed afterwards (deterministic, no atomics). Many rows (prefill) take 128×128 tensor-core
tiles, pipelined 3 stages deep. (Triton's interpreter cannot loop to a bound computed in the kernel, so the
K blocks per program are a compile-time constant: `split_k` must divide their number.) `fp8_linear` sends up
to `GEMV_MAX_ROWS` (2) rows to the matrix-vector kernel of `fp8_linear_gemv_triton.py` instead, so through
it the few-row tiles (and split-K) serve 3 to 64 rows.

`groups` > 1 runs G independent GEMMs in one launch (a third grid axis): x `[M, G, K]`, weight rows in G
consecutive groups of N/G (a multiple of 128, so a group owns whole scale rows), output `[M, G, N/G]`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.multiprocessors import multiprocessors
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch
from deepscout.model_runtime.v4.weights.quant import FP8_BLOCK

_DECODE_ROWS = 16
"""Up to this many rows a linear is memory-bound: the tiles stream the weight."""
_SPLIT_ROWS = 64
"""Up to this many rows an under-filled grid splits K (beyond, the workspace costs more than it gains)."""


@dataclass(frozen=True)
class TileConfig:
    """Output tile `block_m` × `block_n`, `block_k` of the reduction per dot (divides 128), `split_k`
    programs per tile sharing the K blocks, launch `num_warps`/`num_stages`, and `group_m` row tiles per
    L2 group."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 1
    group_m: int = 8


def choose_tiles(m: int, n: int, k: int, *, n_sms: int) -> TileConfig:
    """Thin tiles for few rows, tensor-core tiles for many; split-K when few rows leave the `n_sms`
    multiprocessors under-filled (up to about two programs per multiprocessor, `split_k` a divisor of the K
    blocks so every split reduces the same number)."""
    if m <= _DECODE_ROWS:
        tiles = TileConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4)
    elif m <= _SPLIT_ROWS:
        tiles = TileConfig(block_m=64, block_n=64, block_k=128, num_warps=4, num_stages=4)
    else:
        return TileConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)
    n_tiles = triton.cdiv(m, tiles.block_m) * triton.cdiv(n, tiles.block_n)
    if n_tiles >= n_sms:
        return tiles
    k_blocks = triton.cdiv(k, FP8_BLOCK)
    wanted = triton.cdiv(2 * n_sms, n_tiles)
    split_k = max(d for d in range(1, min(k_blocks, wanted) + 1) if k_blocks % d == 0)
    return replace(tiles, split_k=split_k)


@triton.jit
def _tile_of(pid, n_row_tiles, n_col_tiles, GROUP_M: tl.constexpr):
    """This program's (row tile, column tile): groups of GROUP_M row tiles sweep all column tiles together."""
    per_group = GROUP_M * n_col_tiles
    first = (pid // per_group) * GROUP_M
    size = tl.minimum(n_row_tiles - first, GROUP_M)
    return first + (pid % per_group) % size, (pid % per_group) // size


@triton.jit
def _decode_scales(raw, E8M0: tl.constexpr):
    """float32 multipliers from stored scales: e8m0 bytes → 2^(e-127) built from its bits, floats as is."""
    if E8M0:
        e = raw.to(tl.int32)
        bits = tl.where(e == 0, 1 << 22, tl.where(e == 255, 0x7FC00000, e << 23))
        multiplier = bits.to(tl.float32, bitcast=True)
    else:
        multiplier = raw
    return multiplier


@triton.jit
def _fp8_linear_kernel(
    X,
    W,
    S,
    Y,
    M,
    N,
    K,
    stride_xm,
    stride_xg,
    stride_wn,
    stride_sn,
    stride_ys,
    stride_ym,
    stride_yg,
    BLOCKS_PER_SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SCALE_BLOCK: tl.constexpr,
    GROUP_M: tl.constexpr,
    E8M0: tl.constexpr,
    EVEN_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    tile_m, tile_n = _tile_of(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    split = tl.program_id(1)
    group = tl.program_id(2).to(tl.int64)
    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = X + group * stride_xg + rows[:, None].to(tl.int64) * stride_xm + ks[None, :]
    w_ptrs = W + (group * N + cols[None, :]).to(tl.int64) * stride_wn + ks[:, None]  # [BLOCK_K, BLOCK_N]
    s_ptrs = S + (group * (N // SCALE_BLOCK) + cols // SCALE_BLOCK) * stride_sn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(BLOCKS_PER_SPLIT):
        kb = split * BLOCKS_PER_SPLIT + i
        partial = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in tl.static_range(SCALE_BLOCK // BLOCK_K):
            k0 = kb * SCALE_BLOCK + step * BLOCK_K
            if EVEN_K:
                x_mask = row_ok[:, None]
                w_mask = col_ok[None, :]
            else:
                k_ok = ks < K - k0
                x_mask = row_ok[:, None] & k_ok[None, :]
                w_mask = col_ok[None, :] & k_ok[:, None]
            x = tl.load(x_ptrs + k0, mask=x_mask, other=0.0)
            w = tl.load(w_ptrs + k0, mask=w_mask, other=0.0)
            if UPCAST:
                partial = tl.dot(x.to(tl.float32), w.to(tl.float32), partial, input_precision=PRECISION)
            else:
                partial = tl.dot(x, w.to(x.dtype), partial, input_precision=PRECISION)
        scale = _decode_scales(tl.load(s_ptrs + kb, mask=col_ok, other=0), E8M0)
        acc += partial * scale[None, :]
    y_ptrs = (
        Y + split * stride_ys + group * stride_yg + rows[:, None].to(tl.int64) * stride_ym + cols[None, :]
    )
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def stored_scales(weight: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The scales as the kernels read them — e8m0 bytes as uint8 (a view), float scales as float32 — and
    whether they are e8m0; the weight and its scales must be row-major."""
    if weight.stride(1) != 1 or scale.stride(1) != 1:
        raise ValueError("the FP8 weight and its scales must be row-major")
    e8m0 = scale.dtype in (torch.float8_e8m0fnu, torch.uint8)
    return (scale.view(torch.uint8) if e8m0 else scale.to(torch.float32)), e8m0


def device_tiles(m: int, n: int, k: int, *, groups: int, device: torch.device) -> TileConfig:
    """`choose_tiles` for `device`, its multiprocessors shared among the groups."""
    return choose_tiles(m, n, k, n_sms=max(1, multiprocessors(device) // groups))


def fp8_linear_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    *,
    groups: int = 1,
    tiles: TileConfig | None = None,
) -> torch.Tensor:
    """`x` `[M, G, K]` (bf16 or float32) times the FP8 block-scaled `weight` `[N, K]` (rows in `groups`
    consecutive groups) → `[M, G, N/G]` in `x`'s dtype; inputs validated by `fp8_linear`. `tiles`
    overrides `device_tiles`."""
    m, _, k = x.shape
    n_group = weight.shape[0] // groups
    if m == 0:
        return x.new_empty(0, groups, n_group)
    stored_scale, e8m0 = stored_scales(weight, scale)
    if x.stride(2) != 1:
        x = x.contiguous()
    tiles = tiles or device_tiles(m, n_group, k, groups=groups, device=x.device)
    k_blocks = triton.cdiv(k, FP8_BLOCK)
    if FP8_BLOCK % tiles.block_k or k_blocks % tiles.split_k:
        raise ValueError(
            f"block_k must divide {FP8_BLOCK} and split_k the {k_blocks} K blocks, got {tiles.block_k}, "
            f"{tiles.split_k}"
        )
    # Triton's interpreter multiplies bf16 blocks wrongly and truncates what it stores as bf16: there the
    # operands are upcast and the output written in float32.
    upcast = bool(triton.knobs.runtime.interpret)
    direct = tiles.split_k == 1 and not upcast
    out_dtype = x.dtype if direct else torch.float32
    out = torch.empty(tiles.split_k, m, groups, n_group, dtype=out_dtype, device=x.device)
    grid = (triton.cdiv(m, tiles.block_m) * triton.cdiv(n_group, tiles.block_n), tiles.split_k, groups)
    _fp8_linear_kernel[grid](
        x,
        weight,
        stored_scale,
        out,
        m,
        n_group,
        k,
        x.stride(0),
        x.stride(1),
        weight.stride(0),
        stored_scale.stride(0),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        BLOCKS_PER_SPLIT=k_blocks // tiles.split_k,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        SCALE_BLOCK=FP8_BLOCK,
        GROUP_M=tiles.group_m,
        E8M0=e8m0,
        EVEN_K=k % FP8_BLOCK == 0,
        UPCAST=upcast,
        PRECISION="ieee" if upcast or x.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **pdl_launch(x.device),
    )
    return (out[0] if tiles.split_k == 1 else out.sum(dim=0)).to(x.dtype)
