"""The Triton path of `row_max_logsumexp` (contract in `row_max.py`): a row's columns split over programs.

Launch 1, a program per (row, `CHUNK` columns): walks its columns `BLOCK` at a time keeping the running
maximum, the first index where it occurs and the sum of `exp(x - max)` rescaled as the maximum grows (the
online softmax), and writes the three. Launch 2, a program per row: the maximum of the chunks' maxima, the
index of the first chunk holding it (that chunk's first index is the row's: earlier chunks hold smaller
indices), and `max + log(Σ sum_c · exp(max_c - max))`. A chunk or row that is all `-inf` sums to 0 (its
log-sum-exp is `-inf`, as `logsumexp`'s).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

CHUNK = 4096
"""Columns per program of launch 1 (V4's vocabulary: 32 programs a row)."""
_BLOCK = 1024


@triton.jit
def _rescaled(total, old_max, new_max):
    """`total` (a sum of exp(x - old_max)) as a sum of exp(x - new_max); 0 while both are -inf."""
    return tl.where(new_max == float("-inf"), 0.0, total * tl.exp(old_max - new_max))


@triton.jit
def _chunk_kernel(X, MAX, ARG, SUM, n_cols, stride_x, n_chunks, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
                  PDL: tl.constexpr):  # fmt: skip
    enter_pdl(PDL)
    row, chunk = tl.program_id(0), tl.program_id(1)
    best = tl.full((), float("-inf"), tl.float32)
    where = tl.full((), 0, tl.int64)
    total = tl.zeros((), tl.float32)
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(X + row.to(tl.int64) * stride_x + cols, mask=cols < n_cols, other=float("-inf"))
        block_max = tl.max(x, axis=0)
        block_arg = start + tl.argmax(x, axis=0, tie_break_left=True)
        new_max = tl.maximum(best, block_max)
        terms = tl.where(x == float("-inf"), 0.0, tl.exp(x - new_max))
        total = _rescaled(total, best, new_max) + tl.sum(terms, axis=0)
        where = tl.where(block_max > best, block_arg.to(tl.int64), where)
        best = new_max
    at = row * n_chunks + chunk
    tl.store(MAX + at, best)
    tl.store(ARG + at, where)
    tl.store(SUM + at, total)


@triton.jit
def _combine_kernel(MAX, ARG, SUM, IDS, LSE, n_chunks, CHUNKS: tl.constexpr, PDL: tl.constexpr):
    enter_pdl(PDL)
    row = tl.program_id(0)
    chunks = tl.arange(0, CHUNKS)
    ok = chunks < n_chunks
    maxima = tl.load(MAX + row * n_chunks + chunks, mask=ok, other=float("-inf"))
    sums = tl.load(SUM + row * n_chunks + chunks, mask=ok, other=0.0)
    best = tl.max(maxima, axis=0)
    first = tl.argmax(maxima, axis=0, tie_break_left=True)
    total = tl.sum(_rescaled(sums, maxima, best), axis=0)
    tl.store(IDS + row, tl.load(ARG + row * n_chunks + first))
    tl.store(LSE + row, best + tl.log(total))


def row_max_logsumexp_triton(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    n_chunks = triton.cdiv(cols, CHUNK)
    maxima = torch.empty(rows, n_chunks, dtype=torch.float32, device=logits.device)
    sums = torch.empty_like(maxima)
    args = torch.empty(rows, n_chunks, dtype=torch.int64, device=logits.device)
    ids = torch.empty(rows, dtype=torch.int64, device=logits.device)
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return ids, lse
    pdl = pdl_launch(logits.device)
    _chunk_kernel[(rows, n_chunks)](
        logits, maxima, args, sums, cols, logits.stride(0), n_chunks, CHUNK=CHUNK, BLOCK=_BLOCK, **pdl
    )
    chunks = triton.next_power_of_2(n_chunks)
    _combine_kernel[(rows,)](maxima, args, sums, ids, lse, n_chunks, CHUNKS=chunks, **pdl)
    return ids, lse
