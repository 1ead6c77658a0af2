"""The mHC mappings of one sub-block from its streams: pre and post weights and the doubly stochastic
residual mix (Sinkhorn-Knopp), all in float32.

Contract: `streams` `[N, hc, D]`, `fn` `[2·hc + hc², hc·D]`, `scale` `[3]`, `base` `[2·hc + hc²]`; the
logits `w` are `hc_premix(streams, fn, norm_eps)` (`hc_streams.py`: the RMS-normed streams' projection);
returns `pre` `[N, hc]` = sigmoid(w·s0 + b) + eps, `post` `[N, hc]` = 2·sigmoid(w·s1 + b), and `comb`
`[N, hc, hc]`: a row softmax of w·s2 + b plus eps, a column normalisation, then `iters - 1` rounds of row
and column normalisation.

* "reference": `hc_premix`'s reference, then the PyTorch ops (about 80 launches for 20 iterations);
* "triton": two launches, the premix's partial projections and one kernel summing them and computing the
  mappings, each program holding its tokens' hc×hc matrices in registers.
"""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.kernels.hc_streams import hc_premix
from deepscout.model_runtime.v4.kernels.impl import KernelImpl


def hc_mix(
    streams: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    *,
    norm_eps: float,
    iters: int,
    eps: float,
    impl: KernelImpl,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pre, post, comb) of the streams (see the module docstring)."""
    hc = streams.shape[1]
    if fn.shape[0] != 2 * hc + hc * hc or base.shape != (fn.shape[0],) or scale.shape != (3,):
        raise ValueError(
            f"hc_mix needs fn [{2 * hc + hc * hc}, hc·D], base [{2 * hc + hc * hc}] and scale [3] for "
            f"{hc} streams, got {list(fn.shape)}, {list(base.shape)}, {list(scale.shape)}"
        )
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_mix_triton import hc_mix_triton

        return hc_mix_triton(streams, fn, scale, base, norm_eps=norm_eps, iters=iters, eps=eps)
    mixes = hc_premix(streams, fn, norm_eps, impl="reference")
    return hc_mix_reference(mixes, scale, base, hc=hc, iters=iters, eps=eps)


def hc_mix_reference(
    mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, *, hc: int, iters: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mappings from the logits `mixes` `[N, 2·hc + hc²]`."""
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
