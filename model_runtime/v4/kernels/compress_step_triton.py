"""The Triton kernel behind `compress_step(..., impl="triton")` (contract in `compress_step.py`).

One program per row holds the entry's even and odd channels as two `[dim/2]` vectors (so RoPE's pairs need no
shuffle), streams the window's slots in tiles of up to 8 through an online softmax per channel, then norms,
rotates and stores the entry (into a plain pool directly; else into rows that the pool's quantising write
stores), writes the token's tail row, and on a completed CSA window the new overlap state. The token's own
projections are taken from the inputs, never re-read from the tail it just wrote."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.compressor_state import CompressorState

#: window slots pooled per step: HCA's 128-slot window in 16 steps of 8, CSA's windows of 4 in one
_SLOT_TILE = 8


@triton.jit
def _pool_tile(kv, g, m, total, acc):
    """Online softmax pooling of a tile of slots `[SB, HALF]` into per-channel running (max, sum, acc)."""
    m_new = tl.maximum(m, tl.max(g, axis=0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    p = tl.exp(g - m_safe[None, :])
    return m_new, total * alpha + tl.sum(p, axis=0), acc * alpha + tl.sum(p * kv, axis=0)


@triton.jit
def _compress_step_kernel(
    KV,
    GATE,
    stride_new,
    POS,
    SLOTS,
    COS,
    SIN,
    stride_cs,
    TAIL_KV,
    TAIL_GATE,
    stride_ts,
    stride_tr,
    OVL_KV,
    OVL_GATE,
    stride_os,
    stride_or,
    APE,
    stride_ape,
    NORM_W,
    eps,
    POOL,
    stride_pb,
    stride_pe,
    TABLE,
    stride_table,
    per_block,
    dim,
    width,
    nope_half,
    RATIO: tl.constexpr,
    OVERLAP: tl.constexpr,
    HALF: tl.constexpr,
    WIDTH_P: tl.constexpr,
    SB: tl.constexpr,  # window slots per tile (divides RATIO)
    TO_POOL: tl.constexpr,  # False: POOL is rows [B, dim] (row stride stride_pb) the caller stores
):
    b = tl.program_id(0)
    p = tl.load(POS + b)
    slot = tl.load(SLOTS + b).to(tl.int64)
    r = p % RATIO
    i = tl.arange(0, HALF)
    live = i < dim // 2
    even = 2 * i
    odd = even + 1
    cb = dim if OVERLAP else 0  # where this window's own (Cb) half sits in a projection row
    new_row = KV + b * stride_new
    gate_row = GATE + b * stride_new
    new_kv_e = tl.load(new_row + cb + even, mask=live, other=0.0).to(tl.float32)
    new_kv_o = tl.load(new_row + cb + odd, mask=live, other=0.0).to(tl.float32)
    new_g_e = tl.load(gate_row + cb + even, mask=live, other=0.0).to(tl.float32)
    new_g_o = tl.load(gate_row + cb + odd, mask=live, other=0.0).to(tl.float32)
    m_e = tl.full([HALF], float("-inf"), tl.float32)
    m_o = tl.full([HALF], float("-inf"), tl.float32)
    l_e = tl.zeros([HALF], tl.float32)
    l_o = tl.zeros([HALF], tl.float32)
    a_e = tl.zeros([HALF], tl.float32)
    a_o = tl.zeros([HALF], tl.float32)
    sl = tl.arange(0, SB)
    if OVERLAP:
        has_prior = p >= RATIO
        for s0 in range(0, RATIO, SB):
            ovl = slot * stride_os + (s0 + sl)[:, None] * stride_or
            kv_e = tl.load(OVL_KV + ovl + even[None, :], mask=live[None, :], other=0.0).to(tl.float32)
            kv_o = tl.load(OVL_KV + ovl + odd[None, :], mask=live[None, :], other=0.0).to(tl.float32)
            g_e = tl.load(OVL_GATE + ovl + even[None, :], mask=live[None, :], other=0.0).to(tl.float32)
            g_o = tl.load(OVL_GATE + ovl + odd[None, :], mask=live[None, :], other=0.0).to(tl.float32)
            g_e = tl.where(has_prior, g_e, float("-inf"))
            g_o = tl.where(has_prior, g_o, float("-inf"))
            m_e, l_e, a_e = _pool_tile(kv_e, g_e, m_e, l_e, a_e)
            m_o, l_o, a_o = _pool_tile(kv_o, g_o, m_o, l_o, a_o)
    for s0 in range(0, RATIO, SB):
        tail = slot * stride_ts + (s0 + sl)[:, None] * stride_tr + cb
        ape = APE + (s0 + sl)[:, None] * stride_ape + cb
        own = (s0 + sl == r)[:, None]
        kv_e = tl.load(TAIL_KV + tail + even[None, :], mask=live[None, :], other=0.0).to(tl.float32)
        kv_o = tl.load(TAIL_KV + tail + odd[None, :], mask=live[None, :], other=0.0).to(tl.float32)
        g_e = tl.load(TAIL_GATE + tail + even[None, :], mask=live[None, :], other=0.0).to(tl.float32)
        g_o = tl.load(TAIL_GATE + tail + odd[None, :], mask=live[None, :], other=0.0).to(tl.float32)
        kv_e = tl.where(own, new_kv_e[None, :], kv_e)
        kv_o = tl.where(own, new_kv_o[None, :], kv_o)
        g_e = tl.where(own, new_g_e[None, :], g_e) + tl.load(
            ape + even[None, :], mask=live[None, :], other=0.0
        )
        g_o = tl.where(own, new_g_o[None, :], g_o) + tl.load(
            ape + odd[None, :], mask=live[None, :], other=0.0
        )
        m_e, l_e, a_e = _pool_tile(kv_e, g_e, m_e, l_e, a_e)
        m_o, l_o, a_o = _pool_tile(kv_o, g_o, m_o, l_o, a_o)
    e_e = tl.where(live, a_e / l_e, 0.0)
    e_o = tl.where(live, a_o / l_o, 0.0)
    # RMS norm (float32 statistics), rounded to the projections' dtype as the module returns it
    inv = tl.rsqrt((tl.sum(e_e * e_e, axis=0) + tl.sum(e_o * e_o, axis=0)) / dim + eps)
    n_e = (tl.load(NORM_W + even, mask=live, other=0.0) * e_e * inv).to(KV.dtype.element_ty).to(tl.float32)
    n_o = (tl.load(NORM_W + odd, mask=live, other=0.0) * e_o * inv).to(KV.dtype.element_ty).to(tl.float32)
    # RoPE on the trailing pairs, at the entry's position
    rot = live & (i >= nope_half)
    c = tl.load(COS + b * stride_cs + (i - nope_half), mask=rot, other=1.0)
    sn = tl.load(SIN + b * stride_cs + (i - nope_half), mask=rot, other=0.0)
    out_e = tl.where(rot, n_e * c - n_o * sn, n_e).to(KV.dtype.element_ty)
    out_o = tl.where(rot, n_o * c + n_e * sn, n_o).to(KV.dtype.element_ty)
    if TO_POOL:
        entry = p // RATIO
        block = tl.load(TABLE + b * stride_table + entry // per_block).to(tl.int64)
        dst = POOL + block * stride_pb + (entry % per_block).to(tl.int64) * stride_pe
    else:
        dst = POOL + b * stride_pb
    tl.store(dst + even, out_e.to(POOL.dtype.element_ty), mask=live)
    tl.store(dst + odd, out_o.to(POOL.dtype.element_ty), mask=live)
    # the token's tail row
    cols = tl.arange(0, WIDTH_P)
    wide = cols < width
    own_row = slot * stride_ts + r * stride_tr
    own_kv = tl.load(new_row + cols, mask=wide, other=0.0).to(TAIL_KV.dtype.element_ty)
    own_gate = tl.load(gate_row + cols, mask=wide, other=0.0).to(TAIL_GATE.dtype.element_ty)
    tl.store(TAIL_KV + own_row + cols, own_kv, mask=wide)
    tl.store(TAIL_GATE + own_row + cols, own_gate, mask=wide)
    if OVERLAP:
        # a completed window hands its Ca half (gate plus bias) to the next window
        done = r == RATIO - 1
        lead = cols < dim
        for s in range(RATIO):
            tail = slot * stride_ts + s * stride_tr
            own = s == r
            kv = tl.load(TAIL_KV + tail + cols, mask=lead, other=0.0).to(tl.float32)
            kv = tl.where(own, own_kv.to(tl.float32), kv)
            g = tl.load(TAIL_GATE + tail + cols, mask=lead, other=0.0).to(tl.float32)
            g = tl.where(own, own_gate.to(tl.float32), g) + tl.load(
                APE + s * stride_ape + cols, mask=lead, other=0.0
            )
            ovl = slot * stride_os + s * stride_or
            tl.store(OVL_KV + ovl + cols, kv.to(OVL_KV.dtype.element_ty), mask=lead & done)
            tl.store(OVL_GATE + ovl + cols, g.to(OVL_GATE.dtype.element_ty), mask=lead & done)


def compress_step_triton(
    kv: torch.Tensor,
    gate: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    state: CompressorState,
) -> None:
    rows, width = kv.shape
    if rows == 0:
        return
    ratio = state.tail_kv.shape[1]
    overlap = state.overlap_kv is not None and state.overlap_gate is not None
    dim = width // 2 if overlap else width
    ovl_kv = state.overlap_kv if state.overlap_kv is not None else state.tail_kv
    ovl_gate = state.overlap_gate if state.overlap_gate is not None else state.tail_gate
    kv, gate = kv.contiguous(), gate.contiguous()
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    ape = state.ape.float().contiguous()
    to_pool = state.entries.format == "plain"
    pool = state.entries.data if to_pool else kv.new_empty(rows, dim).unsqueeze(1)
    _compress_step_kernel[(rows,)](
        kv,
        gate,
        kv.stride(0),
        positions.contiguous(),
        slots.contiguous(),
        cos,
        sin,
        cos.stride(0),
        state.tail_kv,
        state.tail_gate,
        state.tail_kv.stride(0),
        state.tail_kv.stride(1),
        ovl_kv,
        ovl_gate,
        ovl_kv.stride(0),
        ovl_kv.stride(1),
        ape,
        ape.stride(0),
        state.norm_weight.float().contiguous(),
        state.norm_eps,
        pool,
        pool.stride(0),
        pool.stride(1),
        state.block_tables,
        state.block_tables.stride(0),
        state.entries.per_block,
        dim,
        width,
        dim // 2 - cos.shape[1],
        RATIO=ratio,
        OVERLAP=overlap,
        HALF=triton.next_power_of_2(dim // 2),
        WIDTH_P=triton.next_power_of_2(width),
        SB=min(ratio, _SLOT_TILE),
        TO_POOL=to_pool,
        num_warps=4,
    )
    if not to_pool:
        state.entries.write(*state.entry_places(positions), pool.squeeze(1))
