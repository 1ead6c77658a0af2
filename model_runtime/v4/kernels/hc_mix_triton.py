"""The Triton kernel behind `hc_mix(..., impl="triton")` (contract in `hc_mix.py`).

Two launches: the premix's projection partials (`hc_streams_triton.premix_partials`), then this kernel,
which sums them into the logits and computes the mappings.

Grid: one program (one warp) per token. The warp's lanes share out the premix's slices (slice s on lane
s mod 32), each lane summing its slices' partials for all 24 logits; one cross-lane sum per logit is
broadcast back, so every lane holds a copy of the token (its pre and post weights, its hc×hc mix) in
`[..., LANES]` tiles, and the softmax and the Sinkhorn rounds (a chain of forty normalisations over four
numbers) reduce over the hc axes mostly inside a thread; the outputs are written by lane 0. Counted in the
sm_90 machine code (compiled on the CPU): 29 instructions a round, 4 of them shuffles, against 76 and 8
for the `[tokens, hc, hc]` tile this kernel had before.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.hc_streams_triton import premix_partials
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

_LANES = 32
"""Threads of the program's one warp, over which the premix's slices are shared out."""


@triton.jit
def _hc_mix_kernel(
    PART,
    SUMSQ,
    SCALE,
    BASE,
    PRE,
    POST,
    COMB,
    n_tokens,
    n_splits,
    k_total,
    norm_eps,
    eps,
    ITERS: tl.constexpr,
    HC: tl.constexpr,
    LANES: tl.constexpr,
    SPLITS: tl.constexpr,  # a multiple of LANES covering n_splits
    MIXP: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    token = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, LANES)
    i = tl.arange(0, HC)
    cells = i[:, None] * HC + i[None, :]  # [HC, HC] row-major
    sumsq = tl.zeros([LANES], tl.float32)
    pre_w = tl.zeros([HC, LANES], tl.float32)
    post_w = tl.zeros([HC, LANES], tl.float32)
    comb_w = tl.zeros([HC, HC, LANES], tl.float32)
    for first in tl.static_range(0, SPLITS, LANES):
        split = first + lane
        live = split < n_splits
        row = (split.to(tl.int64) * n_tokens + token) * MIXP  # [LANES]: this token's partials of the slice
        sumsq += tl.load(SUMSQ + split.to(tl.int64) * n_tokens + token, mask=live, other=0.0)
        pre_w += tl.load(PART + row[None, :] + i[:, None], mask=live[None, :], other=0.0)
        post_w += tl.load(PART + row[None, :] + HC + i[:, None], mask=live[None, :], other=0.0)
        at = row[None, None, :] + 2 * HC + cells[:, :, None]
        comb_w += tl.load(PART + at, mask=live[None, None, :], other=0.0)
    inv = tl.rsqrt(tl.sum(sumsq, axis=0) / k_total + norm_eps)
    # every lane gets the token's sums back: the rounds below stay in the `[..., LANES]` tiles, each lane
    # holding a whole copy, so their reductions over the hc axes never leave a thread
    everywhere = lane * 0
    pre_w = tl.sum(pre_w, axis=1)[:, None] * inv
    post_w = tl.sum(post_w, axis=1)[:, None] * inv
    pre = tl.sigmoid(pre_w * tl.load(SCALE) + tl.load(BASE + i[:, None] + everywhere[None, :])) + eps
    post_b = tl.load(BASE + HC + i[:, None] + everywhere[None, :])
    post = 2.0 * tl.sigmoid(post_w * tl.load(SCALE + 1) + post_b)
    comb_b = tl.load(BASE + 2 * HC + cells[:, :, None] + everywhere[None, None, :])
    logits = tl.sum(comb_w, axis=2)[:, :, None] * inv * tl.load(SCALE + 2) + comb_b
    logits = logits - tl.max(logits, axis=1)[:, None, :]
    comb = tl.exp(logits)
    comb = comb / tl.sum(comb, axis=1)[:, None, :] + eps
    comb = comb / (tl.sum(comb, axis=0)[None, :, :] + eps)
    for _ in range(ITERS - 1):
        comb = comb / (tl.sum(comb, axis=1)[:, None, :] + eps)
        comb = comb / (tl.sum(comb, axis=0)[None, :, :] + eps)
    first = lane == 0
    tl.store(PRE + token * HC + i[:, None] + everywhere[None, :], pre, mask=first[None, :])
    tl.store(POST + token * HC + i[:, None] + everywhere[None, :], post, mask=first[None, :])
    at = token * (HC * HC) + cells[:, :, None] + everywhere[None, None, :]
    tl.store(COMB + at, comb, mask=first[None, None, :])


def hc_mix_triton(
    streams: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    *,
    norm_eps: float,
    iters: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, hc = streams.shape[:2]
    pre = torch.empty(n, hc, dtype=torch.float32, device=streams.device)
    post = torch.empty_like(pre)
    comb = torch.empty(n, hc, hc, dtype=torch.float32, device=streams.device)
    if n == 0:
        return pre, post, comb
    partials = premix_partials(streams, fn, norm_eps)
    assert partials is not None
    _hc_mix_kernel[(n,)](
        partials.part,
        partials.sumsq,
        scale.float().contiguous(),
        base.float().contiguous(),
        pre,
        post,
        comb,
        n,
        partials.splits,
        partials.k_total,
        norm_eps,
        eps,
        ITERS=iters,
        HC=hc,
        LANES=_LANES,
        SPLITS=triton.cdiv(partials.splits, _LANES) * _LANES,
        MIXP=partials.part.shape[2],
        num_warps=1,
        **pdl_launch(pre.device),
    )
    return pre, post, comb
