"""Manifold-constrained hyper-connections (mHC): `hc_mult` residual streams per token instead of one.

Around each attention and MoE sub-block the streams `[n, hc, dim]` are collapsed to the sub-block's input
(`pre` weights; the sub-block's RMS norm applied in the same pass), and its output is spread back (`post`
weights) while the streams mix through a doubly stochastic matrix (Sinkhorn-Knopp). The hyper-head
collapses the final streams, with the output norm.
Mappings are computed in float32. Parameter names follow the official checkpoints (`hc_attn_fn`, ...).
The stream passes (mixing logits, collapse, merge) are `kernels/hc_streams.py`, the mappings from the
logits `kernels/hc_mix.py`; `kernels` picks their reference or fused paths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepscout.model_runtime.v4.kernels import hc_streams
from deepscout.model_runtime.v4.kernels.hc_mix import hc_mix
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.model.primitives import RMSNorm
from deepscout.model_runtime.v4.model_config import ModelArgs


@dataclass(frozen=True)
class HcSettings:
    """mHC constants: Sinkhorn iterations, the numerical floor, and the RMS-norm epsilon."""

    sinkhorn_iters: int
    eps: float
    norm_eps: float

    @classmethod
    def of(cls, args: ModelArgs) -> HcSettings:
        return cls(args.hc_sinkhorn_iters, args.hc_eps, args.rms_norm_eps)


def hc_split(
    streams: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    norm: RMSNorm,
    hc: HcSettings,
    dtype: torch.dtype,
    kernels: KernelImpl = "reference",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC mappings from streams `[n, hc, dim]`: the sub-block's input `[n, dim]` (the collapse, normed by
    `norm`, in `dtype`), post `[n, hc]`, and the doubly-stochastic (Sinkhorn-Knopp) residual mix
    `[n, hc, hc]`, the latter two in float32."""
    iters = hc.sinkhorn_iters
    pre, post, comb = hc_mix(
        streams, fn, scale, base, norm_eps=hc.norm_eps, iters=iters, eps=hc.eps, impl=kernels
    )
    x = hc_streams.hc_collapse(streams, pre, norm.weight, norm.eps, dtype, impl=kernels)
    return x, post, comb


def hc_merge(
    block_out: torch.Tensor,
    streams: torch.Tensor,
    post: torch.Tensor,
    comb: torch.Tensor,
    kernels: KernelImpl = "reference",
) -> torch.Tensor:
    """New streams: post-weighted block output plus the residual streams mixed by comb^T."""
    return hc_streams.hc_merge(block_out, streams, post, comb, impl=kernels)


def hc_head_parameters(args: ModelArgs) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """Fresh hyper-head parameters `(hc_head_fn, hc_head_base, hc_head_scale)`, in registration order."""
    hc_dim = args.hc_mult * args.hidden_size
    return (
        nn.Parameter(torch.zeros(args.hc_mult, hc_dim, dtype=torch.float32)),
        nn.Parameter(torch.zeros(args.hc_mult, dtype=torch.float32)),
        nn.Parameter(torch.ones(1, dtype=torch.float32)),
    )


def hc_head(
    streams: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    norm: RMSNorm,
    hc: HcSettings,
    dtype: torch.dtype,
    kernels: KernelImpl = "reference",
) -> torch.Tensor:
    """Final collapse of the hc streams `[n, hc, dim]` to `[n, dim]`, normed by `norm`, in `dtype`."""
    mixes = hc_streams.hc_premix(streams, fn, hc.norm_eps, impl=kernels)
    pre = torch.sigmoid(mixes * scale.float() + base.float()) + hc.eps
    return hc_streams.hc_collapse(streams, pre, norm.weight, norm.eps, dtype, impl=kernels)
