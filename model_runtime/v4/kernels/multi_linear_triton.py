"""The Triton path of `multi_linear` (contract in `multi_linear.py`): several weights' matrix-vector products
with one input, one launch.

The weights stay where their modules hold them. They reach the kernel as one tuple argument of tensors (a
Triton tuple: one pointer per weight), their row counts and where each one's programs and outputs start as
compile-time tuples. So nothing is built per weight set or kept between calls (no device table of data
pointers, as in Triton's grouped-GEMM tutorial, and no rule for rebuilding it when a weight moves), a
captured CUDA graph holds the pointers as it holds any kernel's arguments, and Triton specialises each
pointer on its 16-byte alignment as for a plain argument, so the weight is read 16 bytes a thread at a time
(a pointer loaded from a table carries no alignment: without a hint its loads compile to 2-byte ones). One
compilation per weight-shape set and row count (a model has one set per layer kind and format).

A program owns `block_n` consecutive output columns (weight rows) of one weight and all the rows of `x`, so
each weight is read once, in storage order: it finds its weight by comparing its id with the compile-time
first block of each (scalar selects of the weight's pointer, row count and output offset), then walks K
`block_k` columns a step: the tile `[block_n, block_k]` converted to float32, times each row of `x`
(unrolled: M is a compile-time constant; loaded as `[1, block_k]`, in the tile's layout, so no layout
conversion), summed over the step in float32 (`tl.sum`, no `tl.dot`: too few rows for tensor cores) into
that row's accumulator. No workspace, no reduction kernel. The outputs are one buffer, weight i's `[M, N_i]`
block contiguous after the ones before it; `multi_linear_triton` returns views of it.

Grid: one program per column block of every weight. `choose_multi_tiles` sizes `block_n` (a power of two,
at most 64) as the FP8 GEMV does (`fp8_linear_gemv_triton.py`): the widest that still gives about four
programs per multiprocessor over all the weights' blocks, and `block_k` for about 4096 weight elements a
step. Under Triton's interpreter the output is written in float32 (it truncates what it stores as bf16)
and cast afterwards, as in the other kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.fp8_linear_gemv_triton import gemv_block_n
from deepscout.model_runtime.v4.kernels.fp8_linear_triton import multiprocessors
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

_STEP_ELEMENTS = 4096
"""Weight elements per program and step: 32 per thread of four warps (four 16-byte loads in bf16)."""


@dataclass(frozen=True)
class MultiTiles:
    """`block_n` output columns per program and `block_k` K columns per step (powers of two), launch
    `num_warps`/`num_stages`."""

    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1


def choose_multi_tiles(ns: Sequence[int], k: int, *, n_sms: int) -> MultiTiles:
    """`block_n` by `gemv_block_n` over all the weights' rows, and `block_k` for about 4096 weight elements a
    step (at most K rounded up to a power of two)."""
    block_n = gemv_block_n(ns, n_sms=n_sms)
    return MultiTiles(block_n=block_n, block_k=min(_STEP_ELEMENTS // block_n, triton.next_power_of_2(k)))


def device_multi_tiles(ns: Sequence[int], k: int, *, device: torch.device) -> MultiTiles:
    """`choose_multi_tiles` for `device`."""
    return choose_multi_tiles(ns, k, n_sms=multiprocessors(device))


@triton.jit
def _multi_gemv_kernel(
    X,
    Y,
    WS,
    stride_xm,
    NS: tl.constexpr,
    FIRST_BLOCKS: tl.constexpr,
    OUT_OFFSETS: tl.constexpr,
    ROWS: tl.constexpr,
    ROWS_POW2: tl.constexpr,
    K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    pid = tl.program_id(0)
    w_base = WS[0]
    n = tl.full((), NS[0], tl.int32)
    first_block = tl.full((), 0, tl.int32)
    out_offset = tl.full((), 0, tl.int64)
    for i in tl.static_range(1, len(NS)):
        mine = pid >= FIRST_BLOCKS[i]
        w_base = tl.where(mine, WS[i], w_base)
        n = tl.where(mine, NS[i], n)
        first_block = tl.where(mine, FIRST_BLOCKS[i], first_block)
        out_offset = tl.where(mine, OUT_OFFSETS[i], out_offset)
    cols = (pid - first_block) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n
    ks = tl.arange(0, BLOCK_K)
    w_ptrs = w_base + cols[:, None].to(tl.int64) * K + ks[None, :]
    slots = tl.arange(0, ROWS_POW2)
    acc = tl.zeros((BLOCK_N, ROWS_POW2), dtype=tl.float32)  # acc[column, row of x]
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs + k0, mask=col_ok[:, None], other=0.0)
        else:
            w = tl.load(w_ptrs + k0, mask=col_ok[:, None] & (ks[None, :] < K - k0), other=0.0)
        w = w.to(tl.float32)
        for m in tl.static_range(ROWS):
            x_ptrs = X + m * stride_xm + k0 + ks[None, :]
            x = tl.load(x_ptrs) if EVEN_K else tl.load(x_ptrs, mask=ks[None, :] < K - k0, other=0.0)
            row = tl.sum(w * x.to(tl.float32), axis=1)
            acc = tl.where(slots[None, :] == m, acc + row[:, None], acc)
    y_ptrs = Y + out_offset + slots[None, :].to(tl.int64) * n + cols[:, None]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=col_ok[:, None] & (slots[None, :] < ROWS))


def multi_linear_triton(
    x: torch.Tensor, weights: Sequence[torch.Tensor], *, tiles: MultiTiles | None = None
) -> list[torch.Tensor]:
    """`[x Wᵢᵀ for each weight]` in one launch: `x` `[M, K]` (M ≤ `multi_linear.ROW_LIMIT`), weights `[Nᵢ, K]`
    contiguous in `x`'s dtype; inputs validated by `multi_linear`. `tiles` overrides `device_multi_tiles`."""
    m, k = x.shape
    ns = [w.shape[0] for w in weights]
    tiles = tiles or device_multi_tiles(ns, k, device=x.device)
    if any(triton.next_power_of_2(b) != b for b in (tiles.block_n, tiles.block_k)):
        raise ValueError(f"multi_linear tiles need a power-of-two block_n and block_k: {tiles}")
    if x.stride(1) != 1:
        x = x.contiguous()
    # as the other kernels: Triton's interpreter truncates what it stores as bf16, so there it writes float32
    out_dtype = torch.float32 if triton.knobs.runtime.interpret else x.dtype
    out = torch.empty(m * sum(ns), dtype=out_dtype, device=x.device)
    first_blocks = [0, *accumulate(triton.cdiv(n, tiles.block_n) for n in ns)]
    if m and first_blocks[-1]:
        _multi_gemv_kernel[(first_blocks[-1],)](
            x,
            out,
            tuple(weights),
            x.stride(0),
            NS=tuple(ns),
            FIRST_BLOCKS=tuple(first_blocks[:-1]),
            OUT_OFFSETS=tuple(m * offset for offset in accumulate(ns[:-1], initial=0)),
            ROWS=m,
            ROWS_POW2=triton.next_power_of_2(m),
            K=k,
            BLOCK_N=tiles.block_n,
            BLOCK_K=tiles.block_k,
            EVEN_K=k % tiles.block_k == 0,
            num_warps=tiles.num_warps,
            num_stages=tiles.num_stages,
            **pdl_launch(x.device),
        )
    return [y.view(m, n) for y, n in zip(out.to(x.dtype).split([m * n for n in ns]), ns, strict=True)]
