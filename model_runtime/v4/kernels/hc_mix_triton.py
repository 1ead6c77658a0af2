"""The Triton kernel behind `hc_mix(..., impl="triton")` (contract in `hc_mix.py`).

Grid: one program per block of tokens; each token's hc×hc mix lives in registers as a `[BN, hc, hc]` tile
through the softmax and every Sinkhorn round, so the whole mapping is one read of the logits and one
write of the three outputs. One warp per program: the rounds are a chain of tiny reductions, which stay
within a warp (shuffles) instead of crossing warps through shared memory and barriers; a decode step's
few tokens get a block of their own size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_TOKENS_PER_PROGRAM = 32


@triton.jit
def _hc_mix_kernel(
    MIXES,
    SCALE,
    BASE,
    PRE,
    POST,
    COMB,
    n_tokens,
    stride_mix,
    eps,
    ITERS: tl.constexpr,
    HC: tl.constexpr,
    BN: tl.constexpr,
):
    tokens = tl.program_id(0) * BN + tl.arange(0, BN)
    live = tokens < n_tokens
    lanes = tl.arange(0, HC)
    row = tokens[:, None] * stride_mix
    s0 = tl.load(SCALE)
    s1 = tl.load(SCALE + 1)
    s2 = tl.load(SCALE + 2)
    pre_w = tl.load(MIXES + row + lanes[None, :], mask=live[:, None], other=0.0)
    post_w = tl.load(MIXES + row + HC + lanes[None, :], mask=live[:, None], other=0.0)
    pre = tl.sigmoid(pre_w * s0 + tl.load(BASE + lanes)[None, :]) + eps
    post = 2.0 * tl.sigmoid(post_w * s1 + tl.load(BASE + HC + lanes)[None, :])
    cells = lanes[:, None] * HC + lanes[None, :]  # [HC, HC] row-major
    comb_w = tl.load(
        MIXES + row[:, :, None] + 2 * HC + cells[None, :, :], mask=live[:, None, None], other=0.0
    )
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
    mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, *, hc: int, iters: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = mixes.shape[0]
    mixes = mixes.float().contiguous()
    pre = torch.empty(n, hc, dtype=torch.float32, device=mixes.device)
    post = torch.empty_like(pre)
    comb = torch.empty(n, hc, hc, dtype=torch.float32, device=mixes.device)
    if n == 0:
        return pre, post, comb
    block = min(_TOKENS_PER_PROGRAM, triton.next_power_of_2(n))
    _hc_mix_kernel[(triton.cdiv(n, block),)](
        mixes,
        scale.float().contiguous(),
        base.float().contiguous(),
        pre,
        post,
        comb,
        n,
        mixes.stride(0),
        eps,
        ITERS=iters,
        HC=hc,
        BN=block,
        num_warps=1,
    )
    return pre, post, comb
