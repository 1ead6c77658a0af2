"""The mHC mappings of one sub-block from its mixing logits: pre and post weights and the doubly
stochastic residual mix (Sinkhorn-Knopp), all in float32.

Contract: `mixes` `[N, 2·hc + hc²]` (the streams' RMS-normed projection by `hc_*_fn`), `scale` `[3]`,
`base` `[2·hc + hc²]`; returns `pre` `[N, hc]` = sigmoid(w·s0 + b) + eps, `post` `[N, hc]` =
2·sigmoid(w·s1 + b), and `comb` `[N, hc, hc]`: a row softmax of w·s2 + b plus eps, a column
normalisation, then `iters - 1` rounds of row and column normalisation.

* "reference": the PyTorch ops (about 80 launches for 20 iterations);
* "triton": one launch, each program holding its tokens' hc×hc matrices in registers.
"""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.kernels.impl import KernelImpl


def hc_mix(
    mixes: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    *,
    hc: int,
    iters: int,
    eps: float,
    impl: KernelImpl,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre, post, comb) from the mixing logits (see the module docstring)."""
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_mix_triton import hc_mix_triton

        return hc_mix_triton(mixes, scale, base, hc=hc, iters=iters, eps=eps)
    return hc_mix_reference(mixes, scale, base, hc=hc, iters=iters, eps=eps)


def hc_mix_reference(
    mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, *, hc: int, iters: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pre_w, post_w, comb_w = mixes.split([hc, hc, hc * hc], dim=-1)
    pre_b, post_b, comb_b = base.split([hc, hc, hc * hc])
    pre = torch.sigmoid(pre_w * scale[0] + pre_b) + eps
    post = 2 * torch.sigmoid(post_w * scale[1] + post_b)
    comb = torch.softmax(comb_w.view(-1, hc, hc) * scale[2] + comb_b.view(hc, hc), dim=-1) + eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    return pre, post, comb
