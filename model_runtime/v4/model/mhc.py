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

A merge with a sub-block (or the hyper-head) after it also computes that one's input (`hc_merge_into`):
the new streams, their premix and the collapse, one launch at decode sizes on a GPU.
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
class HcInput:
    """What collapses the streams into a sub-block's (or the hyper-head's) input: the mixing weight `fn`
    `[mix, hc·dim]` (the pre weights' logits first), its `scale` and `base`, and the RMS norm after the
    collapse."""

    fn: torch.Tensor
    scale: torch.Tensor
    base: torch.Tensor
    norm: RMSNorm


@dataclass(frozen=True)
class HcState:
    """Residual streams `[n, hc, dim]` between sub-blocks and, when the merge that made them computed them
    (`hc_merge_into`), their premix by the next sub-block's (or the hyper-head's) mixing weight and that
    sub-block's input, the streams collapsed and normed."""

    streams: torch.Tensor
    mix: MixLogits | None = None
    collapsed: torch.Tensor | None = None


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
    state: HcState,
    inp: HcInput,
    hc: HcSettings,
    dtype: torch.dtype,
    kernels: KernelImpl = "reference",
    side: torch.cuda.Stream | None = None,
) -> tuple[torch.Tensor, HcMapping]:
    """The sub-block's input `[n, dim]` from the streams `[n, hc, dim]` (the collapse, normed by `inp.norm`,
    in `dtype`: the state's own when its merge computed it) and its merge's mappings, computed on `side`
    when given (see the module docstring)."""
    streams = state.streams
    logits = state.mix if state.mix is not None else hc_streams.hc_premix(streams, inp.fn, impl=kernels)
    mapping = _mapping(logits, inp.scale, inp.base, hc, streams.shape[1], kernels, side)
    if state.collapsed is not None:
        return state.collapsed, mapping
    return _collapse(streams, logits, inp, hc, dtype, kernels), mapping


def _collapse(
    streams: torch.Tensor,
    logits: MixLogits,
    inp: HcInput,
    hc: HcSettings,
    dtype: torch.dtype,
    kernels: KernelImpl,
) -> torch.Tensor:
    return hc_streams.hc_collapse(
        streams,
        logits,
        inp.scale,
        inp.base,
        inp.norm.weight,
        mix_norm_eps=hc.norm_eps,
        hc_eps=hc.eps,
        eps=inp.norm.eps,
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


def hc_merge_into(
    block_out: torch.Tensor,
    streams: torch.Tensor,
    mapping: HcMapping,
    inp: HcInput,
    hc: HcSettings,
    dtype: torch.dtype,
    kernels: KernelImpl,
    arrivals: torch.Tensor,
) -> HcState:
    """`hc_merge`'s new streams with their premix by the next sub-block's (or the hyper-head's) `inp` and
    that input, collapsed and normed in `dtype` (one launch at decode sizes on a GPU; `arrivals` is the
    counter its programs meet by, `hc_streams.hc_merge_collapse`)."""
    mapping.chain.join()
    streams, logits, collapsed = hc_streams.hc_merge_collapse(
        block_out,
        streams,
        mapping.post,
        mapping.comb,
        inp.fn,
        inp.scale,
        inp.base,
        inp.norm.weight,
        arrivals=arrivals,
        mix_norm_eps=hc.norm_eps,
        hc_eps=hc.eps,
        eps=inp.norm.eps,
        out_dtype=dtype,
        impl=kernels,
    )
    return HcState(streams, logits, collapsed)


def hc_head_parameters(args: ModelArgs) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """Fresh hyper-head parameters `(hc_head_fn, hc_head_base, hc_head_scale)`, in registration order."""
    hc_dim = args.hc_mult * args.hidden_size
    return (
        nn.Parameter(torch.zeros(args.hc_mult, hc_dim, dtype=torch.float32)),
        nn.Parameter(torch.zeros(args.hc_mult, dtype=torch.float32)),
        nn.Parameter(torch.ones(1, dtype=torch.float32)),
    )


def hc_head(
    state: HcState, inp: HcInput, hc: HcSettings, dtype: torch.dtype, kernels: KernelImpl = "reference"
) -> torch.Tensor:
    """Final collapse of the hc streams `[n, hc, dim]` to `[n, dim]`, normed by `inp.norm`, in `dtype` (the
    state's own when the last merge computed it)."""
    if state.collapsed is not None:
        return state.collapsed
    logits = state.mix if state.mix is not None else hc_streams.hc_premix(state.streams, inp.fn, impl=kernels)
    return _collapse(state.streams, logits, inp, hc, dtype, kernels)
