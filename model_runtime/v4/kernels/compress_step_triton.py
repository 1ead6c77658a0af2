"""The Triton kernels behind `compress_step(..., impl="triton")` (contract in `compress_step.py`).

Two launches, so that a row's window is streamed by many programs rather than one:

* "pool", grid (B, channel blocks of `CompressTiles.channels`): a program pools the whole window for its
  block of the entry's channels — on CSA the previous window's Ca half from the overlap state (-inf before
  the first window is complete), then this window's Cb half — by an online softmax over tiles of slots
  (one tile at V4's shapes), and writes the pooled float32 channels to a scratch `[B, dim]`. It also writes
  its columns of the token's tail row (both halves on CSA) and its channels of the overlap state (this
  window's Ca half plus bias on a completed window, else the prior as read), so every element of the state
  is read and written by one program only. The token's own slot comes from the inputs, never from the tail
  row being written.
* "finish", grid (B,): RMS norm (float32 statistics, rounded to the projections' dtype), RoPE on the
  trailing pairs at the entry's position (even and odd channels as two vectors, so pairs need no shuffle),
  and the store: into a plain pool directly, else into rows that the pool's quantising write stores.

Values are rounded as the reference rounds them (stored slots read in the projections' dtype, the token's
slot as the tail stores it); the pooling itself runs in float32 where the reference multiplies in the
projections' dtype. Parameters and RoPE tables are read in their stored dtype and strides: no conversion
launches. Shapes depend only on (B, dim), so the step captures in a CUDA graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.compressor_state import CompressorState
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch


@dataclass(frozen=True)
class CompressTiles:
    """Layout knobs, powers of two: entry channels per pool program (V4's 512 channels in 32 programs per
    row, the indexer's 128 in 8), the most slots x channels pooled per tile (HCA's 128-slot window in one),
    and the pool's warps."""

    channels: int = 16
    tile_elements: int = 4096
    num_warps: int = 4

    def __post_init__(self) -> None:
        for size in (self.channels, self.tile_elements):
            if size < 1 or size & (size - 1):
                raise ValueError(f"compress-step tiles must be powers of two, got {self}")


