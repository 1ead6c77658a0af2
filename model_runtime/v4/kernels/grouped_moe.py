"""The routed experts of a V4 MoE layer in one call: every (token, slot) pair through its expert's SwiGLU.

Contract: `x` `[N, hidden]`, the router's `weights` `[N, k]` (float32) and expert `indices` `[N, k]`, and
the experts' weights stacked per projection (`ExpertStacks`: w1/w3 `[E, inter, hidden]`, w2
`[E, hidden, inter]`; or `Mxfp4ExpertStacks`, the same kept in MXFP4 and dequantised exactly to `x`'s
dtype, W4A16). Pair (n, j) computes `h = silu(min(x W1ᵀ, l)) * clamp(x W3ᵀ, -l, l)` with expert
`e = indices[n, j]` (the clamps only when the limit `l` > 0), then `h W2ᵀ * weights[n, j]`; a token's
output is the sum over its k pairs, plus `add` `[N, hidden]` when given (the shared expert's output), in
`out_dtype` (default `x`'s dtype). The Triton paths add and convert in the launch that sums the pairs
(float32 throughout, one rounding); the reference path sums in `x`'s dtype, then adds, then converts.

Expert parallelism: with `experts=ExpertSlice(start, count)` the stacks hold only the global experts
`[start, start + count)` (stack row `e - start`); pairs routed to any other expert contribute zero (another
rank adds them). Both paths map the global ids to local ones, the others to the sentinel `count` (no local
expert), which the reference path never visits and the Triton path groups into idle tiles. Without it the
stacks hold every expert and `indices` index them directly.

* "reference": a loop over the experts present (host syncs; the oracle and the CPU default); MXFP4 experts
  are dequantised one by one as they come, only those present.
* "triton": `grouped_moe_triton` (or `grouped_moe_mxfp4_triton`) — routing grouped on the device, two
  launches for all experts, no sync. MXFP4 experts with at most `GEMV_MAX_PAIRS` (32) pairs (decode) take
  `grouped_moe_mxfp4_gemv` instead: two launches of a matrix-vector product per pair, no grouping; with
  bfloat16 activations on a CUDA device of compute capability 9 or later, its Gluon kernels
  (`grouped_moe_mxfp4_gemv_gluon`), its Triton kernels elsewhere (the interpreter, float32 activations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice, ExpertStacks
from deepscout.model_runtime.v4.kernels.impl import KernelImpl

if TYPE_CHECKING:
    from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks


def swiglu_activation(
    gate: torch.Tensor, up: torch.Tensor, limit: float, *, impl: KernelImpl = "reference"
) -> torch.Tensor:
    """`silu(min(gate, l)) * clamp(up, -l, l)`, the clamps only when `limit` > 0; "triton" computes it in
    one launch (`swiglu_triton`)."""
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.swiglu_triton import swiglu_triton

        return swiglu_triton(gate, up, limit)
    if limit > 0:
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
    return F.silu(gate) * up


def swiglu(
    x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor, limit: float
) -> torch.Tensor:
    """One expert: `w2(silu(min(w1 x, l)) * clamp(w3 x, -l, l))`, the clamps only when `limit` > 0."""
    return F.linear(swiglu_activation(F.linear(x, w1), F.linear(x, w3), limit), w2)


def grouped_moe(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    stacks: ExpertStacks | Mxfp4ExpertStacks,
    swiglu_limit: float,
    *,
    impl: KernelImpl,
    experts: ExpertSlice | None = None,
    add: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The routed experts' summed output `[N, hidden]`, plus `add`, in `out_dtype` (see the module
    docstring); with `experts` only the pairs of the experts the stacks hold."""
    if experts is not None and experts.count != stacks.n_experts:
        raise ValueError(f"the stacks hold {stacks.n_experts} experts, the slice names {experts.count}")
    if impl == "triton":
        if isinstance(stacks, ExpertStacks):
            from deepscout.model_runtime.v4.kernels.grouped_moe_triton import grouped_moe_triton

            w1, w2, w3 = stacks.w1, stacks.w2, stacks.w3
            return grouped_moe_triton(
                x, weights, indices, w1, w2, w3, swiglu_limit, experts=experts, add=add, out_dtype=out_dtype
            )
        from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_gluon import (
            gluon_runs_on,
            grouped_moe_mxfp4_gemv_gluon,
        )
        from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_triton import (
            GEMV_MAX_PAIRS,
            grouped_moe_mxfp4_gemv,
        )
        from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_triton import grouped_moe_mxfp4_triton

        routing = (x, weights, indices, stacks, swiglu_limit)
        if indices.numel() > GEMV_MAX_PAIRS:
            return grouped_moe_mxfp4_triton(*routing, experts=experts, add=add, out_dtype=out_dtype)
        if gluon_runs_on(x):
            return grouped_moe_mxfp4_gemv_gluon(*routing, experts=experts, add=add, out_dtype=out_dtype)
        return grouped_moe_mxfp4_gemv(*routing, experts=experts, add=add, out_dtype=out_dtype)
    routed = grouped_moe_reference(x, weights, indices, stacks, swiglu_limit, experts=experts)
    if add is not None:
        routed = routed + add
    return routed.to(out_dtype or x.dtype)


def grouped_moe_reference(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    stacks: ExpertStacks | Mxfp4ExpertStacks,
    swiglu_limit: float,
    *,
    experts: ExpertSlice | None = None,
) -> torch.Tensor:
    """Expert by expert (those held, with `experts`): gather its pairs, run it (its weights in `x`'s dtype),
    add its weighted output to its tokens."""
    local = indices if experts is None else experts.local_ids(indices)
    routed = torch.zeros_like(x)
    for expert in torch.unique(local).tolist():
        if expert == stacks.n_experts:  # the sentinel: pairs of experts another rank holds
            continue
        token_idx, slot = torch.where(local == expert)
        out = swiglu(x[token_idx], *stacks.expert(expert, x.dtype), swiglu_limit)
        routed.index_add_(0, token_idx, (out * weights[token_idx, slot, None]).to(x.dtype))
    return routed
