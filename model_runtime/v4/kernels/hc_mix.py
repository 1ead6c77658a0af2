"""The mHC mappings a sub-block's merge needs, from its mixing logits: the post weights and the doubly
stochastic residual mix (Sinkhorn-Knopp), in float32. (The pre weights are the collapse's own:
`hc_streams.hc_collapse`.)

Contract: `logits` the `MixLogits` of `hc_premix(streams, fn)` with `fn` `[2·hc + hc², hc·D]`, `scale`
`[3]`, `base` `[2·hc + hc²]`; with `w` the finished logits (RMS epsilon `norm_eps`), returns `post`
`[N, hc]` = 2·sigmoid(w·s1 + b) and `comb` `[N, hc, hc]`: a row softmax of w·s2 + b plus eps, a column
normalisation, then `iters - 1` rounds of row and column normalisation.

* "reference": the PyTorch ops (about 80 launches for 20 iterations);
* "triton": one launch summing the logits' slices and computing the mappings, each program holding its
  token's hc×hc matrix in registers.
"""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.mix_logits import MixLogits


def hc_mix(
    logits: MixLogits,
    scale: torch.Tensor,
    base: torch.Tensor,
    *,
    hc: int,
    norm_eps: float,
    iters: int,
    eps: float,
    impl: KernelImpl,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(post, comb) from the logits (see the module docstring)."""
    mix = 2 * hc + hc * hc
    if logits.n_mix != mix or base.shape != (mix,) or scale.shape != (3,):
        raise ValueError(
            f"hc_mix needs {mix} logits, base [{mix}] and scale [3] for {hc} streams, got "
            f"{logits.n_mix}, {list(base.shape)}, {list(scale.shape)}"
        )
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_mix_triton import hc_mix_triton

        return hc_mix_triton(logits, scale, base, hc=hc, norm_eps=norm_eps, iters=iters, eps=eps)
    w = logits.logits(norm_eps)
    _, post_w, comb_w = w.split([hc, hc, hc * hc], dim=-1)
    _, post_b, comb_b = base.split([hc, hc, hc * hc])
    post = 2 * torch.sigmoid(post_w * scale[1] + post_b)
    comb = torch.softmax(comb_w.view(-1, hc, hc) * scale[2] + comb_b.view(hc, hc), dim=-1) + eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + eps)
    return post, comb