@triton.jit
def _pool_tile(kv, g, m, total, acc):
    """Online softmax pooling of a tile of slots `[SB, CB]` into per-channel running (max, sum, acc)."""
    m_new = tl.maximum(m, tl.max(g, axis=0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    p = tl.exp(g - m_safe[None, :])
    return m_new, total * alpha + tl.sum(p, axis=0), acc * alpha + tl.sum(p * kv, axis=0)


@triton.jit
def _own_slot(kv_row, gate_row, TAIL_KV, TAIL_GATE, own_row, cols, live):
    """The token's projections at `cols`: written to its tail row, and returned as the window reads them
    back (rounded to the tail's dtype, then to the projections')."""
    kv = tl.load(kv_row + cols, mask=live, other=0.0)
    g = tl.load(gate_row + cols, mask=live, other=0.0)
    stored_kv = kv.to(TAIL_KV.dtype.element_ty)
    stored_g = g.to(TAIL_GATE.dtype.element_ty)
    tl.store(TAIL_KV + own_row + cols, stored_kv, mask=live)
    tl.store(TAIL_GATE + own_row + cols, stored_g, mask=live)
    return stored_kv.to(kv.dtype), stored_g.to(g.dtype)


@triton.jit
def _window_tile(TAIL_KV, TAIL_GATE, APE, stride_tr, stride_ape, tail, s, cols, r, own_kv, own_g, mask):
    """This window's slots `s` at columns `cols` as the reference pools them: stored slots read in the
    projections' dtype, the token's slot `r` from `own_*` (as the tail stores it), the gate plus the
    position bias, all as float32 `[SB, CB]`."""
    at = tail + s[:, None] * stride_tr + cols[None, :]
    own = (s == r)[:, None]
    kv = tl.load(TAIL_KV + at, mask=mask, other=0.0)
    g = tl.load(TAIL_GATE + at, mask=mask, other=0.0)
    kv = tl.where(own, own_kv[None, :], kv).to(own_kv.dtype)
    g = tl.where(own, own_g[None, :], g).to(own_g.dtype)
    bias = tl.load(APE + s[:, None] * stride_ape + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return kv.to(tl.float32), g.to(tl.float32) + bias


@triton.jit
def _pool_kernel(
    KV,
    GATE,
    stride_kv,
    stride_gate,
    POS,
    SLOTS,
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
    POOLED,
    dim,
    RATIO: tl.constexpr,
    OVERLAP: tl.constexpr,
    CB: tl.constexpr,  # entry channels per program
    SB: tl.constexpr,  # window slots per tile (a power of two)
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    b = tl.program_id(0)
    p = tl.load(POS + b)
    slot = tl.load(SLOTS + b).to(tl.int64)
    r = p % RATIO
    c = tl.program_id(1) * CB + tl.arange(0, CB)
    live = c < dim
    cb = c + dim if OVERLAP else c  # this window's (Cb) half of a projection row
    kv_row = KV + b * stride_kv
    gate_row = GATE + b * stride_gate
    tail = slot * stride_ts
    own_row = tail + r * stride_tr
    own_kv, own_g = _own_slot(kv_row, gate_row, TAIL_KV, TAIL_GATE, own_row, cb, live)
    m = tl.full([CB], float("-inf"), tl.float32)
    total = tl.zeros([CB], tl.float32)
    acc = tl.zeros([CB], tl.float32)
    sl = tl.arange(0, SB)
    if OVERLAP:
        own_ca_kv, own_ca_g = _own_slot(kv_row, gate_row, TAIL_KV, TAIL_GATE, own_row, c, live)
        has_prior = p >= RATIO
        done = r == RATIO - 1
        for s0 in range(0, RATIO, SB):
            s = s0 + sl
            inside = (s < RATIO)[:, None] & live[None, :]
            ovl = slot * stride_os + s[:, None] * stride_or + c[None, :]
            prior_kv = tl.load(OVL_KV + ovl, mask=inside, other=0.0).to(KV.dtype.element_ty).to(tl.float32)
            prior_g = tl.load(OVL_GATE + ovl, mask=inside, other=0.0).to(GATE.dtype.element_ty).to(tl.float32)
            g = tl.where((s < RATIO)[:, None] & has_prior, prior_g, float("-inf"))
            m, total, acc = _pool_tile(prior_kv, g, m, total, acc)
            # a completed window hands its Ca half (gate plus bias) to the next, else the prior is stored
            # back as read (rounded as the reference rounds it); each store depends on its element's load
            ca_kv, ca_g = _window_tile(
                TAIL_KV,
                TAIL_GATE,
                APE,
                stride_tr,
                stride_ape,
                tail,
                s,
                c,
                r,
                own_ca_kv,
                own_ca_g,
                inside & done,
            )
            tl.store(OVL_KV + ovl, tl.where(done, ca_kv, prior_kv).to(OVL_KV.dtype.element_ty), mask=inside)
            tl.store(OVL_GATE + ovl, tl.where(done, ca_g, prior_g).to(OVL_GATE.dtype.element_ty), mask=inside)
    for s0 in range(0, RATIO, SB):
        s = s0 + sl
        inside = (s < RATIO)[:, None] & live[None, :]
        kv, g = _window_tile(
            TAIL_KV, TAIL_GATE, APE, stride_tr, stride_ape, tail, s, cb, r, own_kv, own_g, inside
        )
        m, total, acc = _pool_tile(kv, tl.where((s < RATIO)[:, None], g, float("-inf")), m, total, acc)
    tl.store(POOLED + b * dim + c, acc / total, mask=live)


@triton.jit
def _finish_kernel(
    POOLED,
    PROJ,  # the projections, read for their dtype only (the normed entry is rounded to it)
    POS,
    NORM_W,
    eps,
    COS,
    SIN,
    stride_cos,
    stride_sin,
    POOL,
    stride_pb,
    stride_pe,
    TABLE,
    stride_table,
    per_block,
    dim,
    nope_half,
    RATIO: tl.constexpr,
    HALF: tl.constexpr,
    TO_POOL: tl.constexpr,  # False: POOL is rows [B, dim] (row stride stride_pb) the caller stores
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    b = tl.program_id(0)
    i = tl.arange(0, HALF)
    live = i < dim // 2
    even = 2 * i
    odd = even + 1
    e_e = tl.load(POOLED + b * dim + even, mask=live, other=0.0)
    e_o = tl.load(POOLED + b * dim + odd, mask=live, other=0.0)
    # RMS norm (float32 statistics), rounded to the projections' dtype as the module returns it
    inv = tl.rsqrt((tl.sum(e_e * e_e, axis=0) + tl.sum(e_o * e_o, axis=0)) / dim + eps)
    w_e = tl.load(NORM_W + even, mask=live, other=0.0).to(tl.float32)
    w_o = tl.load(NORM_W + odd, mask=live, other=0.0).to(tl.float32)
    n_e = (w_e * (e_e * inv)).to(PROJ.dtype.element_ty).to(tl.float32)
    n_o = (w_o * (e_o * inv)).to(PROJ.dtype.element_ty).to(tl.float32)
    # RoPE on the trailing pairs, at the entry's position
    rot = live & (i >= nope_half)
    c = tl.load(COS + b * stride_cos + (i - nope_half), mask=rot, other=1.0).to(tl.float32)
    sn = tl.load(SIN + b * stride_sin + (i - nope_half), mask=rot, other=0.0).to(tl.float32)
    out_e = tl.where(rot, n_e * c - n_o * sn, n_e).to(PROJ.dtype.element_ty)
    out_o = tl.where(rot, n_o * c + n_e * sn, n_o).to(PROJ.dtype.element_ty)
    if TO_POOL:
        entry = tl.load(POS + b) // RATIO
        block = tl.load(TABLE + b * stride_table + entry // per_block).to(tl.int64)
        dst = POOL + block * stride_pb + (entry % per_block).to(tl.int64) * stride_pe
    else:
        dst = POOL + b * stride_pb
    tl.store(dst + even, out_e.to(POOL.dtype.element_ty), mask=live)
    tl.store(dst + odd, out_o.to(POOL.dtype.element_ty), mask=live)


def _unit_columns(t: torch.Tensor) -> torch.Tensor:
    """`t` as rows of adjacent elements (the kernels take row strides only); a copy only if it is not."""
    return t if t.stride(-1) == 1 else t.contiguous()


def compress_step_triton(
    kv: torch.Tensor,
    gate: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    state: CompressorState,
    *,
    tiles: CompressTiles | None = None,
) -> None:
    tiles = tiles or CompressTiles()
    rows, width = kv.shape
    if rows == 0:
        return
    ratio = state.tail_kv.shape[1]
    overlap = state.overlap_kv is not None and state.overlap_gate is not None
    dim = width // 2 if overlap else width
    ovl_kv = state.overlap_kv if state.overlap_kv is not None else state.tail_kv
    ovl_gate = state.overlap_gate if state.overlap_gate is not None else state.tail_gate
    kv, gate, cos, sin = (_unit_columns(t) for t in (kv, gate, cos, sin))
    ape = _unit_columns(state.ape)
    positions, slots = positions.contiguous(), slots.contiguous()
    pooled = torch.empty(rows, dim, dtype=torch.float32, device=kv.device)
    slot_tile = min(triton.next_power_of_2(ratio), max(1, tiles.tile_elements // tiles.channels))
    _pool_kernel[(rows, triton.cdiv(dim, tiles.channels))](
        kv,
        gate,
        kv.stride(0),
        gate.stride(0),
        positions,
        slots,
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
        pooled,
        dim,
        RATIO=ratio,
        OVERLAP=overlap,
        CB=tiles.channels,
        SB=slot_tile,
        num_warps=tiles.num_warps,
        **pdl_launch(kv.device),
    )
    to_pool = state.entries.format == "plain"
    pool = state.entries.data if to_pool else kv.new_empty(rows, dim).unsqueeze(1)
    _finish_kernel[(rows,)](
        pooled,
        kv,
        positions,
        state.norm_weight,
        state.norm_eps,
        cos,
        sin,
        cos.stride(0),
        sin.stride(0),
        pool,
        pool.stride(0),
        pool.stride(1),
        state.block_tables,
        state.block_tables.stride(0),
        state.entries.per_block,
        dim,
        dim // 2 - cos.shape[1],
        RATIO=ratio,
        HALF=triton.next_power_of_2(dim // 2),
        TO_POOL=to_pool,
        num_warps=4,
        **pdl_launch(pooled.device),
    )
    if not to_pool:
        state.entries.write(*state.entry_places(positions), pool.squeeze(1))
