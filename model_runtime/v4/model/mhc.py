"""Manifold-constrained hyper-connections (mHC): `hc_mult` residual streams per token instead of one.

Around each attention and MoE sub-block the streams `[n, hc, dim]` are collapsed to the sub-block's input
(`pre` weights), and its output is spread back (`post` weights) while the streams mix through a doubly
stochastic matrix (Sinkhorn-Knopp). The hyper-head collapses the final streams before the output norm.
Mappings are computed in float32. Parameter names follow the official checkpoints (`hc_attn_fn`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepscout.model_runtime.v4.kernels.hc_mix import hc_mix
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.model.primitives import rms_normalize
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
    hc: HcSettings,
    kernels: KernelImpl = "reference",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC mappings from streams `[n, hc, dim]`: collapsed input `[n, dim]`, post `[n, hc]`, and the
    doubly-stochastic (Sinkhorn-Knopp) residual mix `[n, hc, hc]`, the latter two in float32
    (`kernels/hc_mix.py` computes them from the mixing logits)."""
    mixes = F.linear(rms_normalize(streams.flatten(1).float(), hc.norm_eps, kernels), fn.float())
    n_streams, iters = streams.shape[1], hc.sinkhorn_iters
    pre, post, comb = hc_mix(mixes, scale, base, hc=n_streams, iters=iters, eps=hc.eps, impl=kernels)
    collapsed = (pre.unsqueeze(-1) * streams).sum(dim=1).to(streams.dtype)
    return collapsed, post, comb


def hc_merge(
    block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    """New streams: post-weighted block output plus the residual streams mixed by comb^T."""
    dtype = streams.dtype
    return post.to(dtype).unsqueeze(-1) * block_out.unsqueeze(-2) + torch.matmul(
        comb.to(dtype).transpose(-1, -2), streams
    )


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
    hc: HcSettings,
) -> torch.Tensor:
    """Final collapse of the hc streams `[n, hc, dim]` to `[n, dim]`."""
    mixes = F.linear(rms_normalize(streams.flatten(1).float(), hc.norm_eps), fn.float())
    pre = torch.sigmoid(mixes * scale.float() + base.float()) + hc.eps
    return (pre.unsqueeze(-1) * streams).sum(dim=1).to(streams.dtype)
