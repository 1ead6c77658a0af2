"""The CUDA kernels of the MXFP4 decode path (`grouped_moe_mxfp4_gemv`), written in Gluon: the same two
launches as the Triton kernels of `grouped_moe_mxfp4_gemv_triton` (gate-up with SwiGLU, then down times the
routing weight, a program per (pair, block of output rows)) and the same contract, with the register
layouts stated instead of inferred. `grouped_moe` takes them for bfloat16 activations on sm_90 and later
(`gluon_runs_on`); Triton's interpreter, which cannot run Gluon, runs the Triton kernels, the reference
these are tested against on the GPU.

Why: the Triton kernels' loop costs 6.4 instructions a weight (sm_90 SASS of the gate-up kernel at
V4-Flash's shape), nine barrier pairs a step among them, where Triton moves the activations and the group
sums between layouts through shared memory. Here every tensor of a step lives in one parent layout
`[rows, groups, 4 words]`: a lane owns one 32-column scale group (its 16 packed bytes a row: one 16-byte
load) of `rows / (threads on rows)` rows, and that group's activations (one 16-byte load a word), so the
products, the group sums and their scales never leave the thread and the kernels use no shared memory.

The arithmetic, per int32 word (eight e2m1 codes, `_word_sums` in PTX):
- The even and the odd codes of the word's four bytes become e4m3 bytes by placing the code's bits in the
  e4m3 fields (`((w << 2) & 0x1C1C1C1C) | ((w << 4) & 0x80808080)`, `((w >> 2) & 0x1C1C1C1C) | (w &
  0x80808080)`: the e2m1 value times 2^-6, exactly, subnormals included), converted two at a time to
  float16 pairs (`cvt.rn.f16x2.e4m3x2`), multiplied by the activations' float16 pairs and summed in
  float16 (`fma.rn.f16x2`, two products an instruction), then the two halves added in float32.
- The activations of each group are scaled by a power of two to below 64 in magnitude (from their largest
  magnitude's exponent) and rounded to float16 in the pairs the decoding yields: columns (0, 2), (4, 6),
  (1, 3), (5, 7) of each word. A group's word sums, times the weight's e8m0 scale and the factor undoing
  both powers of two, are added to the row's float32 accumulator.
- Precision: the products are exact in float16 (at most 2 + 8 significant bits; a bfloat16 activation is
  exact in float16 after the scaling), the four-product half-sums round to float16 (relative 2^-11) and
  stay below 4 · 6 · 64 · 2^-6 = 24; activations under about 2^-19 of their group's largest become
  float16 subnormals after the scaling and keep fewer bits (an absolute error under 2^-30 of the largest).
  The result is the exact dot product up to float16 rounding inside each word, against the Triton kernels'
  float32; the GPU tests hold it to the same bound against the float32 reference.
- SASS of the whole gate-up kernel at V4-Flash's shape: 3.4 instructions a weight.

Measured on an H200 (CUDA-graph replays cycling 16 routings, one token, hidden 4096, top-6; gate-up, down
and the pair sum): all 256 experts (inter 2048) 51.5 µs for the Triton kernels, 30.1 µs here (1.58× the
19.1 µs byte floor); a rank's half of every expert's units (inter 1024, the default two-GPU sharing) 29.4
and 18.3 µs; a rank of whole experts (128 of 256, 2.4 held pairs on average) 27.6 and 21.4 µs. The 43-layer
V4-Flash stack at full width in the shipped formats on one H200 (`benchmarks/long_context.py --weights
shipped`, 8K context, batch 1) went from 7.19 to 6.30 ms a token. Tiles (`GluonGemvTiles`): 4 gate-up rows
and 16 down rows a thread, two warps a program, within 0.6 µs of the fastest of a sweep (1–8 warps, 1–8
and 2–16 rows a thread) at the two-GPU shape, 1.5 µs at the one-GPU one. Nsight Compute on the gate-up
kernel before the activations took one load a word: 40% of issue slots, a third of DRAM bandwidth, warps
waiting on loads and the load queue (latency-bound at 16 warps a multiprocessor, 128 registers a thread).
Tried and dropped: streaming every step's words into shared
memory with asynchronous copies (`cp.async`) up front, which freed registers but made both kernels slower
(39.5 → 44.8 µs), and splitting the reduction across a program's warps (no gain at these shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice
from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_triton import pair_launch
from deepscout.model_runtime.v4.kernels.grouped_moe_triton import sum_pairs
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks
from deepscout.model_runtime.v4.kernels.pdl import pdl_launch
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK

SCALE_COLUMNS = gl.constexpr(FP4_BLOCK)
"""Columns a scale byte covers (MXFP4's block, 32): a thread's share of a row in one step."""


@dataclass(frozen=True)
class GluonGemvTiles:
    """Output rows per program (`gate_up_rows` of inter, `down_rows` of hidden) and warps a program. A step
    covers 32 scale groups, a lane each (fewer where the reduction is shorter, the other lanes then on
    rows); each thread holds `rows / (threads on rows)` rows (`_plan`)."""

    gate_up_rows: int = 8
    down_rows: int = 32
    num_warps: int = 2


@gluon.constexpr_function
def _words_layout(rows, groups, num_warps):
    """The step's layout `[rows, groups, 4 words]`: a group's four words (16 bytes, 32 codes) in one thread,
    lanes over groups then rows, warps over rows."""
    lanes_rows = 32 // groups
    per_thread = [rows // (lanes_rows * num_warps), 1, 4]
    return gl.BlockedLayout(per_thread, [lanes_rows, groups, 1], [num_warps, 1, 1], [2, 1, 0])


@gluon.constexpr_function
def _pairs_layout(words):
    """`words`' layout with a fourth dimension of four int32 in each thread: a word's activations as
    bfloat16 pairs."""
    return gl.BlockedLayout(
        [*words.size_per_thread, 4], [*words.threads_per_warp, 1], [*words.warps_per_cta, 1], [3, 2, 1, 0]
    )


@gluon.jit
def _enter_pdl(PDL: gl.constexpr):
    """`pdl.enter_pdl` for Gluon kernels: wait for the kernel before, then release the one after."""
    if PDL:
        gl.inline_asm_elementwise(
            "griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1
        )
        gl.inline_asm_elementwise(
            "griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1
        )


@gluon.jit
def _e8m0(byte):
    """float32 `2^(b-127)` of e8m0 bytes (0: the subnormal 2^-127, 255: NaN), as `_e8m0` of the Triton
    kernels."""
    exponent = byte.to(gl.int32)
    bits = gl.where(exponent == 0, 1 << 22, exponent << 23)
    bits = gl.where(exponent == 255, 0x7FC00000, bits)
    return bits.to(gl.float32, bitcast=True)


@gluon.jit
def _f16x2(low, high):
    """Two float32 tensors rounded to float16 and packed into one int32 (`low` in bits 0-15)."""
    return gl.inline_asm_elementwise(
        "cvt.rn.f16x2.f32 $0, $2, $1;", "=r,r,r", [low, high], dtype=gl.int32, is_pure=True, pack=1
    )


@gluon.jit
def _bf16_pair(pair):
    """The float32 values of the two bfloat16 in each int32 (low half first)."""
    return (pair << 16).to(gl.float32, bitcast=True), (pair & -65536).to(gl.float32, bitcast=True)


@gluon.jit
def _scaled_columns(x_row, k0, K: gl.constexpr, GROUPS: gl.constexpr, WORDS: gl.constexpr):
    """One step's activations for the words `[groups, 4]` of a row: four int32 tensors of float16 pairs,
    columns (0, 2), (4, 6), (1, 3), (5, 7) of each word's eight, scaled by a power of two per group to below
    64 in magnitude; and the factor `[groups]` (float32) that turns the word sums back into dot products."""
    layout: gl.constexpr = gl.SliceLayout(0, _pairs_layout(WORDS))  # [groups, 4 words, 4 pairs]
    groups = gl.arange(0, GROUPS, layout=gl.SliceLayout(1, gl.SliceLayout(2, layout)))
    words = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, layout)))
    pairs = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, layout)))
    index = (
        k0 // 2
        + (groups[:, None] * (SCALE_COLUMNS // 2) + words[None, :] * 4)[:, :, None]
        + pairs[None, None, :]
    )
    tile = gl.load(x_row + index, mask=index < K // 2, other=0)  # a word's 16 bytes: one load
    low, high = gl.split(gl.reshape(tile, [GROUPS, 4, 2, 2]))  # pairs (0, 2) and (1, 3)
    p01, p45 = gl.split(low)
    p23, p67 = gl.split(high)
    word_layout: gl.constexpr = gl.SliceLayout(0, WORDS)
    p01 = gl.convert_layout(p01, word_layout, assert_trivial=True)
    p23 = gl.convert_layout(p23, word_layout, assert_trivial=True)
    p45 = gl.convert_layout(p45, word_layout, assert_trivial=True)
    p67 = gl.convert_layout(p67, word_layout, assert_trivial=True)
    x0, x1 = _bf16_pair(p01)
    x2, x3 = _bf16_pair(p23)
    x4, x5 = _bf16_pair(p45)
    x6, x7 = _bf16_pair(p67)
    largest = gl.maximum(
        gl.maximum(gl.maximum(gl.abs(x0), gl.abs(x1)), gl.maximum(gl.abs(x2), gl.abs(x3))),
        gl.maximum(gl.maximum(gl.abs(x4), gl.abs(x5)), gl.maximum(gl.abs(x6), gl.abs(x7))),
    )
    exponent = gl.max(largest, axis=1).to(gl.int32, bitcast=True) >> 23
    exponent = gl.minimum(gl.maximum(exponent, 5), 253)  # below 5: zeros and the smallest; 255: inf and NaN
    scale = ((259 - exponent) << 23).to(gl.float32, bitcast=True)[:, None]  # 2^(132 - e): |x · scale| < 64
    factor = ((exponent + 1) << 23).to(gl.float32, bitcast=True)  # 2^(e - 126): 2^6 (the decoding) / scale
    factor = gl.convert_layout(factor, gl.SliceLayout(0, gl.SliceLayout(2, WORDS)), assert_trivial=True)
    x02 = _f16x2(x0 * scale, x2 * scale)
    x46 = _f16x2(x4 * scale, x6 * scale)
    x13 = _f16x2(x1 * scale, x3 * scale)
    x57 = _f16x2(x5 * scale, x7 * scale)
    return x02, x46, x13, x57, factor


@gluon.jit
def _word_sums(words, x02, x46, x13, x57):
    """Σ code · activation over each int32 word's eight e2m1 codes, times 2^-6 (float32, same shape as
    `words`): the even and the odd codes of the word's bytes become e4m3 bytes (the code's bits placed in
    the e4m3 fields: the value times 2^-6, exactly), converted two at a time to float16 pairs, multiplied
    with the activations' pairs and summed in float16."""
    return gl.inline_asm_elementwise(
        """{
        .reg .b32 t0, t1, t2, t3, ev, od, a, b, c, d, acc;
        .reg .b16 el, eh, ol, oh, h0, h1;
        .reg .f32 f0, f1;
        shl.b32 t0, $1, 2;
        shl.b32 t1, $1, 4;
        and.b32 t0, t0, 0x1C1C1C1C;
        and.b32 t1, t1, 0x80808080;
        or.b32 ev, t0, t1;
        shr.b32 t2, $1, 2;
        and.b32 t2, t2, 0x1C1C1C1C;
        and.b32 t3, $1, 0x80808080;
        or.b32 od, t2, t3;
        mov.b32 {el, eh}, ev;
        mov.b32 {ol, oh}, od;
        cvt.rn.f16x2.e4m3x2 a, el;
        cvt.rn.f16x2.e4m3x2 b, eh;
        cvt.rn.f16x2.e4m3x2 c, ol;
        cvt.rn.f16x2.e4m3x2 d, oh;
        mul.rn.f16x2 acc, a, $2;
        fma.rn.f16x2 acc, b, $3, acc;
        fma.rn.f16x2 acc, c, $4, acc;
        fma.rn.f16x2 acc, d, $5, acc;
        mov.b32 {h0, h1}, acc;
        cvt.f32.f16 f0, h0;
        cvt.f32.f16 f1, h1;
        add.f32 $0, f0, f1;
        }""",
        "=r,r,r,r,r,r",
        [words, x02[None, :, :], x46[None, :, :], x13[None, :, :], x57[None, :, :]],
        dtype=gl.float32,
        is_pure=True,
        pack=1,
    )


