"""The mHC stream passes around each sub-block (`model/mhc.py`): the mixing logits from the streams, the
pre-weighted collapse to the sub-block's input, and the merge of its output back into new streams.

Contract (streams `[T, hc, D]`, float32 in the model; every sum in float32):

* `hc_premix(streams, fn, norm_eps)` -> `[T, mix]` float32: `F.linear(x · rsqrt(mean(x²) + eps), fn)` with
  `x = streams.flatten(1)` in float32 (a weightless RMS norm) and `fn` `[mix, hc·D]`.
* `hc_collapse(streams, pre, weight, eps, out_dtype)` -> `[T, D]`: the sub-block's normed input,
  `rms_norm(Σ_i pre[t, i] · streams[t, i, :], weight, eps)` (`pre` `[T, hc]`; the sum and the norm in
  float32), cast to `out_dtype` once.
* `hc_merge(block_out, streams, post, comb)` -> `[T, hc, D]` in streams' dtype:
  `post[t, j] · block_out[t, :] + Σ_i comb[t, i, j] · streams[t, i, :]` (`block_out` `[T, D]`, `post`
  `[T, hc]`, `comb` `[T, hc, hc]`), i.e. `comb[t]ᵀ @ streams[t]` plus the post-weighted block output.

* "reference": the PyTorch ops (the projection an SIMT sgemm after a separate normalisation pass, the
  merge a batched matmul);
* "triton": `hc_premix` reads the streams once, accumulating the projection and the sum of squares
  together and scaling by the rsqrt at the end (decode-sized T splits the hc·D axis over programs and
  combines the partials in a second launch; fixed shapes, no host sync); `hc_collapse` (with its norm)
  and `hc_merge` are one memory-bound pass each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.norm_rope import rms_norm


def hc_premix(streams: torch.Tensor, fn: torch.Tensor, norm_eps: float, *, impl: KernelImpl) -> torch.Tensor:
    """The mixing logits `[T, mix]` of the RMS-normed streams (see the module docstring)."""
    _check_streams(streams)
    if fn.dim() != 2 or fn.shape[1] != streams.shape[1] * streams.shape[2]:
        raise ValueError(
            f"hc_premix weight must be [mix, {streams.shape[1] * streams.shape[2]}], got {list(fn.shape)}"
        )
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_streams_triton import hc_premix_triton

        return hc_premix_triton(streams, fn, norm_eps)
    return hc_premix_reference(streams, fn, norm_eps)


def hc_collapse(
    streams: torch.Tensor,
    pre: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype,
    *,
    impl: KernelImpl,
) -> torch.Tensor:
    """The RMS-normed pre-weighted sum of the streams `[T, D]` in `out_dtype` (see the module docstring)."""
    _check_streams(streams)
    _check_weights("pre", pre, streams.shape[:2])
    _check_weights("norm", weight, streams.shape[2:])
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_streams_triton import hc_collapse_triton

        return hc_collapse_triton(streams, pre, weight, eps, out_dtype)
    return hc_collapse_reference(streams, pre, weight, eps, out_dtype)


def hc_merge(
    block_out: torch.Tensor,
    streams: torch.Tensor,
    post: torch.Tensor,
    comb: torch.Tensor,
    *,
    impl: KernelImpl,
) -> torch.Tensor:
    """New streams `[T, hc, D]`: the sub-block output spread by post plus the streams mixed by comb."""
    _check_streams(streams)
    n, hc, dim = streams.shape
    if tuple(block_out.shape) != (n, dim):
        raise ValueError(f"hc_merge block output must be [{n}, {dim}], got {list(block_out.shape)}")
    _check_weights("post", post, (n, hc))
    _check_weights("comb", comb, (n, hc, hc))
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.hc_streams_triton import hc_merge_triton

        return hc_merge_triton(block_out, streams, post, comb)
    return hc_merge_reference(block_out, streams, post, comb)


def hc_premix_reference(streams: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    return F.linear(rms_norm(streams.flatten(1).float(), None, norm_eps, impl="reference"), fn.float())


def hc_collapse_reference(
    streams: torch.Tensor, pre: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype
) -> torch.Tensor:
    collapsed = (pre.float().unsqueeze(-1) * streams.float()).sum(dim=1)
    return rms_norm(collapsed, weight.float(), eps, impl="reference").to(out_dtype)


def hc_merge_reference(
    block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    dtype = streams.dtype
    return post.to(dtype).unsqueeze(-1) * block_out.unsqueeze(-2) + torch.matmul(
        comb.to(dtype).transpose(-1, -2), streams
    )


def _check_streams(streams: torch.Tensor) -> None:
    if streams.dim() != 3:
        raise ValueError(f"hc streams must be [T, hc, D], got {list(streams.shape)}")


def _check_weights(name: str, weights: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> None:
    if tuple(weights.shape) != tuple(shape):
        raise ValueError(f"hc {name} weights must be {list(shape)}, got {list(weights.shape)}")
