"""Manifold-constrained hyper-connections (mHC): `hc_mult` residual streams per token instead of one.

Around each attention and MoE sub-block the streams `[n, hc, dim]` are collapsed to the sub-block's input
(`pre` weights; the sub-block's RMS norm applied in the same pass), and its output is spread back (`post`
weights) while the streams mix through a doubly stochastic matrix (Sinkhorn-Knopp). The hyper-head
collapses the final streams, with the output norm.
Mappings are computed in float32. Parameter names follow the official checkpoints (`hc_attn_fn`, ...).
The stream passes (mixing logits, collapse, merge) are `kernels/hc_streams.py`, the post and mix mappings
`kernels/hc_mix.py`; `kernels` picks their reference or fused paths.

Only the merge needs the post and mix mappings, so on CUDA they may be computed on a side stream
(`hc_split(..., side=)`) while the collapse and the sub-block run: the 20-round Sinkhorn chain, a few
microseconds of one warp, leaves the critical path. The mappings are a `side_chain` (`side_streams.py`,
whose memory rule they follow): forked after the logits, joined by the merge (`HcMapping.chain`), which
comes before the layer returns; the `HcMapping` holds the logits the chain reads until then.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deepscout.model_runtime.v4.kernels import hc_streams
from deepscout.model_runtime.v4.kernels.hc_mix import hc_mix
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.mix_logits import MixLogits
from deepscout.model_runtime.v4.model.primitives import RMSNorm
from deepscout.model_runtime.v4.model.side_streams import SideChain, side_chain
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


@dataclass(frozen=True)
class HcState:
    """Residual streams `[n, hc, dim]` between sub-blocks and, when the merge that made them computed it,
    their premix by the next sub-block's (or the hyper-head's) mixing weight (`hc_merge_premix`)."""

    streams: torch.Tensor
    mix: MixLogits | None = None


@dataclass(frozen=True)
class HcMapping:
    """What a sub-block's merge needs: `post` `[n, hc]` and the residual mix `comb` `[n, hc, hc]` (float32),
    the side chain that computed them (the merge joins it), and the logits that chain reads (held until the
    join)."""

    post: torch.Tensor
    comb: torch.Tensor
    chain: SideChain
    logits: MixLogits


def hc_split(
    streams: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    norm: RMSNorm,
    hc: HcSettings,
    dtype: torch.dtype,
    kernels: KernelImpl = "reference",
    side: torch.cuda.Stream | None = None,
    logits: MixLogits | None = None,
) -> tuple[torch.Tensor, HcMapping]:
    """The sub-block's input `[n, dim]` from streams `[n, hc, dim]` (the collapse, normed by `norm`, in
    `dtype`) and its merge's mappings, computed on `side` when given (see the module docstring). `logits`:
    the streams' premix by `fn` when the merge that made them computed it (`hc_merge_premix`)."""
    if logits is None:
        logits = hc_streams.hc_premix(streams, fn, impl=kernels)
    mapping = _mapping(logits, scale, base, hc, streams.shape[1], kernels, side)
    return _collapse(streams, logits, scale, base, norm, hc, dtype, kernels), mapping


def _collapse(
    streams: torch.Tensor,
    logits: MixLogits,
    scale: torch.Tensor,
    base: torch.Tensor,
    norm: RMSNorm,
    hc: HcSettings,
    dtype: torch.dtype,
    kernels: KernelImpl,
) -> torch.Tensor:
    return hc_streams.hc_collapse(
        streams,
        logits,
        scale,
        base,
        norm.weight,
        mix_norm_eps=hc.norm_eps,
        hc_eps=hc.eps,
        eps=norm.eps,
        out_dtype=dtype,
        impl=kernels,
    )


def _mapping(
    logits: MixLogits,
    scale: torch.Tensor,
    base: torch.Tensor,
    hc: HcSettings,
    n_streams: int,
    kernels: KernelImpl,
    side: torch.cuda.Stream | None,
) -> HcMapping:
    with side_chain(side) as chain:
        post, comb = hc_mix(
            logits,
            scale,
            base,
            hc=n_streams,
            norm_eps=hc.norm_eps,
            iters=hc.sinkhorn_iters,
            eps=hc.eps,
            impl=kernels,
        )
    return HcMapping(post, comb, chain, logits)


def hc_merge(
    block_out: torch.Tensor, streams: torch.Tensor, mapping: HcMapping, kernels: KernelImpl = "reference"
) -> torch.Tensor:
    """New streams: post-weighted block output plus the residual streams mixed by comb^T (after the
    chain that computed the mappings is joined)."""
    mapping.chain.join()
    return hc_streams.hc_merge(block_out, streams, mapping.post, mapping.comb, impl=kernels)


def hc_merge_premix(
    block_out: torch.Tensor,
    streams: torch.Tensor,
    mapping: HcMapping,
    fn: torch.Tensor,
    kernels: KernelImpl = "reference",
) -> tuple[torch.Tensor, MixLogits]:
    """`hc_merge`'s new streams and their premix by the next sub-block's `fn` (for its `hc_split`), in one
    pass at decode sizes."""
    mapping.chain.join()
    return hc_streams.hc_merge_premix(block_out, streams, mapping.post, mapping.comb, fn, impl=kernels)


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
    logits: MixLogits | None = None,
) -> torch.Tensor:
    """Final collapse of the hc streams `[n, hc, dim]` to `[n, dim]`, normed by `norm`, in `dtype`
    (`logits`: the streams' premix by `fn`, when the last merge computed it)."""
    if logits is None:
        logits = hc_streams.hc_premix(streams, fn, impl=kernels)
    return _collapse(streams, logits, scale, base, norm, hc, dtype, kernels)
