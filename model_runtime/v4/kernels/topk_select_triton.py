"""The Triton kernels behind `masked_topk(..., impl="triton")` (contract and tie rule in `topk_select.py`).

Each score becomes an order-preserving uint32 key (sign bit flipped on positives, all bits on negatives;
-0.0 folded into 0.0, every NaN the largest key). The k-th largest key of a row's first `L = min(limit, N)`
entries is found by four 8-bit radix passes, most significant digit first: a 256-bin histogram of the
digit among the keys that match the digits chosen so far, then the digit holding the k-th key (`need`
counts down by the keys in higher bins). After the last pass the threshold key `T` is exact and `rem`
says how many keys equal to `T` to take. One compaction pass writes, per tile, the keys above `T` and
the first `rem` keys equal to it (lowest index first) to their slots from one prefix scan: those above
`T` fill slots `[0, need - rem)`, the ties the rest. A row with `L < k` selects all `L` entries and fills
the remaining slots with the indices `L, L+1, ...` (past the limit: invalid).

Three layouts, chosen on host-known sizes only (no host sync, fixed launches, CUDA-graph safe):

* rank (rows x N^2 <= `TopkTiles.rank_max_pairs`: one sequence's decode at up to 16K tokens of context
  at ratio 4): no radix passes. The row is cut into blocks of `rank_rows` entries, one program each; a
  program counts, for each of its entries, the visible keys that beat it (a larger key, or an equal key
  at a lower index: the tie rule as one order, one 64-bit comparison a pair), and an entry whose count
  is below `need` takes that count as its slot. The work is quadratic in the row but spread over the
  device, against the resident layout's four dependent passes in one program; one launch. (Measured on
  an H200, `benchmarks/topk_kernel.py`: one row of 2,048 scores 3.9 µs against the resident layout's
  9.0, of 4,096 7.6 against 14.6; past the bound it loses: one row of 8,192 28.1 against 23.7, 8 rows of
  2,048 10.8 against 9.0.)
* resident (N <= `TopkTiles.resident_max`, decode up to 32K tokens of context at ratio 4): one program per
  row holds the row's keys in registers, runs the four passes and the compaction: one launch.
* split (longer rows): each row is cut into chunks of whole tiles so that rows x chunks reach about
  `target_programs` programs (decode: a few rows spread over the device; prefill: one chunk per row).
  One launch per radix pass (each program recomputes the chosen digits from the row's global histogram
  of the earlier passes and adds its chunk's histogram atomically); the last pass also stores, per chunk
  and candidate last digit, how many of its keys lie above and at that key, from which the compaction
  launch places each chunk's output after the earlier chunks' (deterministic, like the resident path).
  Six launches (a zeroed histogram, four passes, the compaction); each pass reads the row once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.paged_keys import IndexerInputError
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

_BINS = 256
_PASSES = 4


@dataclass(frozen=True)
class TopkTiles:
    """Layout knobs: the most comparisons (rows x N^2) the rank layout takes (0: never), its entries a program
    and keys a step (powers of two); the longest row held in registers, the split path's tile (a power of
    two) and program target, and its warps (the resident path takes one warp per 256 scores, 4 to 16).
    Tiles and resident rows stay below 65,536 scores: the compaction packs two counts per score into one
    int32 scan."""

    rank_max_pairs: int = 1 << 24
    rank_rows: int = 16
    rank_block: int = 256
    resident_max: int = 8192
    block: int = 2048
    target_programs: int = 512
    num_warps: int = 8


@triton.jit
def _order_keys(x):
    """uint32 keys in the float order of `x` (-0.0 as 0.0; NaN above +inf)."""
    bits = tl.where(x == 0.0, 0.0, x).to(tl.uint32, bitcast=True)
    key = tl.where((bits >> 31) == 1, bits ^ 0xFFFFFFFF, bits | 0x80000000)
    return tl.where(x != x, 0xFFFFFFFF, key)


@triton.jit
def _digit_histogram(key, candidate, SHIFT: tl.constexpr):
    """Histogram `[256]` of the digit at `SHIFT` over the `candidate` keys."""
    digit = ((key >> SHIFT) & 0xFF).to(tl.int32)
    return tl.histogram(digit, 256, mask=candidate)


@triton.jit
def _choose_digit(hist, prefix, high, rem, SHIFT: tl.constexpr):
    """Extend (`prefix`, its bit mask `high`) by the digit at `SHIFT` holding the `rem`-th largest candidate
    key, and count `rem` down by the candidates in higher bins. `rem == 0` (an empty row) stays 0."""
    above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0)  # candidates in higher bins, per bin
    digit = tl.minimum(tl.sum((above >= rem).to(tl.int32), axis=0), 255)
    rem -= tl.sum(tl.where(tl.arange(0, 256) == digit, above, 0), axis=0)
    prefix = prefix | (digit.to(tl.uint32) << SHIFT)
    high = high | (tl.full([], 255, tl.uint32) << SHIFT)
    return prefix, high, rem


@triton.jit
def _resolve(hist_row, need, PASSES: tl.constexpr):
    """The prefix, mask and remaining count after the first `PASSES` passes' global histograms."""
    prefix = tl.full([], 0, tl.uint32)
    high = tl.full([], 0, tl.uint32)
    rem = need
    for p in tl.static_range(PASSES):
        hist = tl.load(hist_row + p * 256 + tl.arange(0, 256))
        prefix, high, rem = _choose_digit(hist, prefix, high, rem, 24 - 8 * p)
    return prefix, high, rem


