"""The Triton kernels behind `route_experts(..., impl="triton")` (contract in `route_experts.py`).

The choice (`_route_rows`, shared by both kernels): a tile of tokens holds their `E` logits each (E ≤ a few
hundred: one tile), turns them into scores, and picks every token's k experts one at a time: the largest
score + bias left, of ties the lowest id, then masked out (k ≤ 8 passes over the tile). With `hashed` the
picks are the tokens' given ids. The picked scores are normalised and scaled in registers; weights and
indices are written once.

A decode batch (N ≤ `FUSED_MAX_ROWS`) takes one launch, `_gate_route_kernel`: a program per
`EXPERTS_PER_PROGRAM` experts (256 programs for V4's 256 experts, so the float32 weight, 4 MB at V4's width,
is read by all the SMs at once) computes its experts' logits for all N tokens (reading `x` in its own dtype,
accumulating in float32), stores them into a float32 workspace `[N, E]`, then takes a ticket from the
`arrivals` counter (an acq_rel atomic add, after a barrier of the program's threads, so its stores are
published first). The program that arrives last resets the counter to zero (the next launch, a CUDA-graph
replay too, starts from zero) and routes the N tokens from the workspace, read through L2 (`.cg`) so the
other programs' stores are seen. No program waits for another, so any launch order completes, the
interpreter's one-after-another included.

Above the row limit: the logits by `F.linear` in float32, then `_route_kernel`, a program per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch
from deepscout.model_runtime.v4.model_config import ScoringFunc

_SCORE_CODES: dict[ScoringFunc, int] = {"sqrtsoftplus": 0, "sigmoid": 1, "softmax": 2}

FUSED_MAX_ROWS = 8
"""The most tokens the single launch takes: a decode batch. Registers bound it (the last program holds an
`[N, E]` tile per array, every program an `[N, step]` block of `x`), and its time grows with N while the
other SMs idle in its routing tail. Measured on an H200 (E 256, D 4096, bf16 `x`, float32 weight, in a CUDA
graph): about 6 µs a layer at N = 1 and 12 µs at N = 8, against 10 and 25 µs for the two-step path; measure
again before raising it."""

EXPERTS_PER_PROGRAM = 1
"""Experts whose logits one program of the single launch computes: V4's 256 experts give 256 programs
(about two per SM of an H100/H200), each reading 16 KB of the float32 weight. On an H200 one was as fast as
two at N ≤ 4 and faster at N = 8 (each program re-reads `x`, so fewer experts a program cost little), and
four slower throughout."""

PRODUCT_ELEMENTS = 16384
"""The single launch's products per step of its loop over the hidden size (tokens × experts × columns, at
most): fewer tokens take wider steps (at V4's width one step for a single token). The fastest of 4096,
8192 and 16384 on an H200."""


@triton.jit
def _route_rows(
    logit,
    rows,
    BIAS,
    HASHED,
    WEIGHTS,
    INDICES,
    n_tokens,
    n_experts,
    scale,
    TOP_K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_E: tl.constexpr,
    SCORE: tl.constexpr,  # 0: sqrt(softplus), 1: sigmoid, 2: softmax over the experts
    HASH: tl.constexpr,
):
    """Route the tokens `rows` (`[R]`; those ≥ n_tokens are padding, not written) from their float32 logits
    `logit` (`[R, BLOCK_E]`; the columns ≥ n_experts are ignored)."""
    e = tl.arange(0, BLOCK_E)[None, :]
    live = e < n_experts
    valid = rows < n_tokens
    if SCORE == 0:
        # softplus as torch computes it (the identity above 20), then its square root
        score = tl.sqrt(tl.where(logit > 20.0, logit, tl.log(1.0 + tl.exp(tl.minimum(logit, 20.0)))))
    elif SCORE == 1:
        score = tl.sigmoid(logit)
    else:
        masked = tl.where(live, logit, float("-inf"))
        shifted = tl.exp(masked - tl.max(masked, axis=1)[:, None])
        score = shifted / tl.sum(shifted, axis=1)[:, None]
    score = tl.where(live, score, 0.0)
    if not HASH:
        ranked = tl.where(live, score + tl.load(BIAS + e, mask=live, other=0.0), float("-inf"))
    slot = tl.arange(0, KP)[None, :]
    picks = tl.zeros([rows.shape[0], KP], tl.int32)
    picked = tl.zeros([rows.shape[0], KP], tl.float32)
    for j in tl.static_range(TOP_K):
        if HASH:
            pick = tl.load(HASHED + rows * TOP_K + j, mask=valid, other=0).to(tl.int32)
        else:
            best = tl.max(ranked, axis=1)
            pick = tl.min(tl.where(ranked == best[:, None], e, BLOCK_E), axis=1)
            ranked = tl.where(e == pick[:, None], float("-inf"), ranked)
        picks = tl.where(slot == j, pick[:, None], picks)
        chosen = tl.sum(tl.where(e == pick[:, None], score, 0.0), axis=1)
        picked = tl.where(slot == j, chosen[:, None], picked)
    weights = picked / (tl.sum(picked, axis=1)[:, None] + 1e-20) * scale
    out = rows[:, None] * TOP_K + slot
    keep = valid[:, None] & (slot < TOP_K)
    tl.store(WEIGHTS + out, weights, mask=keep)
    tl.store(INDICES + out, picks.to(tl.int64), mask=keep)


@triton.jit
def _route_kernel(
    LOGITS,
    BIAS,
    HASHED,
    WEIGHTS,
    INDICES,
    n_tokens,
    n_experts,
    stride_l,
    scale,
    TOP_K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_E: tl.constexpr,
    SCORE: tl.constexpr,
    HASH: tl.constexpr,
    PDL: tl.constexpr,
):
    """A program per token: its choice from precomputed float32 logits."""
    enter_pdl(PDL)
    rows = tl.program_id(0).to(tl.int64) + tl.arange(0, 1)
    e = tl.arange(0, BLOCK_E)[None, :]
    logit = tl.load(LOGITS + rows[:, None] * stride_l + e, mask=e < n_experts, other=0.0)
    _route_rows(
        logit,
        rows,
        BIAS,
        HASHED,
        WEIGHTS,
        INDICES,
        n_tokens,
        n_experts,
        scale,
        TOP_K,
        KP,
        BLOCK_E,
        SCORE,
        HASH,
    )


@triton.jit
def _gate_route_kernel(
    X,
    W,
    LOGITS,
    ARRIVALS,
    BIAS,
    HASHED,
    WEIGHTS,
    INDICES,
    n_tokens,
    n_experts,
    dim,
    stride_x,
    stride_w,
    scale,
    BLOCK_N: tl.constexpr,
    EXPERTS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TOP_K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_E: tl.constexpr,
    SCORE: tl.constexpr,
    HASH: tl.constexpr,
    PDL: tl.constexpr,
):
    """The single launch: a program per `EXPERTS` experts, the last to arrive routes (module docstring)."""
    enter_pdl(PDL)
    rows = tl.arange(0, BLOCK_N)
    experts = tl.program_id(0) * EXPERTS + tl.arange(0, EXPERTS)
    token_live = rows[:, None] < n_tokens
    expert_live = experts[:, None] < n_experts
    acc = tl.zeros([BLOCK_N, EXPERTS], tl.float32)
    for start in range(0, dim, BLOCK_D):
        cols = start + tl.arange(0, BLOCK_D)[None, :]
        xs = tl.load(X + rows[:, None] * stride_x + cols, mask=token_live & (cols < dim), other=0.0)
        ws = tl.load(W + experts[:, None] * stride_w + cols, mask=expert_live & (cols < dim), other=0.0)
        acc += tl.sum(xs.to(tl.float32)[:, None, :] * ws.to(tl.float32)[None, :, :], axis=2)
    tl.store(
        LOGITS + rows[:, None] * n_experts + experts[None, :], acc, mask=token_live & (experts < n_experts)
    )
    tl.debug_barrier()  # every thread's stores are issued before the ticket's release publishes them
    ticket = tl.atomic_add(ARRIVALS, 1, sem="acq_rel")
    if ticket == tl.num_programs(0) - 1:
        tl.store(ARRIVALS, 0)
        e = tl.arange(0, BLOCK_E)[None, :]
        workspace = LOGITS + rows[:, None] * n_experts + e
        logit = tl.load(workspace, mask=token_live & (e < n_experts), other=0.0, cache_modifier=".cg")
        _route_rows(
            logit,
            rows,
            BIAS,
            HASHED,
            WEIGHTS,
            INDICES,
            n_tokens,
            n_experts,
            scale,
            TOP_K,
            KP,
            BLOCK_E,
            SCORE,
            HASH,
        )


def route_experts_triton(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    score_func: ScoringFunc,
    top_k: int,
    scale: float,
    bias: torch.Tensor | None,
    hashed: torch.Tensor | None,
    arrivals: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The choice for operands `route_experts` has checked: one launch up to `FUSED_MAX_ROWS` tokens."""
    n_tokens, n_experts = x.shape[0], weight.shape[0]
    weights = torch.empty(n_tokens, top_k, dtype=torch.float32, device=x.device)
    indices = torch.empty(n_tokens, top_k, dtype=torch.int64, device=x.device)
    if n_tokens == 0:
        return weights, indices
    bias = None if bias is None else bias.float().contiguous()
    hashed = None if hashed is None else hashed.contiguous()
    choice = {
        "TOP_K": top_k,
        "KP": triton.next_power_of_2(top_k),
        "BLOCK_E": triton.next_power_of_2(n_experts),
        "SCORE": _SCORE_CODES[score_func],
        "HASH": hashed is not None,
    }
    if n_tokens > FUSED_MAX_ROWS:
        logits = F.linear(x.float(), weight.float())
        _route_kernel[(n_tokens,)](
            logits,
            logits if bias is None else bias,
            logits if hashed is None else hashed,
            weights,
            indices,
            n_tokens,
            n_experts,
            logits.stride(0),
            float(scale),
            **choice,
            num_warps=4 if n_experts > 128 else 1,
            **pdl_launch(x.device),
        )
        return weights, indices
    _launch_fused(x, weight, bias, hashed, arrivals, weights, indices, float(scale), choice)
    return weights, indices


def _launch_fused(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    hashed: torch.Tensor | None,
    arrivals: torch.Tensor | None,
    weights: torch.Tensor,
    indices: torch.Tensor,
    scale: float,
    choice: dict[str, int | bool],
) -> None:
    """`_gate_route_kernel` over the experts' blocks, writing `weights` and `indices`."""
    x, weight = x.contiguous(), weight.contiguous()
    (n_tokens, dim), n_experts = x.shape, weight.shape[0]
    if arrivals is None:
        arrivals = torch.zeros(1, dtype=torch.int32, device=x.device)
    logits = torch.empty(n_tokens, n_experts, dtype=torch.float32, device=x.device)
    block_n = triton.next_power_of_2(n_tokens)
    _gate_route_kernel[(triton.cdiv(n_experts, EXPERTS_PER_PROGRAM),)](
        x,
        weight,
        logits,
        arrivals,
        logits if bias is None else bias,
        logits if hashed is None else hashed,
        weights,
        indices,
        n_tokens,
        n_experts,
        dim,
        x.stride(0),
        weight.stride(0),
        scale,
        BLOCK_N=block_n,
        EXPERTS=EXPERTS_PER_PROGRAM,
        BLOCK_D=min(triton.next_power_of_2(dim), PRODUCT_ELEMENTS // (block_n * EXPERTS_PER_PROGRAM)),
        **choice,
        num_warps=4,
        **pdl_launch(x.device),
    )
