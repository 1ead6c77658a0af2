"""The Triton kernel behind `hc_mix` and `hc_merge_mix` with impl="triton" (contracts in `hc_mix.py`).

Two launches: the premix's projection partials (`hc_streams_triton.premix_partials`, or for
`hc_merge_mix` `merge_premix_partials`, which merges the streams in the same launch), then this kernel,
which sums them into the logits and computes the mappings. Grid: one program per block of tokens; each
token's logits are summed over the premix's slices and scaled by the streams' RMS, then its hc×hc mix lives
in registers as a `[BN, hc, hc]` tile through the softmax and every Sinkhorn round, so the mapping is one
read of the partials and one write of the three outputs. One warp per program: the rounds are a chain of
tiny reductions, which stay within a warp (shuffles) instead of crossing warps through shared memory and
barriers; a decode step's few tokens get a block of their own size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.hc_streams_triton import (
    PremixPartials,
    merge_premix_partials,
    premix_partials,
)
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

_TOKENS_PER_PROGRAM = 32
_PARTIALS_PER_PROGRAM = 128
"""Premix slices × tokens a program sums at most (its registers: 24 logits each over one warp)."""


@triton.jit
def _lane_logits(
    PART, tokens, live, lanes, n_tokens, n_splits, inv, SPLITS: tl.constexpr, MIXP: tl.constexpr
):
    """The scaled logits at columns `lanes` `[C]` of `tokens` `[BN]`: `[BN, C]`, summed over the slices."""
    splits = tl.arange(0, SPLITS)
    at = (splits[:, None, None] * n_tokens + tokens[None, :, None]) * MIXP + lanes[None, None, :]
    mask = (splits < n_splits)[:, None, None] & live[None, :, None]
    return tl.sum(tl.load(PART + at, mask=mask, other=0.0), axis=0) * inv[:, None]


@triton.jit
def _cell_logits(
    PART, tokens, live, cells, n_tokens, n_splits, inv, SPLITS: tl.constexpr, MIXP: tl.constexpr
):
    """The scaled logits at columns `cells` `[C, C]` of `tokens` `[BN]`: `[BN, C, C]`."""
    splits = tl.arange(0, SPLITS)
    at = (splits[:, None, None, None] * n_tokens + tokens[None, :, None, None]) * MIXP + cells[
        None, None, :, :
    ]
    mask = (splits < n_splits)[:, None, None, None] & live[None, :, None, None]
    return tl.sum(tl.load(PART + at, mask=mask, other=0.0), axis=0) * inv[:, None, None]


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
    BN: tl.constexpr,
    SPLITS: tl.constexpr,
    MIXP: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    tokens = tl.program_id(0) * BN + tl.arange(0, BN)
    live = tokens < n_tokens
    lanes = tl.arange(0, HC)
    splits = tl.arange(0, SPLITS)
    sumsq = tl.load(
        SUMSQ + splits[:, None] * n_tokens + tokens[None, :],
        mask=(splits < n_splits)[:, None] & live[None, :],
        other=0.0,
    )
    inv = tl.rsqrt(tl.sum(sumsq, axis=0) / k_total + norm_eps)
    s0 = tl.load(SCALE)
    s1 = tl.load(SCALE + 1)
    s2 = tl.load(SCALE + 2)
    pre_w = _lane_logits(PART, tokens, live, lanes, n_tokens, n_splits, inv, SPLITS, MIXP)
    post_w = _lane_logits(PART, tokens, live, HC + lanes, n_tokens, n_splits, inv, SPLITS, MIXP)
    pre = tl.sigmoid(pre_w * s0 + tl.load(BASE + lanes)[None, :]) + eps
    post = 2.0 * tl.sigmoid(post_w * s1 + tl.load(BASE + HC + lanes)[None, :])
    cells = lanes[:, None] * HC + lanes[None, :]  # [HC, HC] row-major
    comb_w = _cell_logits(PART, tokens, live, 2 * HC + cells, n_tokens, n_splits, inv, SPLITS, MIXP)
    logits = comb_w * s2 + tl.load(BASE + 2 * HC + cells)[None, :, :]
    logits = logits - tl.max(logits, axis=2)[:, :, None]
    comb = tl.exp(logits)
    comb = comb / tl.sum(comb, axis=2)[:, :, None] + eps
    comb = comb / (tl.sum(comb, axis=1)[:, None, :] + eps)
    for _ in range(ITERS - 1):
        comb = comb / (tl.sum(comb, axis=2)[:, :, None] + eps)
        comb = comb / (tl.sum(comb, axis=1)[:, None, :] + eps)
    out = tokens[:, None] * HC + lanes[None, :]
    tl.store(PRE + out, pre, mask=live[:, None])
    tl.store(POST + out, post, mask=live[:, None])
    tl.store(COMB + tokens[:, None, None] * (HC * HC) + cells[None, :, :], comb, mask=live[:, None, None])


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
    partials = premix_partials(streams, fn, norm_eps) if n else None
    return _mappings(partials, n, hc, scale, base, norm_eps=norm_eps, iters=iters, eps=eps)


def hc_merge_mix_triton(
    block_out: torch.Tensor,
    streams: torch.Tensor,
    post: torch.Tensor,
    comb: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    *,
    norm_eps: float,
    iters: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, hc = streams.shape[:2]
    if n == 0:
        merged = torch.empty_like(streams)
        return merged, *_mappings(None, 0, hc, scale, base, norm_eps=norm_eps, iters=iters, eps=eps)
    merged, partials = merge_premix_partials(block_out, streams, post, comb, fn, norm_eps)
    return merged, *_mappings(partials, n, hc, scale, base, norm_eps=norm_eps, iters=iters, eps=eps)


def _mappings(
    partials: PremixPartials | None,
    n: int,
    hc: int,
    scale: torch.Tensor,
    base: torch.Tensor,
    *,
    norm_eps: float,
    iters: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre, post, comb) of `n` tokens from their premix partials (None only when `n` is 0)."""
    pre = torch.empty(n, hc, dtype=torch.float32, device=base.device)
    post = torch.empty_like(pre)
    comb = torch.empty(n, hc, hc, dtype=torch.float32, device=base.device)
    if partials is None:
        return pre, post, comb
    splits = triton.next_power_of_2(partials.splits)
    block = min(_TOKENS_PER_PROGRAM, triton.next_power_of_2(n), max(1, _PARTIALS_PER_PROGRAM // splits))
    _hc_mix_kernel[(triton.cdiv(n, block),)](
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
        BN=block,
        SPLITS=splits,
        MIXP=partials.part.shape[2],
        num_warps=1,
        **pdl_launch(pre.device),
    )
    return pre, post, comb