@triton.jit
def _write_selected(key, t, visible, threshold, rem, above_base, tie_base, n_above, out_row, valid_row, lim):
    """Write the tile's keys above `threshold` to slots `above_base...` and its ties whose row rank (from
    `tie_base`) is below `rem` to slots `n_above + rank`; returns both running counts."""
    above = visible & (key > threshold)
    tie = visible & (key == threshold)
    ranks = tl.cumsum(above.to(tl.int32) + tie.to(tl.int32) * 65536, axis=0)  # tiles < 2^16: one scan
    tie_rank = tie_base + (ranks >> 16) - 1
    take = above | (tie & (tie_rank < rem))
    slot = tl.where(above, above_base + (ranks & 0xFFFF) - 1, n_above + tie_rank)
    tl.store(out_row + slot, t.to(tl.int64), mask=take)
    tl.store(valid_row + slot, (t < lim).to(tl.uint8), mask=take)
    return above_base + tl.sum(above.to(tl.int32), axis=0), tie_base + tl.sum(tie.to(tl.int32), axis=0)


@triton.jit
def _fill_past_limit(out_row, valid_row, need, k_out, lim, BLOCK: tl.constexpr):
    """Slots `[need, k_out)` of a row short of `k_out` visible entries: indices `need...` (past the limit)."""
    for j0 in range(need, k_out, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        room = j < k_out
        tl.store(out_row + j, j.to(tl.int64), mask=room)
        tl.store(valid_row + j, (j < lim).to(tl.uint8), mask=room)


@triton.jit
def _row_start(SCORES, stride_r, LIMIT, OUT, VALID, row, n, k_out):
    """The row's scores, output rows, raw limit, visible length `L` and selection size `min(k_out, L)`."""
    lim = tl.load(LIMIT + row).to(tl.int32)
    visible = tl.minimum(tl.maximum(lim, 0), n)
    scores_row = SCORES + row.to(tl.int64) * stride_r
    out_row = OUT + row.to(tl.int64) * k_out
    valid_row = VALID + row.to(tl.int64) * k_out
    return scores_row, out_row, valid_row, lim, visible, tl.minimum(k_out, visible)


@triton.jit
def _resident_kernel(SCORES, stride_r, LIMIT, OUT, VALID, n, k_out, BLOCK: tl.constexpr, PDL: tl.constexpr):
    enter_pdl(PDL)
    row = tl.program_id(0)
    scores_row, out_row, valid_row, lim, length, need = _row_start(
        SCORES, stride_r, LIMIT, OUT, VALID, row, n, k_out
    )
    t = tl.arange(0, BLOCK)
    visible = t < length
    key = _order_keys(tl.load(scores_row + t, mask=visible, other=0.0))
    prefix = tl.full([], 0, tl.uint32)
    high = tl.full([], 0, tl.uint32)
    rem = need
    for p in tl.static_range(4):
        hist = _digit_histogram(key, visible & ((key & high) == prefix), 24 - 8 * p)
        prefix, high, rem = _choose_digit(hist, prefix, high, rem, 24 - 8 * p)
    _write_selected(key, t, visible, prefix, rem, 0, 0, need - rem, out_row, valid_row, lim)
    _fill_past_limit(out_row, valid_row, need, k_out, lim, BLOCK)


@triton.jit
def _ranked_keys(x, t):
    """uint64 keys in the selection order of scores `x` at indices `t`: the order key above, the lower index
    first among equal keys (so no two entries of a row tie)."""
    return (_order_keys(x).to(tl.uint64) << 32) | (~t).to(tl.uint32, bitcast=True).to(tl.uint64)


@triton.jit
def _rank_kernel(
    SCORES, stride_r, LIMIT, OUT, VALID, n, k_out, ROWS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr
):  # fmt: skip
    enter_pdl(PDL)
    row = tl.program_id(0)
    scores_row, out_row, valid_row, lim, length, need = _row_start(
        SCORES, stride_r, LIMIT, OUT, VALID, row, n, k_out
    )
    t = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    mine = t < length
    own = _ranked_keys(tl.load(scores_row + t, mask=mine, other=0.0), t)
    beaten = tl.zeros([ROWS, BLOCK], dtype=tl.int32)  # per lane; summed once after the loop
    end = tl.where(tl.program_id(1) * ROWS < length, length, 0)  # blocks past the row skip the loop
    for j0 in range(0, end, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        other = _ranked_keys(tl.load(scores_row + j, mask=j < length, other=0.0), j)
        other = tl.where(j < length, other, 0)  # past the row: below every key, beats nothing
        beaten += (other[None, :] > own[:, None]).to(tl.int32)
    slot = tl.sum(beaten, axis=1)
    take = mine & (slot < need)
    tl.store(out_row + slot, t.to(tl.int64), mask=take)
    tl.store(valid_row + slot, (t < lim).to(tl.uint8), mask=take)
    if tl.program_id(1) == 0:
        _fill_past_limit(out_row, valid_row, need, k_out, lim, BLOCK)


@triton.jit
def _radix_pass_kernel(
    SCORES,
    stride_r,
    LIMIT,
    HIST,
    CHUNK_ABOVE,
    CHUNK_TIES,
    n,
    k_out,
    chunk,
    n_chunks,
    PASS: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    lim = tl.load(LIMIT + row).to(tl.int32)
    length = tl.minimum(tl.maximum(lim, 0), n)
    scores_row = SCORES + row.to(tl.int64) * stride_r
    hist_row = HIST + row * (4 * 256)
    prefix, high, _ = _resolve(hist_row, tl.minimum(k_out, length), PASS)
    start = c * chunk
    end = tl.minimum(start + chunk, length)
    hist = tl.zeros([256], dtype=tl.int32)
    above_prefix = 0
    for t0 in range(start, end, BLOCK):
        t = t0 + tl.arange(0, BLOCK)
        visible = t < end
        key = _order_keys(tl.load(scores_row + t, mask=visible, other=0.0))
        hist += _digit_histogram(key, visible & ((key & high) == prefix), 24 - 8 * PASS)
        if PASS == 3:
            above_prefix += tl.sum((visible & ((key & high) > prefix)).to(tl.int32), axis=0)
    bins = tl.arange(0, 256)
    tl.atomic_add(hist_row + PASS * 256 + bins, hist)
    if PASS == 3:
        per_digit = (row * n_chunks + c) * 256 + bins
        tl.store(CHUNK_ABOVE + per_digit, above_prefix + tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0))
        tl.store(CHUNK_TIES + per_digit, hist)


@triton.jit
def _split_write_kernel(
    SCORES,
    stride_r,
    LIMIT,
    HIST,
    CHUNK_ABOVE,
    CHUNK_TIES,
    OUT,
    VALID,
    n,
    k_out,
    chunk,
    n_chunks,
    CHUNKS: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    row = tl.program_id(0)
    c = tl.program_id(1)
    scores_row, out_row, valid_row, lim, length, need = _row_start(
        SCORES, stride_r, LIMIT, OUT, VALID, row, n, k_out
    )
    threshold, _, rem = _resolve(HIST + row * (4 * 256), need, 4)
    earlier = tl.arange(0, CHUNKS)
    per_digit = (row * n_chunks + earlier) * 256 + (threshold & 0xFF).to(tl.int32)
    above_base = tl.sum(tl.load(CHUNK_ABOVE + per_digit, mask=earlier < c, other=0), axis=0)
    tie_base = tl.sum(tl.load(CHUNK_TIES + per_digit, mask=earlier < c, other=0), axis=0)
    start = c * chunk
    end = tl.minimum(start + chunk, length)
    for t0 in range(start, end, BLOCK):
        t = t0 + tl.arange(0, BLOCK)
        visible = t < end
        key = _order_keys(tl.load(scores_row + t, mask=visible, other=0.0))
        above_base, tie_base = _write_selected(
            key, t, visible, threshold, rem, above_base, tie_base, need - rem, out_row, valid_row, lim
        )
    if c == 0:
        _fill_past_limit(out_row, valid_row, need, k_out, lim, BLOCK)


SPLIT_MAX_ROWS = 8
"""Rows longer than the register-resident layout take this kernel only up to this count (prefill's many
long rows are faster through torch.topk; see `topk_select.py`)."""


def prefers_triton(rows: int, n: int) -> bool:
    """Whether this kernel is the faster path for `rows` rows of `n` scores (the default tiles)."""
    return n <= TopkTiles().resident_max or rows <= SPLIT_MAX_ROWS


def choose_layout(tiles: TopkTiles, rows: int, n: int) -> Literal["rank", "resident", "split"]:
    """The layout `topk_select_triton` runs for `rows` rows of `n` scores (see the module docstring)."""
    if rows * n * n <= tiles.rank_max_pairs:
        return "rank"
    return "resident" if n <= tiles.resident_max else "split"


def split_chunks(tiles: TopkTiles, rows: int, n: int) -> tuple[int, int]:
    """The split layout's chunks per row and their length (whole tiles): about `target_programs` in all."""
    n_chunks = max(1, min(triton.cdiv(n, tiles.block), triton.cdiv(tiles.target_programs, rows)))
    chunk = triton.cdiv(triton.cdiv(n, n_chunks), tiles.block) * tiles.block
    return triton.cdiv(n, chunk), chunk


def topk_select_triton(
    scores: torch.Tensor, limit: torch.Tensor, k: int, tiles: TopkTiles | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices `[R, min(k, N)]` int64 and validity (inputs' shapes already checked by `masked_topk`)."""
    tiles = tiles or TopkTiles()
    rows, n = scores.shape
    k_out = min(k, n)
    indices = torch.empty(rows, k_out, dtype=torch.int64, device=scores.device)
    valid = torch.empty(rows, k_out, dtype=torch.bool, device=scores.device)
    if rows == 0 or k_out == 0:
        return indices, valid
    if scores.dtype != torch.float32:
        raise IndexerInputError(f"top-k scores must be float32, got {scores.dtype}")
    powers = (tiles.block, tiles.rank_rows, tiles.rank_block)
    if max(tiles.block, tiles.resident_max) >= 1 << 16 or any(v < 1 or v & (v - 1) for v in powers):
        raise IndexerInputError(f"top-k tiles must be powers of two below 65536 scores, got {tiles}")
    scores = scores if scores.stride(-1) == 1 else scores.contiguous()
    limit = limit.contiguous()
    flags = valid.view(torch.uint8)
    chosen = choose_layout(tiles, rows, n)
    if chosen == "rank":
        _rank_kernel[(rows, triton.cdiv(n, tiles.rank_rows))](
            scores, scores.stride(0), limit, indices, flags, n, k_out, ROWS=tiles.rank_rows,
            BLOCK=tiles.rank_block, num_warps=4, **pdl_launch(scores.device),
        )  # fmt: skip
        return indices, valid
    if chosen == "resident":
        block = max(triton.next_power_of_2(n), 128)
        _resident_kernel[(rows,)](
            scores, scores.stride(0), limit, indices, flags, n, k_out, BLOCK=block,
            num_warps=min(max(block // 256, 4), 16),
            **pdl_launch(scores.device),
        )  # fmt: skip
        return indices, valid
    block = tiles.block
    n_chunks, chunk = split_chunks(tiles, rows, n)
    hist = torch.zeros(rows, _PASSES, _BINS, dtype=torch.int32, device=scores.device)
    chunk_above = torch.empty(rows, n_chunks, _BINS, dtype=torch.int32, device=scores.device)
    chunk_ties = torch.empty_like(chunk_above)
    common = (scores, scores.stride(0), limit, hist, chunk_above, chunk_ties)
    for p in range(_PASSES):
        _radix_pass_kernel[(rows, n_chunks)](
            *common,
            n,
            k_out,
            chunk,
            n_chunks,
            PASS=p,
            BLOCK=block,
            num_warps=tiles.num_warps,
            **pdl_launch(scores.device),
        )
    _split_write_kernel[(rows, n_chunks)](
        *common, indices, flags, n, k_out, chunk, n_chunks,
        CHUNKS=max(triton.next_power_of_2(n_chunks), 2), BLOCK=block, num_warps=tiles.num_warps,
        **pdl_launch(scores.device),
    )  # fmt: skip
    return indices, valid
