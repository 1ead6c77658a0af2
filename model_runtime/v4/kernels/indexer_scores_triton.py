"""The Triton kernel behind `indexer_scores(..., impl="triton")` (contract in `indexer_scores.py`).

Grid: (key tile, query tile, row). A program takes `BM` consecutive queries of one row and `BT` logical key
slots of that row: it resolves the slots through the block table, loads the keys once as stored (plain,
FP8 e4m3 or MXFP4, decoded in registers: exact in bfloat16) and loops over the heads, `HB` at a time: one
`tl.dot` of `[BM*HB, dim] x [dim, BT]` (query-head pairs as rows), ReLU, times the head weight, summed
into a `[BM, BT]` float32 accumulator, so `[M, heads, T]` never exists. Prefill tiles put 64 queries on
the rows (HB = 1); decode tiles one query's 64 heads (BM = 1). Tiles wholly past their queries' limits
skip the arithmetic and only write -inf. Every size comes from host integers (M, the block table's
width, `max_queries`): no host sync. On the CPU (Triton's interpreter) and for float32 inputs the dot
runs in float32; otherwise in bfloat16 with float32 accumulation: every stored key decodes exactly to
bfloat16, so the products equal the reference's and only the summation order differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.paged_keys import (
    IndexerInputError,
    PagedKeys,
    PagedRows,
    key_capacity,
)
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

_FORMAT_CODE = {"plain": 0, "fp8": 1, "mxfp4": 2}
_DOT_ROWS = 64  # query-head pairs per tl.dot (>= 16, the MMA minimum)


@dataclass(frozen=True)
class IndexerTiles:
    """Kernel tile sizes: queries per program, heads per dot, key slots per program, and launch knobs."""

    block_m: int
    heads_per_dot: int
    block_t: int
    num_warps: int = 4
    num_stages: int = 2


def default_tiles(max_queries: int, n_heads: int) -> IndexerTiles:
    """Up to 64 queries per program; the rest of the dot's 64 rows filled with heads (decode: all heads)."""
    block_m = min(triton.next_power_of_2(max(max_queries, 1)), _DOT_ROWS)
    heads = max(min(triton.next_power_of_2(n_heads), _DOT_ROWS // block_m), triton.cdiv(16, block_m))
    return IndexerTiles(block_m, heads, block_t=128, num_warps=8 if block_m >= 32 else 4)


@triton.jit
def _load_keys(keys_ptr, scale_ptr, key_off, scale_off, d, load_mask, FORMAT: tl.constexpr):
    """Keys `[BT, BD]` as float32 from their stored bytes (masked slots read as 0)."""
    if FORMAT == 2:
        byte = tl.load(keys_ptr + key_off[:, None] + (d // 2)[None, :], mask=load_mask, other=0).to(tl.int32)
        code = (byte >> ((d % 2) * 4)[None, :]) & 0xF
        exponent = (code >> 1) & 3
        mantissa = code & 1
        normal = (((exponent + 126) << 23) | (mantissa << 22)).to(tl.float32, bitcast=True)
        value = tl.where(exponent == 0, mantissa.to(tl.float32) * 0.5, normal)
        value = tl.where(code >= 8, -value, value)
        scale = tl.load(scale_ptr + scale_off[:, None] + (d // 32)[None, :], mask=load_mask, other=127)
        scale = scale.to(tl.int32)
        # 2^(byte - 127): the exponent field, or the one subnormal (byte 0 = 2^-127)
        multiplier = tl.where(scale == 0, 0x00400000, scale << 23).to(tl.float32, bitcast=True)
        return value * multiplier
    else:
        return tl.load(keys_ptr + key_off[:, None] + d[None, :], mask=load_mask, other=0.0).to(tl.float32)


@triton.jit
def _indexer_scores_kernel(
    Q,
    stride_qm,
    stride_qh,
    W,
    stride_wm,
    KEYS,
    stride_kb,
    stride_kt,
    SCALE,
    stride_sb,
    stride_st,
    TABLE,
    stride_table,
    STARTS,
    LIMIT,
    OUT,
    stride_om,
    dim,
    per_block,
    t_cap,
    score_scale,
    N_HEADS: tl.constexpr,
    FORMAT: tl.constexpr,
    BM: tl.constexpr,
    HB: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    DOT_F32: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    t_tile = tl.program_id(0)
    q_tile = tl.program_id(1)
    row = tl.program_id(2)
    q_end = tl.load(STARTS + row + 1)
    first = tl.load(STARTS + row) + q_tile * BM
    if first < q_end:
        queries = first + tl.arange(0, BM)
        q_ok = queries < q_end
        lim = tl.load(LIMIT + queries, mask=q_ok, other=0)
        t = t_tile * BT + tl.arange(0, BT)
        acc = tl.zeros([BM, BT], dtype=tl.float32)
        if t_tile * BT < tl.max(lim):
            d = tl.arange(0, BD)
            d_ok = d < dim
            key_ok = (t < tl.max(lim)) & (t < t_cap)
            block = tl.load(TABLE + row * stride_table + t // per_block, mask=key_ok, other=0).to(tl.int64)
            slot = (t % per_block).to(tl.int64)
            key_off = block * stride_kb + slot * stride_kt
            scale_off = block * stride_sb + slot * stride_st
            keys = _load_keys(KEYS, SCALE, key_off, scale_off, d, key_ok[:, None] & d_ok[None, :], FORMAT)
            keys_t = tl.trans(keys) if DOT_F32 else tl.trans(keys.to(tl.bfloat16))
            pair = tl.arange(0, BM * HB)
            pair_query = (first + pair // HB).to(tl.int64)
            pair_ok = (pair // HB) < (q_end - first)
            for h0 in range(0, N_HEADS, HB):
                head = h0 + pair % HB
                ok = pair_ok & (head < N_HEADS)
                a = tl.load(
                    Q + pair_query[:, None] * stride_qm + head[:, None] * stride_qh + d[None, :],
                    mask=ok[:, None] & d_ok[None, :],
                    other=0.0,
                )
                w = tl.load(W + pair_query * stride_wm + head, mask=ok, other=0.0)
                w = w.to(tl.float32) * score_scale
                if DOT_F32:
                    logits = tl.dot(a.to(tl.float32), keys_t, input_precision="ieee")
                else:
                    logits = tl.dot(a.to(tl.bfloat16), keys_t)
                weighted = tl.maximum(logits, 0.0) * w[:, None]
                if HB == 1:
                    acc += weighted
                elif BM == 1:
                    acc += tl.sum(weighted, axis=0)[None, :]
                else:
                    acc += tl.sum(tl.reshape(weighted, [BM, HB, BT]), axis=1)
        scores = tl.where(t[None, :] < lim[:, None], acc, float("-inf"))
        out = OUT + queries.to(tl.int64)[:, None] * stride_om + t[None, :]
        tl.store(out, scores, mask=q_ok[:, None] & (t < t_cap)[None, :])


def indexer_scores_triton(
    q: torch.Tensor,
    weights: torch.Tensor,
    keys: PagedKeys,
    rows: PagedRows,
    limit: torch.Tensor,
    score_scale: float,
    tiles: IndexerTiles | None = None,
) -> torch.Tensor:
    """Scores `[M, T_cap]` float32 (inputs already checked by `indexer_scores`, which gives the head
    weights' factor `score_scale`)."""
    n_queries, n_heads, dim = q.shape
    t_cap = key_capacity(keys, rows)
    out = torch.empty(n_queries, t_cap, dtype=torch.float32, device=q.device)
    if n_queries == 0 or t_cap == 0:
        return out
    if q.dtype not in (torch.bfloat16, torch.float32):
        raise IndexerInputError(f"indexer queries must be bfloat16 or float32, got {q.dtype}")
    if keys.data.stride(-1) != 1 or (keys.scale is not None and keys.scale.stride(-1) != 1):
        raise IndexerInputError("paged keys must be contiguous along their last dimension")
    tiles = tiles or default_tiles(rows.max_queries, n_heads)
    q = q if q.stride(-1) == 1 else q.contiguous()
    weights = weights.contiguous()
    scale = keys.scale if keys.scale is not None else keys.data
    table = rows.block_table.to(torch.int32)
    dot_f32 = q.device.type == "cpu" or q.dtype == torch.float32 or keys.data.dtype == torch.float32
    grid = (
        triton.cdiv(t_cap, tiles.block_t),
        triton.cdiv(max(rows.max_queries, 1), tiles.block_m),
        rows.num_rows,
    )
    _indexer_scores_kernel[grid](
        q,
        q.stride(0),
        q.stride(1),
        weights,
        weights.stride(0),
        keys.data,
        keys.data.stride(0),
        keys.data.stride(1),
        scale,
        scale.stride(0),
        scale.stride(1),
        table,
        table.stride(0),
        rows.query_starts.to(torch.int32),
        limit.to(torch.int32),
        out,
        out.stride(0),
        dim,
        keys.per_block,
        t_cap,
        score_scale,
        N_HEADS=n_heads,
        FORMAT=_FORMAT_CODE[keys.format],
        BM=tiles.block_m,
        HB=tiles.heads_per_dot,
        BT=tiles.block_t,
        BD=max(triton.next_power_of_2(dim), 16),
        DOT_F32=dot_f32,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **pdl_launch(q.device),
    )
    return out
