"""The decode path of `grouped_moe(..., impl="triton")` on MXFP4 experts (W4A16): a matrix-vector product
per (token, expert) pair, for the few pairs of a decode step.

When it runs: `grouped_moe` takes it for at most `GEMV_MAX_PAIRS` (32) pairs (N·k; at V4-Flash's top-6,
decode steps of up to 5 tokens on one GPU, about 10 on each of two expert-parallel ranks), the tiled kernels
(`grouped_moe_mxfp4_triton`) above. Each pair streams its expert's weights on its own, so the bytes read
are (pairs × an expert's bytes) rather than (distinct experts × an expert's bytes), and pairs of one
expert run side by side (the pair is the grid's fastest axis), so the repeats mostly hit L2. Measured on
an H200 (graph replays, hidden 4096, inter 2048, a rank holding 128 of 256 experts): 3 pairs 62.5 µs
against the tiled kernels' 300 µs (6.6× its byte floor), about 24 pairs 361 µs against 950 µs; the whole
decode step of the V4-Flash-shaped stack with 128 experts on one GPU went from 29.8 to 21.6 ms at one
token, but from 30.6 to 40.9 ms at 8 tokens (48 pairs), hence the switch at 32. With bfloat16 activations
on sm_90 and later the same two launches run as Gluon kernels (`grouped_moe_mxfp4_gemv_gluon`, 1.7× faster
at one token); these Triton kernels run elsewhere: under Triton's interpreter (CPU CI) and for float32
activations, and are the reference the Gluon kernels are tested against.

Launch 1 (gate-up), a program per (pair, block of `gate_up_n` rows of inter): the expert's w1 and w3 rows
`[gate_up_n, hidden/2]` are read in storage order, `block_k` columns a step as a `[rows, block_k/32, 4]`
tile of int32 words (eight codes a word, 16 contiguous bytes a row and 32-column group: wide, coalesced
loads); each word's codes times the token's activations at the word's eight columns are summed per group
in float32 (in-thread multiply-adds, no dot and no padded rows), the group sums times the group's scale are
accumulated, and `h = silu(min(g, l)) * clamp(u, -l, l)` (`store_swiglu`) goes to the pair's row of
`h` `[N·k, inter]`. Launch 2 (down), a program per (pair, block of `down_n` rows of hidden): the pair's
row of `h` times w2's rows the same way, times the pair's routing weight, into its row of `pair_out`
`[N·k, hidden]`; a token's k rows are summed as in the tiled path (`sum_pairs`: deterministic, no
atomics, the shared expert's output added in the same launch).

Pairs routed to experts the stacks do not hold (another rank's, with `experts`; any id outside the stacks)
skip the weights and write a zero row, on the device: no host sync, so the path runs inside CUDA-graph
capture. The kernels read the router's global ids as they are and subtract the slice's first expert
themselves (mapping them apart took six small kernels a layer). `h` and `pair_out` are in `x`'s dtype
(float32 under Triton's interpreter, as the tiled path).

Decoding: a code's e2m1 value times 2^-14 is the float16 whose bits are the code's sign at bit 15 and its
exponent and mantissa bits at bits 11..9 (e2m1's subnormals, 0 and 0.5, are float16 subnormals), converted
exactly to float32. `_pair_f32` builds two of them at once, codes i and i + 4 of a word in its two
halves, with two shifts and masks, then converts each half: about 5.5 instructions a weight in the loop
(sm_90 SASS of the gate-up kernel at V4-Flash's shape), against 9.6 for decoding a byte's nibbles one at a
time as float16. The activations of a step are read as one contiguous tile and split into the eight column
tensors in registers. Each group's sum is multiplied by 2^14 and by `_e8m0` of its scale byte (powers of
two: exact wherever the tiled path's products are in range), so the result is the float32 sum of the
exactly dequantised weights times the activations, in another order.

Tiles: the kernel is short of loads in flight more than of instructions, so each program steps 1024
columns at a time over 4 gate-up rows (8 down rows) and loads the next step's words while it sums this
step's (`GemvTiles.prefetch`; Triton does not pipeline loads that feed no dot, whatever `num_stages`).
Measured on an H200 (graph replays cycling through 16 routings, so the weights stream from memory as in a
decode step; one token, hidden 4096, 36 tile shapes each, `benchmarks/moe_kernel.py --sweep`): 3 held
pairs of full experts (inter 2048, 128 of 256 held: a rank sharing whole experts) 30.3 µs at the former
8/16/1024 tiles without prefetch, 27.8 at these; 6 pairs of a rank's half of every expert (inter 1024: a
rank sharing units) 34.0 and 29.5 µs (3.1× the bytes' floor). Earlier, byte-at-a-time decoding was best at
77.7 µs for 6 held pairs and 51.0 µs for 3 (replayed from L2), word decoding 60.6 and 39.6 µs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice
from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_triton import SCALE_BLOCK, _e8m0, stack_bytes
from deepscout.model_runtime.v4.kernels.grouped_moe_triton import sum_pairs
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch
from deepscout.model_runtime.v4.kernels.swiglu_triton import store_swiglu
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK

GEMV_MAX_PAIRS = 32
"""The most (token, expert) pairs `grouped_moe` sends down this path (see the module docstring)."""


@dataclass(frozen=True)
class GemvTiles:
    """Output rows per program (`gate_up_n` of inter, `down_n` of hidden), reduction columns per step
    (`block_k`, a power of two ≥ 32; capped at the reduction's length rounded up to a power of two), and
    whether a step's weights are loaded while the previous step's are summed (`prefetch`)."""

    gate_up_n: int = 4
    down_n: int = 8
    block_k: int = 1024
    num_warps: int = 4
    prefetch: bool = True


@triton.jit
def _pair_f32(word, EM_SHIFT: tl.constexpr, SIGN_SHIFT: tl.constexpr):
    """The float32 values (times 2^-14) of two e2m1 codes of each int32 `word`: nibble i and nibble i + 4,
    placed as float16 bits by two shifts and masks (`EM_SHIFT` = 9 - 4i, `SIGN_SHIFT` = 12 - 4i) in both
    halves of the word at once, each half converted exactly."""
    em = (word << EM_SHIFT) if EM_SHIFT >= 0 else (word >> -EM_SHIFT)
    bits = (em & 0x0E000E00) | ((word << SIGN_SHIFT) & -0x7FFF8000)  # int32 0x80008000: bits 15, 31
    low = bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    high = (bits >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return low, high


@triton.jit
def _step_offsets(rows, stride_wn, stride_sn, BLOCK_K: tl.constexpr):
    """Offsets of one reduction step's packed words `[rows, BLOCK_K/32, 4]` (int32, eight codes each),
    scale bytes `[rows, BLOCK_K/32]` (within the expert's matrix, at column 0) and of the activation
    columns `[BLOCK_K/32, 4]` at the words' first codes."""
    groups = tl.arange(0, BLOCK_K // SCALE_BLOCK)
    words = groups[:, None] * (SCALE_BLOCK // 8) + tl.arange(0, SCALE_BLOCK // 8)[None, :]
    w_offsets = rows[:, None, None] * stride_wn + words[None, :, :]
    s_offsets = rows[:, None] * stride_sn + groups[None, :]
    return w_offsets, s_offsets, 8 * words


@triton.jit
def _groups_in(k0, K: tl.constexpr, BLOCK_K: tl.constexpr):
    """Which 32-column groups of the step at column `k0` lie inside the `K` columns."""
    return tl.arange(0, BLOCK_K // SCALE_BLOCK) < (K - k0) // SCALE_BLOCK


@triton.jit
def _load_columns(row, x_offsets, group_ok):
    """The activations at each word's eight columns (float32 `[BLOCK_K/32, 4]` each, a tuple by column),
    read as one contiguous `[BLOCK_K/32, 4, 8]` tile and split in registers."""
    columns = x_offsets[:, :, None] + tl.arange(0, 8)[None, None, :]
    x = tl.load(row + columns, mask=group_ok[:, None, None], other=0.0).to(tl.float32)
    x = tl.reshape(x, (x.shape[0], x.shape[1], 2, 2, 2))  # column 4a + 2b + c at [..., a, b, c]
    x_c0, x_c1 = tl.split(x)
    x_00, x_01 = tl.split(x_c0)
    x_10, x_11 = tl.split(x_c1)
    x0, x4 = tl.split(x_00)
    x2, x6 = tl.split(x_01)
    x1, x5 = tl.split(x_10)
    x3, x7 = tl.split(x_11)
    return (x0, x1, x2, x3, x4, x5, x6, x7)


@triton.jit
def _load_step(W, S, w_offsets, s_offsets, row_ok, group_ok):
    """One step's packed words `[rows, groups, 4]` and scale bytes `[rows, groups]` of a block of rows
    (nothing read outside the rows and groups: past the reduction's end every group is out)."""
    words = tl.load(W + w_offsets, mask=row_ok[:, None, None] & group_ok[None, :, None], other=0)
    scales = tl.load(S + s_offsets, mask=row_ok[:, None] & group_ok[None, :], other=127)
    return words, scales


@triton.jit
def _group_sums(words, scales, v):
    """Each row's and 32-column group's Σ weight · v of one step (`v`: the eight column tensors of
    `_load_columns`), the weights dequantised (float32 `[rows, groups]`)."""
    w0, w4 = _pair_f32(words, 9, 12)
    w1, w5 = _pair_f32(words, 5, 8)
    w2, w6 = _pair_f32(words, 1, 4)
    w3, w7 = _pair_f32(words, -3, 0)
    products = w0 * v[0][None] + w4 * v[4][None] + w1 * v[1][None] + w5 * v[5][None]
    products += w2 * v[2][None] + w6 * v[6][None] + w3 * v[3][None] + w7 * v[7][None]
    return tl.sum(products, axis=2) * 16384.0 * _e8m0(scales)


@triton.jit
def _gemv_gate_up_kernel(
    X,
    W1,
    W3,
    S1,
    S3,
    H,
    IDS,
    first_expert,
    n_experts,
    top_k,
    limit,
    stride_x,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_h,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CLAMP: tl.constexpr,
    PREFETCH: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    pair = tl.program_id(0)
    expert = tl.load(IDS + pair).to(tl.int64) - first_expert
    if (expert < 0) | (expert >= n_experts):
        return
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < INTER
    w_offsets, s_offsets, x_offsets = _step_offsets(rows, stride_wn, stride_sn, BLOCK_K)
    x_row = X + (pair // top_k).to(tl.int64) * stride_x
    w1, w3 = W1 + expert * stride_we, W3 + expert * stride_we
    s1, s3 = S1 + expert * stride_se, S3 + expert * stride_se
    gate = tl.zeros((BLOCK_N, BLOCK_K // SCALE_BLOCK), dtype=tl.float32)
    up = tl.zeros((BLOCK_N, BLOCK_K // SCALE_BLOCK), dtype=tl.float32)
    group_ok = _groups_in(0, HIDDEN, BLOCK_K)
    gate_words, gate_scales = _load_step(w1, s1, w_offsets, s_offsets, row_ok, group_ok)
    up_words, up_scales = _load_step(w3, s3, w_offsets, s_offsets, row_ok, group_ok)
    for k0 in range(0, HIDDEN, BLOCK_K):
        group_ok = _groups_in(k0, HIDDEN, BLOCK_K)
        v = _load_columns(x_row + k0, x_offsets, group_ok)
        this_gate, this_gate_scales, this_up, this_up_scales = gate_words, gate_scales, up_words, up_scales
        next_ok = _groups_in(k0 + BLOCK_K, HIDDEN, BLOCK_K)
        w_next, s_next = w_offsets + (k0 + BLOCK_K) // 8, s_offsets + (k0 + BLOCK_K) // SCALE_BLOCK
        if PREFETCH:  # the next step's weights in flight while this step's are summed
            gate_words, gate_scales = _load_step(w1, s1, w_next, s_next, row_ok, next_ok)
            up_words, up_scales = _load_step(w3, s3, w_next, s_next, row_ok, next_ok)
        gate += _group_sums(this_gate, this_gate_scales, v)
        up += _group_sums(this_up, this_up_scales, v)
        if not PREFETCH:
            gate_words, gate_scales = _load_step(w1, s1, w_next, s_next, row_ok, next_ok)
            up_words, up_scales = _load_step(w3, s3, w_next, s_next, row_ok, next_ok)
    # the tiled path's epilogue on a one-row tile: the pair's row of H, these rows as its columns
    pair_row = pair + tl.arange(0, 1)
    gate_row, up_row = tl.sum(gate, axis=1)[None, :], tl.sum(up, axis=1)[None, :]
    store_swiglu(H, gate_row, up_row, limit, pair_row, rows, stride_h, row_ok[None, :], CLAMP)


@triton.jit
def _gemv_down_kernel(
    H,
    W2,
    S2,
    OUT,
    IDS,
    ROUTE,
    first_expert,
    n_experts,
    stride_h,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    stride_out,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREFETCH: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    pair = tl.program_id(0)
    expert = tl.load(IDS + pair).to(tl.int64) - first_expert
    held = (expert >= 0) & (expert < n_experts)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < HIDDEN
    acc = tl.zeros((BLOCK_N, BLOCK_K // SCALE_BLOCK), dtype=tl.float32)
    if held:
        w_offsets, s_offsets, h_offsets = _step_offsets(rows, stride_wn, stride_sn, BLOCK_K)
        h_row = H + pair.to(tl.int64) * stride_h
        w2, s2 = W2 + expert * stride_we, S2 + expert * stride_se
        words, scales = _load_step(w2, s2, w_offsets, s_offsets, row_ok, _groups_in(0, INTER, BLOCK_K))
        for k0 in range(0, INTER, BLOCK_K):
            group_ok = _groups_in(k0, INTER, BLOCK_K)
            v = _load_columns(h_row + k0, h_offsets, group_ok)
            this_words, this_scales = words, scales
            next_ok = _groups_in(k0 + BLOCK_K, INTER, BLOCK_K)
            w_next, s_next = w_offsets + (k0 + BLOCK_K) // 8, s_offsets + (k0 + BLOCK_K) // SCALE_BLOCK
            if PREFETCH:  # the next step's weights in flight while this step's are summed
                words, scales = _load_step(w2, s2, w_next, s_next, row_ok, next_ok)
            acc += _group_sums(this_words, this_scales, v)
            if not PREFETCH:
                words, scales = _load_step(w2, s2, w_next, s_next, row_ok, next_ok)
    route = tl.where(held, tl.load(ROUTE + pair), 0.0)
    out = tl.sum(acc, axis=1) * route
    tl.store(OUT + pair.to(tl.int64) * stride_out + rows, out.to(OUT.dtype.element_ty), mask=row_ok)


def _block_k(tiles: GemvTiles, k: int) -> int:
    """The step width for a reduction of `k` columns: `tiles.block_k`, at most `k` rounded up to a power
    of two."""
    return min(tiles.block_k, triton.next_power_of_2(k))


@dataclass(frozen=True)
class PairLaunch:
    """What a decode path's two launches take (its Triton or its Gluon kernels): the stacks as int32 words
    (eight codes each) and scale bytes, the pairs' global expert ids and float32 routing weights, the held
    slice's first expert, and the work buffers `h` `[pairs, inter]` and `pair_out` `[pairs, hidden]`."""

    w1: torch.Tensor
    w2: torch.Tensor
    w3: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    s3: torch.Tensor
    ids: torch.Tensor
    route: torch.Tensor
    first: int
    h: torch.Tensor
    pair_out: torch.Tensor

    @property
    def n_experts(self) -> int:
        return self.w1.shape[0]


def pair_launch(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    stacks: Mxfp4ExpertStacks,
    experts: ExpertSlice | None,
    work_dtype: torch.dtype,
) -> PairLaunch:
    """The launches' operands for `x` `[N, hidden]` routed by `weights`/`indices` `[N, k]` to `stacks`
    (ValueError when the stacks are for another hidden size); work buffers in `work_dtype`."""
    n_pairs, hidden = indices.numel(), x.shape[1]
    if stacks.w1.shape[2] * 2 != hidden:
        raise ValueError(f"the MXFP4 stacks are for hidden {stacks.w1.shape[2] * 2}, x has {hidden}")
    w1, w2, w3, s1, s2, s3 = stack_bytes(stacks)
    w1, w2, w3 = (w.view(torch.int32) for w in (w1, w2, w3))
    return PairLaunch(
        w1, w2, w3, s1, s2, s3,
        ids=indices.reshape(-1).contiguous(),
        route=weights.reshape(-1).float().contiguous(),
        first=0 if experts is None else experts.start,
        h=torch.empty(n_pairs, stacks.w1.shape[1], dtype=work_dtype, device=x.device),
        pair_out=torch.empty(n_pairs, hidden, dtype=work_dtype, device=x.device),
    )  # fmt: skip


def grouped_moe_mxfp4_gemv(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    stacks: Mxfp4ExpertStacks,
    swiglu_limit: float,
    *,
    tiles: GemvTiles | None = None,
    experts: ExpertSlice | None = None,
    add: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The routed experts' summed output `[N, hidden]` (plus `add`, in `out_dtype`: `sum_pairs`) from
    MXFP4 `stacks`, a pair at a time (see the module docstring); with `experts` the stacks hold only that
    slice and the other experts' pairs add nothing."""
    tiles = tiles or GemvTiles()
    n_tokens, hidden = x.shape
    top_k = indices.shape[1]
    n_pairs = n_tokens * top_k
    sizes = (tiles.gate_up_n, tiles.down_n, tiles.block_k)
    if any(s & (s - 1) for s in sizes) or tiles.block_k < FP4_BLOCK:
        raise ValueError(f"GEMV tiles need powers of two and block_k >= {FP4_BLOCK}, got {tiles}")
    # as the tiled path: Triton's interpreter truncates what it stores as bf16, so there the work is float32
    work_dtype = torch.float32 if triton.knobs.runtime.interpret else x.dtype
    x = x.contiguous()
    run = pair_launch(x, weights, indices, stacks, experts, work_dtype)
    if n_pairs == 0:
        return sum_pairs(run.pair_out, x, add=add, out_dtype=out_dtype)
    inter, h, pair_out = run.h.shape[1], run.h, run.pair_out
    _gemv_gate_up_kernel[(n_pairs, triton.cdiv(inter, tiles.gate_up_n))](
        x, run.w1, run.w3, run.s1, run.s3, h, run.ids, run.first, run.n_experts, top_k, float(swiglu_limit),
        x.stride(0), run.w1.stride(0), run.w1.stride(1), run.s1.stride(0), run.s1.stride(1), h.stride(0),
        HIDDEN=hidden, INTER=inter, BLOCK_N=tiles.gate_up_n, BLOCK_K=_block_k(tiles, hidden),
        CLAMP=swiglu_limit > 0, PREFETCH=tiles.prefetch, num_warps=tiles.num_warps, **pdl_launch(x.device),
    )  # fmt: skip
    _gemv_down_kernel[(n_pairs, triton.cdiv(hidden, tiles.down_n))](
        h, run.w2, run.s2, pair_out, run.ids, run.route, run.first, run.n_experts,
        h.stride(0), run.w2.stride(0), run.w2.stride(1), run.s2.stride(0), run.s2.stride(1),
        pair_out.stride(0), HIDDEN=hidden, INTER=inter, BLOCK_N=tiles.down_n, BLOCK_K=_block_k(tiles, inter),
        PREFETCH=tiles.prefetch, num_warps=tiles.num_warps, **pdl_launch(h.device),
    )  # fmt: skip
    return sum_pairs(pair_out, x, add=add, out_dtype=out_dtype)
