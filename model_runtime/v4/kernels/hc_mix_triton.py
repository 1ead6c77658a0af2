"""The Triton kernel behind `hc_mix(..., impl="triton")` (contract in `hc_mix.py`).

One launch after the premix (`hc_streams_triton`, which leaves the logits in slices): it sums the slices
into the logits and computes the mappings.

Grid: one program (one warp) per token. The warp's lanes share out the premix's slices (slice s on lane
s mod 32), each lane summing its slices' partials for the post and mix logits; one cross-lane sum per
logit is broadcast back, so every lane holds a copy of the token (its post weights, its hc×hc mix) in
`[..., LANES]` tiles, and the softmax and the Sinkhorn rounds (a chain of forty normalisations over four
numbers) reduce over the hc axes mostly inside a thread; the outputs are written by lane 0. Counted in the
sm_90 machine code (compiled on the CPU): 29 instructions a round, 4 of them shuffles, against 76 and 8
for the `[tokens, hc, hc]` tile this kernel had before.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.mix_logits import MixLogits
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

_LANES = 32
"""Threads of the program's one warp, over which the premix's slices are shared out."""


@triton.jit
def _hc_mix_kernel(
    PART,
    SUMSQ,
    SCALE,
    BASE,
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
    post_w = tl.zeros([HC, LANES], tl.float32)
    comb_w = tl.zeros([HC, HC, LANES], tl.float32)
    for first in tl.static_range(0, SPLITS, LANES):
        split = first + lane
        live = split < n_splits
        row = (split.to(tl.int64) * n_tokens + token) * MIXP  # [LANES]: this token's partials of the slice
        sumsq += tl.load(SUMSQ + split.to(tl.int64) * n_tokens + token, mask=live, other=0.0)
        post_w += tl.load(PART + row[None, :] + HC + i[:, None], mask=live[None, :], other=0.0)
        at = row[None, None, :] + 2 * HC + cells[:, :, None]
        comb_w += tl.load(PART + at, mask=live[None, None, :], other=0.0)
    inv = tl.rsqrt(tl.sum(sumsq, axis=0) / k_total + norm_eps)
    # every lane gets the token's sums back: the rounds below stay in the `[..., LANES]` tiles, each lane
    # holding a whole copy, so their reductions over the hc axes never leave a thread
    everywhere = lane * 0
    post_w = tl.sum(post_w, axis=1)[:, None] * inv
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
    tl.store(POST + token * HC + i[:, None] + everywhere[None, :], post, mask=first[None, :])
    at = token * (HC * HC) + cells[:, :, None] + everywhere[None, None, :]
    tl.store(COMB + at, comb, mask=first[None, None, :])


def hc_mix_triton(
    logits: MixLogits,
    scale: torch.Tensor,
    base: torch.Tensor,
    *,
    hc: int,
    norm_eps: float,
    iters: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    n = logits.part.shape[1]
    device = logits.part.device
    post = torch.empty(n, hc, dtype=torch.float32, device=device)
    comb = torch.empty(n, hc, hc, dtype=torch.float32, device=device)
    if n == 0:
        return post, comb
    _hc_mix_kernel[(n,)](
        logits.part,
        logits.sumsq,
        scale.float().contiguous(),
        base.float().contiguous(),
        post,
        comb,
        n,
        logits.splits,
        logits.k_total,
        norm_eps,
        eps,
        ITERS=iters,
        HC=hc,
        LANES=_LANES,
        SPLITS=triton.cdiv(logits.splits, _LANES) * _LANES,
        MIXP=logits.part.shape[2],
        num_warps=1,
        **pdl_launch(device),
    )
    return post, comb
