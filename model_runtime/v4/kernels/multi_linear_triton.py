"""The Triton path of `multi_linear` (contract in `multi_linear.py`): several weights' matrix-vector products
with one input, one launch, plain and FP8 block-scaled weights alike.

The weights stay where their modules hold them. They reach the kernel as one tuple argument of tensors (a
Triton tuple: one pointer per weight), their FP8 block scales as another (a dummy, the weight itself, for
plain weights), their row counts, kinds and where each one's programs and outputs start as compile-time
tuples. So nothing is built per weight set or kept between calls (no device table of data pointers, as in
Triton's grouped-GEMM tutorial, and no rule for rebuilding it when a weight moves), a captured CUDA graph
holds the pointers as it holds any kernel's arguments, and Triton specialises each pointer on its 16-byte
alignment as for a plain argument, so the weight is read 16 bytes a thread at a time (a pointer loaded from
a table carries no alignment: without a hint its loads compile to 2-byte ones). One compilation per
weight-shape-and-kind set and row count (a model has one set per layer kind and format).

A program owns `block_n` consecutive output columns (weight rows) of one weight and all the rows of `x`, so
each weight is read once, in storage order. A weight's kind — plain, FP8 with float32 scales, FP8 with e8m0
scales — fixes its pointers' types, so the kernel holds one copy of the product per kind present (one for
the plain-only sets of the dense format, two for the shipped one's mix), and a program branches to its
weight's kind (a scalar compare of its id with the compile-time first blocks), then finds its weight among
that kind's by the same comparisons (scalar selects of the weight's and scales' pointers, row count and
output offset). It walks K `block_k` columns a step, summing in float32 (`tl.sum`, no `tl.dot`: too few
rows for tensor cores) into each row's accumulator, the rows unrolled (M is a compile-time constant):

* plain: the tile `[block_n, block_k]` converted to float32 times each row of `x` (loaded as `[1,
  block_k]`, in the tile's layout, so no layout conversion);
* FP8: as the FP8 GEMV does, with its step helpers (`fp8_linear_gemv_triton.py`): the e4m3 tile `[block_n,
  block_k/128, 128]` converted to float32 (exact), each row's products summed per 128-wide K block, the
  block sums times their scales (`scale[column // 128, k_block]`, e8m0 bytes decoded from their bits as
  the FP8 kernels do) summed into the accumulator; so `block_k` is then a multiple of 128.

No workspace, no reduction kernel. The outputs are one buffer, weight i's `[M, N_i]` block contiguous after
the ones before it; `multi_linear_triton` returns views of it.

Grid: one program per column block of every weight. `choose_multi_tiles` sizes `block_n` (a power of two,
at most 64) as the FP8 GEMV does: the widest that still gives about four programs per multiprocessor over
all the weights' blocks, and `block_k` for about 4096 weight elements a step (8 KiB of bf16). With an FP8
weight in the set it aims for about eight programs per multiprocessor and 8192 elements a step (8 KiB of
e4m3; the bf16 weights' programs then read 16 KiB), `block_k` at least 128. Measured on an H200 (CUDA-graph
replays, K = 4096, bf16 input; V4-Flash's shipped sets, FP8 `wq_a` 1024 and `wkv` 512 beside the bf16
compressor/indexer projections: CSA 4,160 columns, HCA 2,560), one row / two rows: CSA 5.8 / 8.3 µs
(`block_n` 2, `block_k` 4096; at the dense sets' rule, 4 × 1024, 6.9 / 11.4), HCA 4.1 / 5.8 (4.2 / 8.1),
against 10.9 / 16.7 and 9.1 / 10.9 µs as two FP8 GEMVs and a plain launch. Under Triton's interpreter the
output is written in float32 (it truncates what it stores as bf16) and cast afterwards, as in the other
kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.fp8_linear_gemv_triton import (
    fp8_weight_step,
    gemv_activations,
    gemv_block_n,
)
from deepscout.model_runtime.v4.kernels.fp8_linear_triton import stored_scales
from deepscout.model_runtime.v4.kernels.multiprocessors import multiprocessors
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch
from deepscout.model_runtime.v4.weights.quant import FP8_BLOCK

TritonWeight = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""A weight as the kernel takes it: plain, or an FP8 weight's (weight, scale) pair as the FP8 GEMV takes it
(`multi_linear` passes an `Fp8Weight` so)."""
_STEP_ELEMENTS = 4096
"""Weight elements per program and step: 32 per thread of four warps (four 16-byte loads in bf16)."""
_FP8_STEP_ELEMENTS = 8192
"""Weight elements per program and step with FP8 weights in the set: 8 KiB of e4m3 (four 16-byte loads per
thread of four warps), as a bf16 step of 4096."""
_FP8_SM_FACTOR = 2
"""With FP8 weights in the set, programs per multiprocessor aimed for, relative to `gemv_block_n`'s four."""
_PLAIN: tl.constexpr = tl.constexpr(0)
_FP8_FLOAT_SCALES: tl.constexpr = tl.constexpr(1)
_FP8_E8M0_SCALES: tl.constexpr = tl.constexpr(2)
"""The kinds of weight, each a copy of the product in the kernel (they differ in pointer types)."""


