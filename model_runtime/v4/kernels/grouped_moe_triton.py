"""The Triton kernels behind `grouped_moe(..., impl="triton")` (contract in `grouped_moe.py`).

Dispatch (`group_pairs`, on the device, no host sync): the N*k (token, slot) pairs are sorted by expert,
counted per expert with `scatter_add_`, and laid out in rows padded per expert to whole tiles of `block_m`
rows; `tile_expert` names each tile's expert. The grid is sized by an upper bound that depends only on
(N, k, E, block_m) — `cdiv(N*k, block_m) + min(E, N*k)` tiles — and programs of tiles past the real end
(expert id E) return at once. Under expert parallelism (`ExpertSlice`) the pairs of experts held by other
ranks carry the sentinel id E: they take rows after the real tiles, in idle tiles, and their rows of
`pair_out` stay zero.

Launch 1 (gate-up): a program takes one tile and one block of `inter` columns, accumulates x W1ᵀ and x W3ᵀ
in float32 and writes `h = silu(min(g, l)) * clamp(u, -l, l)` (rows of `h` follow the padded layout).
Launch 2 (down): a program takes one tile and one block of `hidden` columns, computes h W2ᵀ times each
pair's routing weight, and writes the pair's row of `pair_out` `[N*k, hidden]`; a token's k rows are then
summed through a view — deterministic, no atomics. Programs run in groups of `group_m` tiles that sweep
all column blocks together, so a group's rows and its expert's weights stay in L2 (prefill); at decode the
tiles are few and the column blocks fill the GPU, each active expert's weights read once.

What does not depend on the weights' format — the tiles, the grouping, the work buffers (`plan_launches`),
each program's rows and columns (`_tile_rows`) and the two epilogues (`swiglu_triton.store_swiglu`,
`_store_weighted`) — is shared with the MXFP4 kernels (`grouped_moe_mxfp4_triton`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch
from deepscout.model_runtime.v4.kernels.swiglu_triton import store_swiglu


@dataclass(frozen=True)
class TileConfig:
    """Tile sizes of both launches: `block_m` pair rows per tile (the per-expert padding), output columns
    per program (`gate_up_n` of inter, `down_n` of hidden), `block_k` of the reduction per step."""

    block_m: int
    gate_up_n: int
    down_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8


def choose_tiles(n_pairs: int, n_experts: int) -> TileConfig:
    """Small tiles that stream weights when each active expert sees few pairs (decode), tensor-core tiles
    when it sees many (prefill)."""
    per_expert = n_pairs / max(1, min(n_experts, n_pairs))
    if per_expert <= 16:
        return TileConfig(block_m=16, gate_up_n=32, down_n=64, block_k=128, num_warps=4, num_stages=3)
    if per_expert <= 96:
        return TileConfig(block_m=64, gate_up_n=64, down_n=128, block_k=64, num_warps=4, num_stages=4)
    return TileConfig(block_m=128, gate_up_n=64, down_n=128, block_k=64, num_warps=8, num_stages=4)


@dataclass(frozen=True)
class PairGroups:
    """The pairs grouped by expert: `pair_ids` `[n_tiles * block_m]` (int32; a row's pair, `n_pairs` on
    padding rows) and `tile_expert` `[n_tiles]` (int32; E past the last real tile)."""

    pair_ids: torch.Tensor
    tile_expert: torch.Tensor
    n_tiles: int
    block_m: int


def group_pairs(indices: torch.Tensor, n_experts: int, block_m: int) -> PairGroups:
    """Group the pairs of `indices` `[N, k]` by expert on the device (sizes from the shapes only); pairs
    with the sentinel id `n_experts` (no local expert) are laid out after the real tiles, never run."""
    flat = indices.reshape(-1).long()
    n_pairs = flat.numel()
    device = flat.device
    n_tiles = triton.cdiv(n_pairs, block_m) + min(n_experts, n_pairs)
    counts = torch.zeros(n_experts + 1, dtype=torch.long, device=device).scatter_add_(
        0, flat, torch.ones_like(flat)
    )
    # the sentinel's pairs take no tile of their own: their rows follow the real tiles (idle, expert E)
    tiles_per_expert = torch.cat(((counts[:n_experts] + block_m - 1) // block_m, counts.new_zeros(1)))
    tile_end = tiles_per_expert.cumsum(0)
    first_row = (tile_end - tiles_per_expert) * block_m
    first_pair = counts.cumsum(0) - counts
    sorted_experts, order = torch.sort(flat, stable=True)
    rank = torch.arange(n_pairs, device=device) - first_pair[sorted_experts]
    rows = first_row[sorted_experts] + rank
    pair_ids = torch.full((n_tiles * block_m,), n_pairs, dtype=torch.int32, device=device)
    pair_ids.scatter_(0, rows, order.to(torch.int32))
    tiles = torch.arange(n_tiles, device=device)
    tile_expert = torch.searchsorted(tile_end[:n_experts], tiles, right=True).to(torch.int32)
    return PairGroups(pair_ids, tile_expert, n_tiles, block_m)


@triton.jit
def _tile_and_columns(n_tiles, n_col_blocks, GROUP_M: tl.constexpr):
    """This program's (tile, column block): groups of GROUP_M tiles sweep all column blocks together."""
    pid = tl.program_id(0)
    per_group = GROUP_M * n_col_blocks
    first = (pid // per_group) * GROUP_M
    size = tl.minimum(n_tiles - first, GROUP_M)
    return first + (pid % per_group) % size, (pid % per_group) // size


@dataclass(frozen=True)
class LaunchPlan:
    """What both launches of one call share: the tiles, the grouped pairs, each pair's routing weight
    `route` `[N*k]` (float32), the work buffers `h` `[rows, inter]` and `pair_out` `[N*k, hidden]`, and
    the dot settings (`upcast`: operands and intermediates in float32, under Triton's interpreter)."""

    tiles: TileConfig
    groups: PairGroups
    route: torch.Tensor
    h: torch.Tensor
    pair_out: torch.Tensor
    precision: str
    upcast: bool

    def summed(
        self, x: torch.Tensor, *, add: torch.Tensor | None, out_dtype: torch.dtype | None
    ) -> torch.Tensor:
        """Each token's k rows of `pair_out` summed (see `sum_pairs`)."""
        return sum_pairs(self.pair_out, x, add=add, out_dtype=out_dtype)


SUM_BLOCK = 512
"""Columns per program of `sum_pairs`."""


@triton.jit
def _sum_pairs_kernel(
    PAIRS,
    ADD,
    OUT,
    hidden,
    stride_p,
    stride_a,
    stride_o,
    TOP_K: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_ADD: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < hidden
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        acc += tl.load(PAIRS + (token * TOP_K + j) * stride_p + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_ADD:
        acc += tl.load(ADD + token * stride_a + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(OUT + token * stride_o + cols, acc.to(OUT.dtype.element_ty), mask=ok)


def sum_pairs(
    pair_out: torch.Tensor,
    x: torch.Tensor,
    *,
    add: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Each token's k consecutive rows of `pair_out` `[N*k, hidden]` summed in float32, in a fixed order
    (deterministic, no atomics), plus `add` `[N, hidden]` when given (the shared expert's output), rounded
    once to `out_dtype` (default `x`'s dtype; `x` `[N, hidden]`), in one launch."""
    n_tokens, hidden = x.shape
    dtype = out_dtype or x.dtype
    # Triton's interpreter truncates what it stores as bf16: there the sum is stored in float32 and cast
    stored = torch.float32 if triton.knobs.runtime.interpret else dtype
    out = torch.empty(n_tokens, hidden, dtype=stored, device=x.device)
    if n_tokens == 0:
        return out.to(dtype)
    if add is not None and add.shape != x.shape:
        raise ValueError(f"add has shape {tuple(add.shape)}, the output {tuple(x.shape)}")
    top_k = pair_out.shape[0] // n_tokens
    pair_out = pair_out.contiguous()
    extra = out if add is None else add.contiguous()
    _sum_pairs_kernel[(n_tokens, triton.cdiv(hidden, SUM_BLOCK))](
        pair_out,
        extra,
        out,
        hidden,
        pair_out.stride(0),
        extra.stride(0),
        out.stride(0),
        TOP_K=top_k,
        BLOCK=SUM_BLOCK,
        HAS_ADD=add is not None,
        **pdl_launch(pair_out.device),
    )
    return out.to(dtype)


def plan_launches(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    *,
    n_experts: int,
    inter: int,
    tiles: TileConfig | None,
    experts: ExpertSlice | None = None,
) -> LaunchPlan:
    """Group the pairs and allocate the work buffers of one call (`tiles` overrides `choose_tiles`); with
    `experts` (the stacks hold only that slice) the other experts' pairs are skipped, their rows zero."""
    n_pairs = indices.numel()
    tiles = tiles or choose_tiles(n_pairs, n_experts)
    local = indices if experts is None else experts.local_ids(indices)
    groups = group_pairs(local, n_experts, tiles.block_m)
    route = weights.reshape(-1).float().contiguous()
    # Triton's interpreter multiplies bf16 blocks wrongly and truncates what it stores as bf16: there the
    # operands are upcast and the intermediates kept in float32.
    upcast = bool(triton.knobs.runtime.interpret)
    work_dtype = torch.float32 if upcast else x.dtype
    h = torch.empty(groups.n_tiles * tiles.block_m, inter, dtype=work_dtype, device=x.device)
    allocate = torch.empty if experts is None else torch.zeros  # skipped pairs' rows are never written
    pair_out = allocate(n_pairs, x.shape[1], dtype=work_dtype, device=x.device)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    return LaunchPlan(tiles, groups, route, h, pair_out, precision, upcast)


@triton.jit
def _tile_rows(
    PAIR_IDS,
    TILE_EXPERT,
    n_pairs,
    n_tiles,
    N_COLS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """This program's expert (int64; `n_experts` past the real tiles), its tile's rows, their pairs (`valid`
    where a real pair) and its block of the `N_COLS` output columns (`col_ok` where in range)."""
    tile, col_block = _tile_and_columns(n_tiles, tl.cdiv(N_COLS, BLOCK_N), GROUP_M)
    expert = tl.load(TILE_EXPERT + tile).to(tl.int64)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(PAIR_IDS + rows)
    cols = col_block * BLOCK_N + tl.arange(0, BLOCK_N)
    return expert, rows, pair, pair < n_pairs, cols, cols < N_COLS


@triton.jit
def _store_weighted(OUT, acc, ROUTE, pair, valid, cols, col_ok, stride_out):
    """Write each real pair's row of `acc` times its routing weight to its row of OUT."""
    route = tl.load(ROUTE + pair, mask=valid, other=0.0)
    out = acc * route[:, None]
    out_ptrs = OUT + pair[:, None].to(tl.int64) * stride_out + cols[None, :]
    tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


@triton.jit
def _operand(block, UPCAST: tl.constexpr):
    """A dot operand as loaded, or in float32 (under Triton's interpreter, see `grouped_moe_triton`)."""
    if UPCAST:
        return block.to(tl.float32)
    return block


@triton.jit
def _gate_up_kernel(
    X,
    W1,
    W3,
    H,
    PAIR_IDS,
    TILE_EXPERT,
    n_pairs,
    top_k,
    n_experts,
    n_tiles,
    limit,
    stride_x,
    stride_we,
    stride_wn,
    stride_h,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    CLAMP: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    expert, rows, pair, valid, cols, col_ok = _tile_rows(
        PAIR_IDS, TILE_EXPERT, n_pairs, n_tiles, INTER, BLOCK_M, BLOCK_N, GROUP_M
    )
    if expert >= n_experts:
        return
    token = (pair // top_k).to(tl.int64)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = X + token[:, None] * stride_x + ks[None, :]
    w_offsets = cols[None, :] * stride_wn + ks[:, None]  # [BLOCK_K, BLOCK_N] within the expert's matrix
    w1_ptrs = W1 + expert * stride_we + w_offsets
    w3_ptrs = W3 + expert * stride_we + w_offsets
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_K):
        if HIDDEN % BLOCK_K == 0:
            x_mask = valid[:, None]
            w_mask = col_ok[None, :]
        else:
            k_ok = ks < HIDDEN - k0
            x_mask = valid[:, None] & k_ok[None, :]
            w_mask = col_ok[None, :] & k_ok[:, None]
        x = _operand(tl.load(x_ptrs, mask=x_mask, other=0.0), UPCAST)
        w1 = _operand(tl.load(w1_ptrs, mask=w_mask, other=0.0), UPCAST)
        w3 = _operand(tl.load(w3_ptrs, mask=w_mask, other=0.0), UPCAST)
        gate = tl.dot(x, w1, gate, input_precision=PRECISION)
        up = tl.dot(x, w3, up, input_precision=PRECISION)
        x_ptrs += BLOCK_K
        w1_ptrs += BLOCK_K
        w3_ptrs += BLOCK_K
    store_swiglu(H, gate, up, limit, rows, cols, stride_h, valid[:, None] & col_ok[None, :], CLAMP)


@triton.jit
def _down_kernel(
    H,
    W2,
    OUT,
    PAIR_IDS,
    TILE_EXPERT,
    ROUTE,
    n_pairs,
    n_experts,
    n_tiles,
    stride_h,
    stride_we,
    stride_wn,
    stride_out,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    expert, rows, pair, valid, cols, col_ok = _tile_rows(
        PAIR_IDS, TILE_EXPERT, n_pairs, n_tiles, HIDDEN, BLOCK_M, BLOCK_N, GROUP_M
    )
    if expert >= n_experts:
        return
    ks = tl.arange(0, BLOCK_K)
    h_ptrs = H + rows[:, None].to(tl.int64) * stride_h + ks[None, :]
    w_ptrs = W2 + expert * stride_we + (cols[None, :] * stride_wn + ks[:, None])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, INTER, BLOCK_K):
        if INTER % BLOCK_K == 0:
            h_mask = valid[:, None]
            w_mask = col_ok[None, :]
        else:
            k_ok = ks < INTER - k0
            h_mask = valid[:, None] & k_ok[None, :]
            w_mask = col_ok[None, :] & k_ok[:, None]
        h = _operand(tl.load(h_ptrs, mask=h_mask, other=0.0), UPCAST)
        w2 = _operand(tl.load(w_ptrs, mask=w_mask, other=0.0), UPCAST)
        acc = tl.dot(h, w2, acc, input_precision=PRECISION)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    _store_weighted(OUT, acc, ROUTE, pair, valid, cols, col_ok, stride_out)


def grouped_moe_triton(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor,
    swiglu_limit: float,
    *,
    tiles: TileConfig | None = None,
    experts: ExpertSlice | None = None,
    add: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The routed experts' summed output `[N, hidden]` (plus `add`, in `out_dtype`: `sum_pairs`), from the
    stacked projections w1/w3 `[E, inter, hidden]` and w2 `[E, hidden, inter]`; `tiles` overrides
    `choose_tiles`; with `experts` the stacks hold only that slice and the other experts' pairs add
    nothing."""
    n_tokens, hidden = x.shape
    top_k = indices.shape[1]
    n_pairs = n_tokens * top_k
    n_experts, inter, _ = w1.shape
    if any(w.stride(-1) != 1 or w.dtype != x.dtype for w in (w1, w2, w3)):
        raise ValueError(f"the expert stacks must be row-major in the activations' dtype ({x.dtype})")
    if n_pairs == 0:
        return sum_pairs(x.new_empty(0, hidden), x, add=add, out_dtype=out_dtype)
    x = x.contiguous()
    plan = plan_launches(x, weights, indices, n_experts=n_experts, inter=inter, tiles=tiles, experts=experts)
    tiles, groups, h, pair_out = plan.tiles, plan.groups, plan.h, plan.pair_out
    _gate_up_kernel[(groups.n_tiles * triton.cdiv(inter, tiles.gate_up_n),)](
        x,
        w1,
        w3,
        h,
        groups.pair_ids,
        groups.tile_expert,
        n_pairs,
        top_k,
        n_experts,
        groups.n_tiles,
        float(swiglu_limit),
        x.stride(0),
        w1.stride(0),
        w1.stride(1),
        h.stride(0),
        HIDDEN=hidden,
        INTER=inter,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.gate_up_n,
        BLOCK_K=tiles.block_k,
        GROUP_M=tiles.group_m,
        CLAMP=swiglu_limit > 0,
        PRECISION=plan.precision,
        UPCAST=plan.upcast,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **pdl_launch(x.device),
    )
    _down_kernel[(groups.n_tiles * triton.cdiv(hidden, tiles.down_n),)](
        h,
        w2,
        pair_out,
        groups.pair_ids,
        groups.tile_expert,
        plan.route,
        n_pairs,
        n_experts,
        groups.n_tiles,
        h.stride(0),
        w2.stride(0),
        w2.stride(1),
        pair_out.stride(0),
        HIDDEN=hidden,
        INTER=inter,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.down_n,
        BLOCK_K=tiles.block_k,
        GROUP_M=tiles.group_m,
        PRECISION=plan.precision,
        UPCAST=plan.upcast,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **pdl_launch(h.device),
    )
    return plan.summed(x, add=add, out_dtype=out_dtype)