@gluon.jit
def _load_step(W, S, w_offsets, s_offsets, w_ok, s_ok, EVEN: gl.constexpr):
    """One step's words `[rows, groups, 4]` and scale bytes `[rows, groups]` (masked unless EVEN)."""
    if EVEN:
        return gl.load(W + w_offsets), gl.load(S + s_offsets)
    return gl.load(W + w_offsets, mask=w_ok, other=0), gl.load(S + s_offsets, mask=s_ok, other=127)


@gluon.jit
def _group_dots(words, scales, x02, x46, x13, x57, factor):
    """Each row's and group's Σ weight · activation (float32 `[rows, groups]`)."""
    sums = gl.sum(_word_sums(words, x02, x46, x13, x57), axis=2)
    return sums * (_e8m0(scales) * factor[None, :])


@gluon.jit
def _step_offsets(
    row0, stride_wn, stride_sn, N: gl.constexpr, ROWS: gl.constexpr, GROUPS: gl.constexpr, WORDS: gl.constexpr
):
    """Offsets of the first step's words and scale bytes of rows `row0 ...` of an expert's matrix, and the
    rows' masks."""
    rows = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, gl.SliceLayout(2, WORDS)))
    groups = gl.arange(0, GROUPS, layout=gl.SliceLayout(0, gl.SliceLayout(2, WORDS)))
    words = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, WORDS)))
    w_offsets = (rows.to(gl.int64) * stride_wn)[:, None, None] + (groups * 4)[None, :, None]
    w_offsets = w_offsets + words[None, None, :]
    s_offsets = (rows.to(gl.int64) * stride_sn)[:, None] + groups[None, :]
    return w_offsets, s_offsets, rows < N


