"""The Triton kernel behind `route_experts(..., impl="triton")` (contract in `route_experts.py`).

A program per token holds its `E` logits (E ≤ a few hundred: one tile), turns them into scores, and picks
its k experts one at a time: the largest score + bias left, of ties the lowest id, then masked out
(k ≤ 8 passes over one tile). With `hashed` the picks are the token's given ids. The picked scores are
normalised and scaled in registers; weights and indices are written once."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch
from deepscout.model_runtime.v4.model_config import ScoringFunc

_SCORE_CODES: dict[ScoringFunc, int] = {"sqrtsoftplus": 0, "sigmoid": 1, "softmax": 2}


@triton.jit
def _route_kernel(
    LOGITS,
    BIAS,
    HASHED,
    WEIGHTS,
    INDICES,
    n_experts,
    stride_l,
    scale,
    TOP_K: tl.constexpr,
    KP: tl.constexpr,
    BLOCK_E: tl.constexpr,
    SCORE: tl.constexpr,  # 0: sqrt(softplus), 1: sigmoid, 2: softmax over the experts
    HASH: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    token = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    live = e < n_experts
    logit = tl.load(LOGITS + token * stride_l + e, mask=live, other=0.0)
    if SCORE == 0:
        # softplus as torch computes it (the identity above 20), then its square root
        score = tl.sqrt(tl.where(logit > 20.0, logit, tl.log(1.0 + tl.exp(tl.minimum(logit, 20.0)))))
    elif SCORE == 1:
        score = tl.sigmoid(logit)
    else:
        shifted = tl.exp(tl.where(live, logit, float("-inf")) - tl.max(tl.where(live, logit, float("-inf"))))
        score = shifted / tl.sum(shifted)
    score = tl.where(live, score, 0.0)
    if not HASH:
        ranked = tl.where(live, score + tl.load(BIAS + e, mask=live, other=0.0), float("-inf"))
    slot = tl.arange(0, KP)
    picks = tl.zeros([KP], tl.int32)
    picked = tl.zeros([KP], tl.float32)
    for j in tl.static_range(TOP_K):
        if HASH:
            pick = tl.load(HASHED + token * TOP_K + j).to(tl.int32)
        else:
            best = tl.max(ranked)
            pick = tl.min(tl.where(ranked == best, e, BLOCK_E))
            ranked = tl.where(e == pick, float("-inf"), ranked)
        picks = tl.where(slot == j, pick, picks)
        picked = tl.where(slot == j, tl.sum(tl.where(e == pick, score, 0.0)), picked)
    weights = picked / (tl.sum(picked) + 1e-20) * scale
    keep = slot < TOP_K
    tl.store(WEIGHTS + token * TOP_K + slot, weights, mask=keep)
    tl.store(INDICES + token * TOP_K + slot, picks.to(tl.int64), mask=keep)


def route_experts_triton(
    logits: torch.Tensor,
    score_func: ScoringFunc,
    top_k: int,
    scale: float,
    bias: torch.Tensor | None,
    hashed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    n_tokens, n_experts = logits.shape
    weights = torch.empty(n_tokens, top_k, dtype=torch.float32, device=logits.device)
    indices = torch.empty(n_tokens, top_k, dtype=torch.int64, device=logits.device)
    if n_tokens == 0:
        return weights, indices
    logits = logits.float().contiguous()
    _route_kernel[(n_tokens,)](
        logits,
        logits if bias is None else bias.float().contiguous(),
        logits if hashed is None else hashed.contiguous(),
        weights,
        indices,
        n_experts,
        logits.stride(0),
        float(scale),
        TOP_K=top_k,
        KP=triton.next_power_of_2(top_k),
        BLOCK_E=triton.next_power_of_2(n_experts),
        SCORE=_SCORE_CODES[score_func],
        HASH=hashed is not None,
        num_warps=4 if n_experts > 128 else 1,
        **pdl_launch(logits.device),
    )
    return weights, indices
