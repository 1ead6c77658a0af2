"""RMS normalisation and rotary embeddings of the V4 forward pass, each one launch on the fused path.

* `rms_norm(x, weight, eps)`: over the last dim, statistics in float32. With a weight (the `RMSNorm`
  module): `(weight * x·rsqrt(mean(x²) + eps)).to(x.dtype)`; without (the query heads' norm): the scale
  is cast to x's dtype first, `x * rsqrt(mean(x²) + eps).to(x.dtype)`.
* `rope(x, cos, sin, inverse, norm)`: rotates the trailing `2·len(cos)` channels of `x` `[n, (heads,) dim]`
  as interleaved pairs with per-row cos/sin (float32); `inverse` applies the conjugate rotation. With a
  `RowNorm`, `x` is first `rms_norm(x, norm.weight, norm.eps)` (V4's query and KV norms before their
  RoPE: one launch for both on the fused path).
* `rope_into_rows(x, cos, sin, out, rows, norm, positions)`: `rope` of `x` `[n, dim]` written to rows
  `rows` of `out` `[R, dim]` in its dtype, and with `RowPositions` each row's position to the same index
  of `positions.out` `[R]` (a decode step's KV rows and their positions into the window ring: one launch
  on the fused path).

"reference" is the PyTorch arithmetic (several launches each); "triton" computes the same in one.
"""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.rope_rows import RowNorm, RowPositions


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, impl: KernelImpl) -> torch.Tensor:
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.norm_rope_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps)
    if weight is None:
        return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * xf).to(x.dtype)


def rope(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    inverse: bool,
    impl: KernelImpl,
    norm: RowNorm | None = None,
) -> torch.Tensor:
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.norm_rope_triton import rope_triton

        return rope_triton(x, cos, sin, inverse=inverse, norm=norm)
    if norm is not None:
        x = rms_norm(x, norm.weight, norm.eps, impl=impl)
    cos = cos.repeat_interleave(2, dim=-1)
    sin = sin.repeat_interleave(2, dim=-1)
    if inverse:
        sin = -sin
    if x.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    rope_dim = cos.shape[-1]
    nope, rot = x[..., :-rope_dim], x[..., -rope_dim:]
    rotated_half = torch.stack((-rot[..., 1::2], rot[..., 0::2]), dim=-1).flatten(-2)
    rotated = (rot.float() * cos + rotated_half.float() * sin).to(x.dtype)
    return torch.cat([nope, rotated], dim=-1)


def rope_into_rows(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    out: torch.Tensor,
    rows: torch.Tensor,
    *,
    impl: KernelImpl,
    norm: RowNorm | None = None,
    positions: RowPositions | None = None,
) -> None:
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.norm_rope_triton import rope_triton

        rope_triton(x, cos, sin, inverse=False, out=out, out_rows=rows, norm=norm, positions=positions)
        return
    out.index_copy_(0, rows, rope(x, cos, sin, inverse=False, impl=impl, norm=norm).to(out.dtype))
    if positions is not None:
        positions.out.index_copy_(0, rows, positions.values.to(positions.out.dtype))
