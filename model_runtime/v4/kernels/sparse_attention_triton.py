"""The Triton kernel behind `sparse_attention(..., impl="triton")` (contract in `sparse_attention.py`).

Grid: (query, head block, split). A program loads its query's heads `[HB, dim]` once, then streams key tiles
`[BN, dim]` with an online softmax; K = V, so each tile feeds both products. The keys a query may see are one
sequence: its band (padded to whole tiles), then its entries (gathered through the block table; FP8 entries
with BF16 RoPE dims are loaded in two masked parts and widened). Split `s` takes keys
`[s·keys_per_split, (s+1)·keys_per_split)` of that sequence, so with few queries (decode) the band is shared
out like the entries instead of lengthening the first split. A split stops at its query's limit (HCA) or
the last chosen index (CSA): no program reads a tile wholly past what its query sees. One split finishes in
the kernel (sink folded into the denominator); several splits write partial outputs and log-sum-exps that
`_combine_kernel` merges with the sink in one launch. Every size is host-known: no host sync."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.attention_keys import BandKeys, EntryKeys
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

_TARGET_PROGRAMS = 264  # two waves of the H200's 132 multiprocessors
_MAX_SPLITS = 64


@dataclass(frozen=True)
class AttentionTiles:
    """Heads per program (tl.dot needs >= 16 rows), keys per tile, warps and pipeline stages."""

    head_block: int = 16
    key_block: int = 32
    num_warps: int = 4
    num_stages: int = 2


# measured on an H200 (benchmarks/attention_kernel.py --sweep): for 2,048-query chunks (32 heads, 64 keys,
# 8 warps) beat the decode shape by 20-30% at every context; few queries keep the small tiles, whose extra
# programs (and split-K) fill the GPU
_DECODE_TILES = AttentionTiles()
_PREFILL_TILES = AttentionTiles(head_block=32, key_block=64, num_warps=8, num_stages=2)
_PREFILL_QUERIES = 256


@triton.jit
def _online_step(q, k, valid, m_i, l_i, acc, scale, PRECISION: tl.constexpr):
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    probs = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(probs, axis=1)
    acc = acc * alpha[:, None] + tl.dot(probs.to(k.dtype), k, input_precision=PRECISION).to(tl.float32)
    return m_new, l_i, acc


@triton.jit
def _sparse_attention_kernel(
    Q,
    stride_qm,
    stride_qh,
    BAND_KV,
    stride_band,
    BAND_POS,
    BAND_START,
    BAND_LEN,
    POOL,
    stride_pool_block,
    stride_pool_entry,
    ROPE,
    stride_rope_block,
    stride_rope_entry,
    TABLE,
    stride_table,
    ROW,
    LIMIT,
    IDX,
    stride_idx,
    QPOS,
    SINK,
    OUT,
    stride_om,
    stride_oh,
    PART_O,
    PART_LSE,
    n_queries,
    n_heads,
    dim,
    scale,
    window,
    entry_count,
    per_block,
    nope_dim,
    keys_per_split,  # a runtime bound, a multiple of BN: a context that grows does not recompile the kernel
    BAND_MAX: tl.constexpr,  # the band's length rounded up to whole tiles: where the entries start
    DIM: tl.constexpr,
    HB: tl.constexpr,
    BN: tl.constexpr,
    ENTRY_MODE: tl.constexpr,  # 0: no entries, 1: chosen indices, 2: every entry below the limit
    SPLIT_ROPE: tl.constexpr,  # entries as FP8 dims [0, nope_dim) in POOL + BF16 dims after in ROPE
    FINALIZE: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" for float32 inputs (exact), "tf32" otherwise (bf16 operands)
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    m = tl.program_id(0)
    m64 = m.to(tl.int64)
    hb = tl.program_id(1)
    split = tl.program_id(2)
    heads = hb * HB + tl.arange(0, HB)
    hmask = heads < n_heads
    d = tl.arange(0, DIM)
    dmask = d < dim
    q = tl.load(
        Q + m64 * stride_qm + heads[:, None] * stride_qh + d[None, :],
        mask=hmask[:, None] & dmask[None, :],
        other=0.0,
    )
    p = tl.load(QPOS + m)
    m_i = tl.full([HB], float("-inf"), tl.float32)
    l_i = tl.zeros([HB], tl.float32)
    acc = tl.zeros([HB, DIM], tl.float32)
    lo = split * keys_per_split
    hi = lo + keys_per_split
    if lo < BAND_MAX:
        b0 = tl.load(BAND_START + m).to(tl.int64)
        blen = tl.load(BAND_LEN + m)
        for start in range(lo, tl.minimum(hi, tl.minimum(blen, BAND_MAX)), BN):
            r = start + tl.arange(0, BN)
            rmask = r < blen
            kpos = tl.load(BAND_POS + b0 + r, mask=rmask, other=0)
            valid = rmask & (kpos <= p) & (kpos > p - window)
            k = tl.load(
                BAND_KV + (b0 + r)[:, None] * stride_band + d[None, :],
                mask=valid[:, None] & dmask[None, :],
                other=0.0,
            )
            m_i, l_i, acc = _online_step(q, k, valid, m_i, l_i, acc, scale, PRECISION)
    if ENTRY_MODE != 0:
        row = tl.load(ROW + m).to(tl.int64)
        lim = tl.load(LIMIT + m)
        e_lo = tl.maximum(lo - BAND_MAX, 0)
        # scan this split's share only up to the entries there are (chosen indices) or the query can see
        # (every entry below its limit): tiles past them would be masked work
        e_hi = tl.minimum(hi - BAND_MAX, entry_count if ENTRY_MODE == 1 else tl.minimum(lim, entry_count))
        for start in range(e_lo, e_hi, BN):
            j = start + tl.arange(0, BN)
            jmask = j < e_hi
            if ENTRY_MODE == 1:
                e = tl.load(IDX + m64 * stride_idx + j, mask=jmask, other=-1).to(tl.int32)
            else:
                e = j
            valid = jmask & (e >= 0) & (e < lim)
            e = tl.where(valid, e, 0)
            block = tl.load(TABLE + row * stride_table + e // per_block, mask=valid, other=0).to(tl.int64)
            slot = (e % per_block).to(tl.int64)
            rows = block * stride_pool_block + slot * stride_pool_entry
            if SPLIT_ROPE:
                nope = valid[:, None] & (d < nope_dim)[None, :]
                k = (
                    tl.load(POOL + rows[:, None] + d[None, :], mask=nope, other=0.0)
                    .to(tl.float32)
                    .to(q.dtype)
                )
                rope_rows = block * stride_rope_block + slot * stride_rope_entry
                rope_mask = valid[:, None] & (d >= nope_dim)[None, :] & dmask[None, :]
                k += tl.load(ROPE + rope_rows[:, None] + (d - nope_dim)[None, :], mask=rope_mask, other=0.0)
            else:
                k = tl.load(
                    POOL + rows[:, None] + d[None, :], mask=valid[:, None] & dmask[None, :], other=0.0
                )
            m_i, l_i, acc = _online_step(q, k, valid, m_i, l_i, acc, scale, PRECISION)
    if FINALIZE:
        sink = tl.load(SINK + heads, mask=hmask, other=0.0)
        top = tl.maximum(m_i, sink)
        kept = tl.exp(m_i - top)
        out = acc * (kept / (l_i * kept + tl.exp(sink - top)))[:, None]
        tl.store(
            OUT + m64 * stride_om + heads[:, None] * stride_oh + d[None, :],
            out.to(OUT.dtype.element_ty),
            mask=hmask[:, None] & dmask[None, :],
        )
    else:
        seen = l_i > 0
        lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
        o = acc / tl.where(seen, l_i, 1.0)[:, None]
        slot = (split * n_queries + m) * n_heads + heads
        tl.store(PART_O + slot[:, None] * dim + d[None, :], o, mask=hmask[:, None] & dmask[None, :])
        tl.store(PART_LSE + slot, lse, mask=hmask)


@triton.jit
def _combine_kernel(
    PART_O,
    PART_LSE,
    SINK,
    OUT,
    stride_om,
    stride_oh,
    n_splits,
    n_queries,
    n_heads,
    dim,
    SPLITS: tl.constexpr,
    DB: tl.constexpr,
    PDL: tl.constexpr,
):
    """One (query, head, block of `DB` dims): every split's normalised output weighted by its share of
    the softmax mass, the sink counting as one more split with no value. All splits in one tile (at most
    `SPLITS`, masked), so the loads are independent and a program's work does not grow with the splits."""
    enter_pdl(PDL)
    m = tl.program_id(0)
    h = tl.program_id(1)
    d = tl.program_id(2) * DB + tl.arange(0, DB)
    split = tl.arange(0, SPLITS)
    live = split < n_splits
    slot = (split * n_queries + m) * n_heads + h
    lse = tl.load(PART_LSE + slot, mask=live, other=float("-inf"))
    sink = tl.load(SINK + h)
    top = tl.maximum(tl.max(lse), sink)
    w = tl.exp(lse - top)
    total = tl.sum(w) + tl.exp(sink - top)
    o = tl.load(PART_O + slot[:, None] * dim + d[None, :], mask=live[:, None] & (d < dim)[None, :], other=0.0)
    out = tl.sum(o * w[:, None], axis=0) / total
    tl.store(OUT + m.to(tl.int64) * stride_om + h * stride_oh + d, out.to(OUT.dtype.element_ty), mask=d < dim)