@gluon.jit
def _step_masks(rows_ok, step, K: gl.constexpr, GROUPS: gl.constexpr, WORDS: gl.constexpr):
    """The masks of a step's words and scale bytes: the rows inside the matrix, the groups inside K."""
    groups = step * GROUPS + gl.arange(0, GROUPS, layout=gl.SliceLayout(0, gl.SliceLayout(2, WORDS)))
    s_ok = rows_ok[:, None] & (groups < K // SCALE_COLUMNS)[None, :]
    return s_ok[:, :, None], s_ok


@gluon.jit
def _next_step(
    W,
    S,
    w_offsets,
    s_offsets,
    rows_ok,
    words,
    scales,
    step,
    K: gl.constexpr,
    GROUPS: gl.constexpr,
    WORDS: gl.constexpr,
    EVEN: gl.constexpr,
):
    """The words and scale bytes of the step after `step` (`words`, `scales` as they are after the last)."""
    STEP: gl.constexpr = GROUPS * SCALE_COLUMNS
    if (step + 1) * STEP < K:
        w_ok, s_ok = _step_masks(rows_ok, step + 1, K, GROUPS, WORDS)
        w_next, s_next = w_offsets + (step + 1) * (STEP // 8), s_offsets + (step + 1) * GROUPS
        words, scales = _load_step(W, S, w_next, s_next, w_ok, s_ok, EVEN)
    return words, scales


@gluon.jit
def _gate_up_step(
    x_row,
    w1,
    w3,
    s1,
    s3,
    w_offsets,
    s_offsets,
    rows_ok,
    gate_words,
    gate_scales,
    up_words,
    up_scales,
    gate,
    up,
    step,
    K: gl.constexpr,
    GROUPS: gl.constexpr,
    WORDS: gl.constexpr,
    EVEN: gl.constexpr,
):
    """One step of the gate-up reduction: the next step's weights loaded, this step's summed."""
    x02, x46, x13, x57, factor = _scaled_columns(x_row, step * GROUPS * SCALE_COLUMNS, K, GROUPS, WORDS)
    this_gate, this_gate_scales, this_up, this_up_scales = gate_words, gate_scales, up_words, up_scales
    gate_words, gate_scales = _next_step(
        w1, s1, w_offsets, s_offsets, rows_ok, gate_words, gate_scales, step, K, GROUPS, WORDS, EVEN
    )
    up_words, up_scales = _next_step(
        w3, s3, w_offsets, s_offsets, rows_ok, up_words, up_scales, step, K, GROUPS, WORDS, EVEN
    )
    gate += _group_dots(this_gate, this_gate_scales, x02, x46, x13, x57, factor)
    up += _group_dots(this_up, this_up_scales, x02, x46, x13, x57, factor)
    return gate_words, gate_scales, up_words, up_scales, gate, up


@gluon.jit
def _down_step(
    h_row,
    w2,
    s2,
    w_offsets,
    s_offsets,
    rows_ok,
    words,
    scales,
    acc,
    step,
    K: gl.constexpr,
    GROUPS: gl.constexpr,
    WORDS: gl.constexpr,
    EVEN: gl.constexpr,
):
    """One step of the down reduction: the next step's weights loaded, this step's summed."""
    x02, x46, x13, x57, factor = _scaled_columns(h_row, step * GROUPS * SCALE_COLUMNS, K, GROUPS, WORDS)
    this_words, this_scales = words, scales
    words, scales = _next_step(
        w2, s2, w_offsets, s_offsets, rows_ok, words, scales, step, K, GROUPS, WORDS, EVEN
    )
    acc += _group_dots(this_words, this_scales, x02, x46, x13, x57, factor)
    return words, scales, acc


@gluon.jit
def _gate_up_kernel(
    X, W1, W3, S1, S3, H, IDS, first_expert, n_experts, top_k, limit,
    stride_x, stride_we, stride_wn, stride_se, stride_sn, stride_h,
    HIDDEN: gl.constexpr, INTER: gl.constexpr, ROWS: gl.constexpr, GROUPS: gl.constexpr, CLAMP: gl.constexpr,
    PDL: gl.constexpr,
):  # fmt: skip
    _enter_pdl(PDL)
    STEPS: gl.constexpr = (HIDDEN + GROUPS * SCALE_COLUMNS - 1) // (GROUPS * SCALE_COLUMNS)
    EVEN: gl.constexpr = (HIDDEN % (GROUPS * SCALE_COLUMNS) == 0) and (INTER % ROWS == 0)
    WORDS: gl.constexpr = _words_layout(ROWS, GROUPS, gl.num_warps())
    pair = gl.program_id(0)
    expert = gl.load(IDS + pair).to(gl.int64) - first_expert
    if (expert < 0) | (expert >= n_experts):
        return
    row0 = gl.program_id(1) * ROWS
    w_offsets, s_offsets, rows_ok = _step_offsets(row0, stride_wn, stride_sn, INTER, ROWS, GROUPS, WORDS)
    x_row = X + (pair // top_k).to(gl.int64) * stride_x
    w1, w3 = W1 + expert * stride_we, W3 + expert * stride_we
    s1, s3 = S1 + expert * stride_se, S3 + expert * stride_se
    gate = gl.zeros([ROWS, GROUPS], gl.float32, gl.SliceLayout(2, WORDS))
    up = gl.zeros([ROWS, GROUPS], gl.float32, gl.SliceLayout(2, WORDS))
    w_ok, s_ok = _step_masks(rows_ok, 0, HIDDEN, GROUPS, WORDS)
    gate_words, gate_scales = _load_step(w1, s1, w_offsets, s_offsets, w_ok, s_ok, EVEN)
    up_words, up_scales = _load_step(w3, s3, w_offsets, s_offsets, w_ok, s_ok, EVEN)
    for step in gl.static_range(STEPS):  # unrolled: ptxas issues the loads of later steps early
        gate_words, gate_scales, up_words, up_scales, gate, up = _gate_up_step(
            x_row, w1, w3, s1, s3, w_offsets, s_offsets, rows_ok, gate_words, gate_scales, up_words,
            up_scales, gate, up, step, HIDDEN, GROUPS, WORDS, EVEN,
        )  # fmt: skip
    gate_rows, up_rows = gl.sum(gate, axis=1), gl.sum(up, axis=1)
    if CLAMP:
        gate_rows = gl.minimum(gate_rows, limit)
        up_rows = gl.minimum(gl.maximum(up_rows, -limit), limit)
    h = gate_rows / (1.0 + gl.exp(-gate_rows)) * up_rows
    rows = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, gl.SliceLayout(2, WORDS)))
    gl.store(H + pair.to(gl.int64) * stride_h + rows, h.to(H.dtype.element_ty), mask=rows < INTER)


@gluon.jit
def _down_kernel(
    H, W2, S2, OUT, IDS, ROUTE, first_expert, n_experts,
    stride_h, stride_we, stride_wn, stride_se, stride_sn, stride_out,
    HIDDEN: gl.constexpr, INTER: gl.constexpr, ROWS: gl.constexpr, GROUPS: gl.constexpr, PDL: gl.constexpr,
):  # fmt: skip
    _enter_pdl(PDL)
    STEPS: gl.constexpr = (INTER + GROUPS * SCALE_COLUMNS - 1) // (GROUPS * SCALE_COLUMNS)
    EVEN: gl.constexpr = (INTER % (GROUPS * SCALE_COLUMNS) == 0) and (HIDDEN % ROWS == 0)
    WORDS: gl.constexpr = _words_layout(ROWS, GROUPS, gl.num_warps())
    pair = gl.program_id(0)
    expert = gl.load(IDS + pair).to(gl.int64) - first_expert
    held = (expert >= 0) & (expert < n_experts)
    row0 = gl.program_id(1) * ROWS
    acc = gl.zeros([ROWS, GROUPS], gl.float32, gl.SliceLayout(2, WORDS))
    if held:
        w_offsets, s_offsets, rows_ok = _step_offsets(row0, stride_wn, stride_sn, HIDDEN, ROWS, GROUPS, WORDS)
        h_row = H + pair.to(gl.int64) * stride_h
        w2, s2 = W2 + expert * stride_we, S2 + expert * stride_se
        w_ok, s_ok = _step_masks(rows_ok, 0, INTER, GROUPS, WORDS)
        words, scales = _load_step(w2, s2, w_offsets, s_offsets, w_ok, s_ok, EVEN)
        for step in gl.static_range(STEPS):
            words, scales, acc = _down_step(
                h_row, w2, s2, w_offsets, s_offsets, rows_ok, words, scales, acc, step, INTER, GROUPS, WORDS,
                EVEN,
            )  # fmt: skip
    route = gl.where(held, gl.load(ROUTE + pair), 0.0)
    out = gl.sum(acc, axis=1) * route
    rows = row0 + gl.arange(0, ROWS, layout=gl.SliceLayout(1, gl.SliceLayout(2, WORDS)))
    gl.store(OUT + pair.to(gl.int64) * stride_out + rows, out.to(OUT.dtype.element_ty), mask=rows < HIDDEN)


def gluon_runs_on(x: torch.Tensor) -> bool:
    """Whether the Gluon kernels take activations `x`: bfloat16 on a CUDA device of compute capability 9
    or later (`cvt.*.e4m3x2`, PDL), outside Triton's interpreter."""
    if x.dtype != torch.bfloat16 or x.device.type != "cuda" or triton.knobs.runtime.interpret:
        return False
    return torch.cuda.get_device_capability(x.device)[0] >= 9


def _plan(rows: int, k: int, num_warps: int) -> tuple[int, int]:
    """A launch's output rows a program and scale groups a step for a reduction of `k` columns: a lane a
    group (fewer than 32 groups for short reductions, the other lanes on rows); `rows` at least one a
    thread."""
    groups = min(32, triton.next_power_of_2(triton.cdiv(k, SCALE_COLUMNS)))
    return max(rows, 32 // groups * num_warps), groups


def grouped_moe_mxfp4_gemv_gluon(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    stacks: Mxfp4ExpertStacks,
    swiglu_limit: float,
    *,
    tiles: GluonGemvTiles | None = None,
    experts: ExpertSlice | None = None,
    add: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`grouped_moe_mxfp4_gemv` on a CUDA device with bfloat16 activations, in the Gluon kernels above."""
    tiles = tiles or GluonGemvTiles()
    if not gluon_runs_on(x):
        raise ValueError(
            f"the Gluon kernels take bfloat16 activations on sm_90+, got {x.dtype} on {x.device}"
        )
    n_tokens, hidden = x.shape
    top_k = indices.shape[1]
    n_pairs = n_tokens * top_k
    x = x.contiguous()
    run = pair_launch(x, weights, indices, stacks, experts, x.dtype)
    if n_pairs == 0:
        return sum_pairs(run.pair_out, x, add=add, out_dtype=out_dtype)
    inter, h, pair_out = run.h.shape[1], run.h, run.pair_out
    gate_up_rows, gate_up_groups = _plan(tiles.gate_up_rows, hidden, tiles.num_warps)
    down_rows, down_groups = _plan(tiles.down_rows, inter, tiles.num_warps)
    pdl = pdl_launch(x.device)
    _gate_up_kernel[(n_pairs, triton.cdiv(inter, gate_up_rows))](
        x.view(torch.int32), run.w1, run.w3, run.s1, run.s3, h, run.ids, run.first, run.n_experts, top_k,
        float(swiglu_limit), x.stride(0) // 2, run.w1.stride(0), run.w1.stride(1), run.s1.stride(0),
        run.s1.stride(1), h.stride(0),
        HIDDEN=hidden, INTER=inter, ROWS=gate_up_rows, GROUPS=gate_up_groups, CLAMP=swiglu_limit > 0,
        num_warps=tiles.num_warps, **pdl,
    )  # fmt: skip
    _down_kernel[(n_pairs, triton.cdiv(hidden, down_rows))](
        h.view(torch.int32), run.w2, run.s2, pair_out, run.ids, run.route, run.first, run.n_experts,
        h.stride(0) // 2, run.w2.stride(0), run.w2.stride(1), run.s2.stride(0), run.s2.stride(1),
        pair_out.stride(0),
        HIDDEN=hidden, INTER=inter, ROWS=down_rows, GROUPS=down_groups, num_warps=tiles.num_warps, **pdl,
    )  # fmt: skip
    return sum_pairs(pair_out, x, add=add, out_dtype=out_dtype)
