"""The mHC stream passes around each sub-block (`model/mhc.py`): the mixing logits from the streams, the
pre-weighted collapse to the sub-block's input, and the merge of its output back into new streams.

Contract (streams `[T, hc, D]`, float32 in the model; every sum in float32):

* `hc_premix(streams, fn)` -> `MixLogits`: the mixing logits `F.linear(x · rsqrt(mean(x²) + eps), fn)`
  with `x = streams.flatten(1)` in float32 (a weightless RMS norm) and `fn` `[mix, hc·D]`, held as the
  unscaled projections and sums of squares of slices of the hc·D axis, so a consumer finishes the sum
  in its own launch (`MixLogits.logits` is that sum in PyTorch).
* `hc_collapse(streams, logits, scale, base, weight, ...)` -> `[T, D]`: the sub-block's normed input,
  `rms_norm(Σ_i pre[t, i] · streams[t, i, :], weight, eps)` with the pre weights
  `pre = sigmoid(logits[:, :hc] · scale[0] + base[:hc]) + hc_eps` (the sum and the norm in float32), cast
  to `out_dtype` once. The pre weights come first in both the sub-blocks' 24 logits and the hyper-head's
  hc, so one kernel serves both.
* `hc_merge(block_out, streams, post, comb)` -> `[T, hc, D]` in streams' dtype:
  `post[t, j] · block_out[t, :] + Σ_i comb[t, i, j] · streams[t, i, :]` (`block_out` `[T, D]`, `post`
  `[T, hc]`, `comb` `[T, hc, hc]`), i.e. `comb[t]ᵀ @ streams[t]` plus the post-weighted block output.
* `hc_merge_premix(block_out, streams, post, comb, fn)` -> the merge's new streams and their `hc_premix`
  by the next sub-block's `fn`.
* `hc_merge_collapse(block_out, streams, post, comb, fn, scale, base, weight, ...)` -> `hc_merge_premix`'s
  results and the next sub-block's input, `hc_collapse` of the new streams by those logits.

* "reference": the PyTorch ops (the projection an SIMT sgemm over the whole axis, one slice; the merge a
  batched matmul);
* "triton": `hc_premix` reads the streams once, accumulating the projection and the sum of squares
  together (decode-sized T splits the hc·D axis over programs; fixed shapes, no host sync); `hc_collapse`
  (with the pre weights and its norm) and `hc_merge` are one memory-bound pass each; at decode sizes
  `hc_merge_premix` is one pass too, the premix's slices computed from the new streams in registers;
  on a GPU `hc_merge_collapse` is one launch as well: its programs meet at a barrier (`arrivals`) between
  the merge and the collapse (`hc_merge_collapse_triton.py`). Under Triton's interpreter, which runs programs
  one after another, it is the merge-premix launch and the collapse's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.mix_logits import MixLogits
from deepscout.model_runtime.v4.kernels.norm_rope import rms_norm

MERGE_COLLAPSE_MAX_ROWS = 16
"""The `arrivals` elements a caller of `hc_merge_collapse` keeps: the most tokens it takes as one launch."""


def hc_premix(streams: torch.Tensor, fn: torch.Tensor, *, impl: KernelImpl) -> MixLogits:
    """The mixing logits of the RMS-normed streams, in split form (see the module docstring)."""
    _check_premix(streams, fn)
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_streams_triton import hc_premix_triton

        return hc_premix_triton(streams, fn)
    return hc_premix_reference(streams, fn)


def hc_collapse(
    streams: torch.Tensor,
    logits: MixLogits,
    scale: torch.Tensor,
    base: torch.Tensor,
    weight: torch.Tensor,
    *,
    mix_norm_eps: float,
    hc_eps: float,
    eps: float,
    out_dtype: torch.dtype,
    impl: KernelImpl,
) -> torch.Tensor:
    """The RMS-normed pre-weighted sum of the streams `[T, D]` in `out_dtype` (see the module docstring):
    `mix_norm_eps` is the logits' RMS epsilon, `hc_eps` the pre weights' floor, `eps` the norm's."""
    _check_streams(streams)
    n, hc, _ = streams.shape
    if logits.part.shape[1] != n or logits.n_mix < hc or base.shape[0] < hc or scale.numel() < 1:
        raise ValueError(
            f"hc_collapse needs the logits of {n} tokens (at least {hc} of them), base [≥{hc}] and a scale, "
            f"got {list(logits.part.shape)}, {list(base.shape)}, {list(scale.shape)}"
        )
    _check_weights("norm", weight, streams.shape[2:])
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_streams_triton import hc_collapse_triton

        return hc_collapse_triton(streams, logits, scale, base, weight, mix_norm_eps, hc_eps, eps, out_dtype)
    pre = torch.sigmoid(logits.logits(mix_norm_eps)[:, :hc] * scale[0] + base[:hc]) + hc_eps
    collapsed = (pre.unsqueeze(-1) * streams.float()).sum(dim=1)
    return rms_norm(collapsed, weight.float(), eps, impl="reference").to(out_dtype)