def _split_keys(n_queries: int, head_blocks: int, keys: int, key_block: int) -> int:
    """Keys per split (a multiple of `key_block`) of a query's `keys` (its padded band and its entries):
    all of them in one program unless the queries are too few to fill the GPU and the keys are many."""
    programs = n_queries * head_blocks
    whole = triton.cdiv(max(keys, 1), key_block) * key_block
    if programs >= _TARGET_PROGRAMS or keys <= 2 * key_block:
        return whole
    splits = min(triton.cdiv(_TARGET_PROGRAMS, programs), _MAX_SPLITS, triton.cdiv(keys, key_block))
    return triton.cdiv(triton.cdiv(keys, splits), key_block) * key_block


def sparse_attention_triton(
    q: torch.Tensor,
    band: BandKeys,
    entries: EntryKeys | None,
    sink: torch.Tensor,
    query_pos: torch.Tensor,
    *,
    scale: float,
    window: int,
    tiles: AttentionTiles | None = None,
) -> torch.Tensor:
    n_queries, n_heads, dim = q.shape
    tiles = tiles or (_PREFILL_TILES if n_queries >= _PREFILL_QUERIES else _DECODE_TILES)
    out = torch.empty_like(q)
    if n_queries == 0:
        return out
    q, query_pos = q.contiguous(), query_pos.contiguous()
    head_blocks = triton.cdiv(n_heads, tiles.head_block)
    device = q.device
    if entries is None:
        mode, count = 0, 0
        pool = band.kv.view(1, *band.kv.shape)
        table = row = limit = idx = band.start
        idx_stride = 0
    else:
        if entries.keys.format not in ("plain", "fp8_rope"):
            raise ValueError(f"attention reads plain or 'fp8_rope' entries, not {entries.keys.format!r}")
        mode = 2 if entries.indices is None else 1
        count = entries.max_count
        pool, table, row, limit = entries.keys.data, entries.block_table, entries.row, entries.limit
        idx = entries.indices if entries.indices is not None else entries.limit
        idx_stride = entries.indices.stride(0) if entries.indices is not None else 0
    rope = entries.keys.rope if entries is not None and entries.keys.rope is not None else pool
    band_max = triton.cdiv(max(band.max_length, 1), tiles.key_block) * tiles.key_block
    keys_per_split = _split_keys(n_queries, head_blocks, band_max + count, tiles.key_block)
    splits = triton.cdiv(band_max + count, keys_per_split)
    if splits == 1:
        part_o = part_lse = out  # unused
    else:
        part_o = torch.empty(splits, n_queries, n_heads, dim, dtype=torch.float32, device=device)
        part_lse = torch.empty(splits, n_queries, n_heads, dtype=torch.float32, device=device)
    sink32 = sink.float().contiguous()
    _sparse_attention_kernel[(n_queries, head_blocks, splits)](
        q,
        q.stride(0),
        q.stride(1),
        band.kv,
        band.kv.stride(0),
        band.positions,
        band.start,
        band.length,
        pool,
        pool.stride(0),
        pool.stride(1),
        rope,
        rope.stride(0),
        rope.stride(1),
        table,
        table.stride(0),
        row,
        limit,
        idx,
        idx_stride,
        query_pos,
        sink32,
        out,
        out.stride(0),
        out.stride(1),
        part_o,
        part_lse,
        n_queries,
        n_heads,
        dim,
        scale,
        window,
        count,
        pool.shape[1],
        pool.shape[2],
        keys_per_split,
        BAND_MAX=band_max,
        DIM=triton.next_power_of_2(dim),
        HB=tiles.head_block,
        BN=tiles.key_block,
        ENTRY_MODE=mode,
        SPLIT_ROPE=rope is not pool,
        FINALIZE=splits == 1,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **pdl_launch(q.device),
    )
    if splits > 1:
        block = min(128, triton.next_power_of_2(dim))
        _combine_kernel[(n_queries, n_heads, triton.cdiv(dim, block))](
            part_o,
            part_lse,
            sink32,
            out,
            out.stride(0),
            out.stride(1),
            splits,
            n_queries,
            n_heads,
            dim,
            SPLITS=_MAX_SPLITS,
            DB=block,
            **pdl_launch(part_o.device),
        )
    return out