@dataclass(frozen=True)
class MultiTiles:
    """`block_n` output columns per program and `block_k` K columns per step (powers of two; a multiple of
    128 with FP8 weights), launch `num_warps`/`num_stages`."""

    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 1


def choose_multi_tiles(ns: Sequence[int], k: int, *, n_sms: int, fp8: bool = False) -> MultiTiles:
    """`block_n` by `gemv_block_n` over all the weights' rows, and `block_k` for about 4096 weight elements a
    step, at most K rounded up to a power of two. With `fp8` weights in the set, `block_n` as if the device
    had twice its multiprocessors (about eight programs on each) and `block_k` for about 8192 elements, at
    least 128 and at most K rounded up to a power-of-two number of 128-wide blocks (as `choose_gemv_tiles`);
    the module docstring has the measurements."""
    if fp8:
        block_n = gemv_block_n(ns, n_sms=_FP8_SM_FACTOR * n_sms)
        k_cover = triton.next_power_of_2(triton.cdiv(k, FP8_BLOCK)) * FP8_BLOCK
        block_k = min(max(FP8_BLOCK, _FP8_STEP_ELEMENTS // block_n), k_cover)
        return MultiTiles(block_n=block_n, block_k=block_k)
    block_n = gemv_block_n(ns, n_sms=n_sms)
    return MultiTiles(block_n=block_n, block_k=min(_STEP_ELEMENTS // block_n, triton.next_power_of_2(k)))


def device_multi_tiles(ns: Sequence[int], k: int, *, device: torch.device, fp8: bool = False) -> MultiTiles:
    """`choose_multi_tiles` for `device`."""
    return choose_multi_tiles(ns, k, n_sms=multiprocessors(device), fp8=fp8)


@triton.jit
def _plain_products(X, w_base, cols, col_ok, stride_xm, ROWS: tl.constexpr, ROWS_POW2: tl.constexpr,
                    K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    EVEN_K: tl.constexpr):  # fmt: skip
    """`acc[column, row of x]` `[BLOCK_N, ROWS_POW2]` in float32 for a plain weight's `cols`."""
    ks = tl.arange(0, BLOCK_K)
    w_ptrs = w_base + cols[:, None].to(tl.int64) * K + ks[None, :]
    slots = tl.arange(0, ROWS_POW2)
    acc = tl.zeros((BLOCK_N, ROWS_POW2), dtype=tl.float32)
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
    return acc


@triton.jit
def _fp8_products(X, w_base, s_base, cols, col_ok, stride_xm, ROWS: tl.constexpr, ROWS_POW2: tl.constexpr,
                  K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, E8M0: tl.constexpr,
                  EVEN_K: tl.constexpr):  # fmt: skip
    """`acc[column, row of x]` `[BLOCK_N, ROWS_POW2]` in float32 for an FP8 weight's `cols`, its contiguous
    block scales at `s_base`: the FP8 GEMV's steps (`fp8_weight_step`, `gemv_activations`)."""
    SCALE_BLOCK: tl.constexpr = 128
    k_blocks = tl.arange(0, BLOCK_K // SCALE_BLOCK)
    ks = k_blocks[:, None] * SCALE_BLOCK + tl.arange(0, SCALE_BLOCK)[None, :]  # [BLOCK_K/128, 128]
    rows = cols.to(tl.int64)  # the weight's rows
    w_ptrs = w_base + rows[:, None, None] * K + ks[None, :, :]
    SCALE_COLUMNS: tl.constexpr = (K + SCALE_BLOCK - 1) // SCALE_BLOCK  # the scales' row stride
    s_ptrs = s_base + (rows // SCALE_BLOCK)[:, None] * SCALE_COLUMNS + k_blocks[None, :]
    slots = tl.arange(0, ROWS_POW2)
    acc = tl.zeros((BLOCK_N, ROWS_POW2), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        w, scale = fp8_weight_step(w_ptrs, s_ptrs, k0, col_ok, ks, k_blocks, K, SCALE_BLOCK, E8M0, EVEN_K)
        for m in tl.static_range(ROWS):
            x = gemv_activations(X + m * stride_xm + k0 + ks, ks, K - k0, EVEN_K)
            row = tl.sum(tl.sum(w * x[None, :, :], axis=2) * scale, axis=1)  # [BLOCK_N]
            acc = tl.where(slots[None, :] == m, acc + row[:, None], acc)
    return acc


@triton.jit
def _kind_gemv(pid, X, Y, WS, SS, stride_xm, NS: tl.constexpr, FIRST_BLOCKS: tl.constexpr,
               OUT_OFFSETS: tl.constexpr, KINDS: tl.constexpr, LEAD: tl.constexpr, ROWS: tl.constexpr,
               ROWS_POW2: tl.constexpr, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
               EVEN_K: tl.constexpr):  # fmt: skip
    """Program `pid`'s columns, its weight one of kind `KINDS[LEAD]` (weight LEAD the first of that kind):
    found among them by scalar selects, multiplied, stored."""
    w_base = WS[LEAD]
    s_base = SS[LEAD]
    n = tl.full((), NS[LEAD], tl.int32)
    first_block = tl.full((), FIRST_BLOCKS[LEAD], tl.int32)
    out_offset = tl.full((), OUT_OFFSETS[LEAD], tl.int64)
    for i in tl.static_range(LEAD + 1, len(NS)):
        if KINDS[i] == KINDS[LEAD]:
            mine = pid >= FIRST_BLOCKS[i]
            w_base = tl.where(mine, WS[i], w_base)
            s_base = tl.where(mine, SS[i], s_base)
            n = tl.where(mine, NS[i], n)
            first_block = tl.where(mine, FIRST_BLOCKS[i], first_block)
            out_offset = tl.where(mine, OUT_OFFSETS[i], out_offset)
    cols = (pid - first_block) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n
    if KINDS[LEAD] == _PLAIN:
        acc = _plain_products(
            X, w_base, cols, col_ok, stride_xm, ROWS, ROWS_POW2, K, BLOCK_N, BLOCK_K, EVEN_K
        )
    else:
        e8m0: tl.constexpr = KINDS[LEAD] == _FP8_E8M0_SCALES
        acc = _fp8_products(
            X, w_base, s_base, cols, col_ok, stride_xm, ROWS, ROWS_POW2, K, BLOCK_N, BLOCK_K, e8m0, EVEN_K
        )
    slots = tl.arange(0, ROWS_POW2)
    y_ptrs = Y + out_offset + slots[None, :].to(tl.int64) * n + cols[:, None]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=col_ok[:, None] & (slots[None, :] < ROWS))


@triton.jit
def _multi_gemv_kernel(
    X,
    Y,
    WS,
    SS,
    stride_xm,
    NS: tl.constexpr,
    FIRST_BLOCKS: tl.constexpr,
    OUT_OFFSETS: tl.constexpr,
    KINDS: tl.constexpr,
    LEADS: tl.constexpr,  # the first weight of each kind present
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
    if len(LEADS) == 1:
        _kind_gemv(pid, X, Y, WS, SS, stride_xm, NS, FIRST_BLOCKS, OUT_OFFSETS, KINDS, LEADS[0], ROWS,
                   ROWS_POW2, K, BLOCK_N, BLOCK_K, EVEN_K)  # fmt: skip
    else:
        kind = tl.full((), KINDS[0], tl.int32)
        for i in tl.static_range(1, len(NS)):
            kind = tl.where(pid >= FIRST_BLOCKS[i], KINDS[i], kind)
        for j in tl.static_range(len(LEADS)):
            if kind == KINDS[LEADS[j]]:
                _kind_gemv(pid, X, Y, WS, SS, stride_xm, NS, FIRST_BLOCKS, OUT_OFFSETS, KINDS, LEADS[j], ROWS,
                           ROWS_POW2, K, BLOCK_N, BLOCK_K, EVEN_K)  # fmt: skip


def multi_linear_triton(
    x: torch.Tensor, weights: Sequence[TritonWeight], *, tiles: MultiTiles | None = None
) -> list[torch.Tensor]:
    """`[x Wᵢᵀ for each weight]` in one launch: `x` `[M, K]` (M ≤ `multi_linear.ROW_LIMIT`), weights plain
    `[Nᵢ, K]` in `x`'s dtype or FP8 (weight, scale) pairs; inputs validated by `multi_linear`. `tiles`
    overrides `device_multi_tiles`."""
    m, k = x.shape
    operands = [_operand(w) for w in weights]
    ns = [w.shape[0] for w, _, _ in operands]
    kinds = [kind for _, _, kind in operands]
    fp8 = any(kind != _PLAIN.value for kind in kinds)
    tiles = tiles or device_multi_tiles(ns, k, device=x.device, fp8=fp8)
    _check_tiles(tiles, fp8=fp8)
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
            tuple(w for w, _, _ in operands),
            tuple(s for _, s, _ in operands),
            x.stride(0),
            NS=tuple(ns),
            FIRST_BLOCKS=tuple(first_blocks[:-1]),
            OUT_OFFSETS=tuple(m * offset for offset in accumulate(ns[:-1], initial=0)),
            KINDS=tuple(kinds),
            LEADS=tuple(kinds.index(kind) for kind in dict.fromkeys(kinds)),
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


def _operand(weight: TritonWeight) -> tuple[torch.Tensor, torch.Tensor, int]:
    """What the kernel reads for `weight`: the weight, its scales as stored (e8m0 bytes as uint8, float ones
    as float32; the weight itself as a dummy for a plain weight) and its kind."""
    if isinstance(weight, torch.Tensor):
        return weight, weight, _PLAIN.value
    scale, e8m0 = stored_scales(*weight)
    return weight[0], scale, (_FP8_E8M0_SCALES if e8m0 else _FP8_FLOAT_SCALES).value


def _check_tiles(tiles: MultiTiles, *, fp8: bool) -> None:
    """Power-of-two `block_n` and `block_k`, the latter a multiple of 128 for a set with FP8 weights."""
    if any(triton.next_power_of_2(b) != b for b in (tiles.block_n, tiles.block_k)):
        raise ValueError(f"multi_linear tiles need a power-of-two block_n and block_k: {tiles}")
    if fp8 and tiles.block_k % FP8_BLOCK:
        raise ValueError(
            f"multi_linear tiles need block_k a multiple of {FP8_BLOCK} for FP8 weights: {tiles}"
        )