def hc_merge(
    block_out: torch.Tensor,
    streams: torch.Tensor,
    post: torch.Tensor,
    comb: torch.Tensor,
    *,
    impl: KernelImpl,
) -> torch.Tensor:
    """New streams `[T, hc, D]`: the sub-block output spread by post plus the streams mixed by comb."""
    _check_merge(block_out, streams, post, comb)
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_streams_triton import hc_merge_triton

        return hc_merge_triton(block_out, streams, post, comb)
    return hc_merge_reference(block_out, streams, post, comb)


def hc_merge_premix(
    block_out: torch.Tensor,
    streams: torch.Tensor,
    post: torch.Tensor,
    comb: torch.Tensor,
    fn: torch.Tensor,
    *,
    impl: KernelImpl,
) -> tuple[torch.Tensor, MixLogits]:
    """`hc_merge`'s new streams and `hc_premix` of them by the next sub-block's `fn` (one launch at decode
    sizes with "triton")."""
    if impl == "triton":
        _check_merge(block_out, streams, post, comb)
        _check_premix(streams, fn)
        from deepscout.model_runtime.v4.kernels.hc_streams_triton import hc_merge_premix_triton

        return hc_merge_premix_triton(block_out, streams, post, comb, fn)
    out = hc_merge(block_out, streams, post, comb, impl=impl)
    return out, hc_premix(out, fn, impl=impl)


def hc_merge_collapse(
    block_out: torch.Tensor,
    streams: torch.Tensor,
    post: torch.Tensor,
    comb: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    weight: torch.Tensor,
    *,
    arrivals: torch.Tensor,
    mix_norm_eps: float,
    hc_eps: float,
    eps: float,
    out_dtype: torch.dtype,
    impl: KernelImpl,
) -> tuple[torch.Tensor, MixLogits, torch.Tensor]:
    """`hc_merge_premix`'s new streams and logits, and `hc_collapse` of the new streams by those logits (the
    next sub-block's normed input; `scale`, `base`, `weight` and the epsilons as there). `arrivals` (int64,
    on the streams' device, zero at first; one element a token, and no more tokens than it has elements
    take the one launch) counts the one-launch path's programs (see the module docstring): one launch at a
    time may use it, every launch on it of the same width D."""
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_merge_collapse_triton import (
            hc_merge_collapse_triton,
            merge_collapse_fuses,
        )

        _check_merge(block_out, streams, post, comb)
        _check_premix(streams, fn)
        _check_weights("norm", weight, streams.shape[2:])
        n, _, dim = streams.shape
        if merge_collapse_fuses(n, dim, streams.device, arrivals.numel()):
            return hc_merge_collapse_triton(
                block_out, streams, post, comb, fn, scale, base, weight, arrivals, mix_norm_eps, hc_eps, eps,
                out_dtype,
            )  # fmt: skip
    out, logits = hc_merge_premix(block_out, streams, post, comb, fn, impl=impl)
    collapsed = hc_collapse(
        out,
        logits,
        scale,
        base,
        weight,
        mix_norm_eps=mix_norm_eps,
        hc_eps=hc_eps,
        eps=eps,
        out_dtype=out_dtype,
        impl=impl,
    )
    return out, logits, collapsed


def hc_premix_reference(streams: torch.Tensor, fn: torch.Tensor) -> MixLogits:
    x = streams.flatten(1).float()
    return MixLogits(F.linear(x, fn.float())[None], x.square().sum(-1)[None], x.shape[1], fn.shape[0])


def hc_merge_reference(
    block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    dtype = streams.dtype
    return post.to(dtype).unsqueeze(-1) * block_out.unsqueeze(-2) + torch.matmul(
        comb.to(dtype).transpose(-1, -2), streams
    )


def _check_premix(streams: torch.Tensor, fn: torch.Tensor) -> None:
    _check_streams(streams)
    if fn.dim() != 2 or fn.shape[1] != streams.shape[1] * streams.shape[2]:
        raise ValueError(
            f"hc_premix weight must be [mix, {streams.shape[1] * streams.shape[2]}], got {list(fn.shape)}"
        )


def _check_merge(
    block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> None:
    _check_streams(streams)
    n, hc, dim = streams.shape
    if tuple(block_out.shape) != (n, dim):
        raise ValueError(f"hc_merge block output must be [{n}, {dim}], got {list(block_out.shape)}")
    _check_weights("post", post, (n, hc))
    _check_weights("comb", comb, (n, hc, hc))


def _check_streams(streams: torch.Tensor) -> None:
    if streams.dim() != 3:
        raise ValueError(f"hc streams must be [T, hc, D], got {list(streams.shape)}")


def _check_weights(name: str, weights: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> None:
    if tuple(weights.shape) != tuple(shape):
        raise ValueError(f"hc {name} weights must be {list(shape)}, got {list(weights.shape)}")
