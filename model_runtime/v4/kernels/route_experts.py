"""The MoE router: each token's experts and their weights, from the tokens and the gate's weight.

Contract (`route_experts(x, weight, ...)`): `x` `[N, D]` the tokens (bfloat16, float16 or float32), `weight`
`[E, D]` the gate's projection (float32 or bfloat16). The logits are `x.float() @ weight.float().T`, in
float32. Each expert's score is `score_func` of its logit (sqrt(softplus), sigmoid, or the softmax over the
experts). The picked experts are the top-k of score + `bias` (`[E]` float32), or, for a hash-routed layer,
`hashed` (`[N, k]`, the frozen `tid2eid` rows of the tokens); exactly one of the two is given. Their weights
are their scores, divided by the picked scores' sum (+1e-20), times `scale`. Returns (weights `[N, k]`
float32, indices `[N, k]` int64); the order of a token's k picks is unspecified. `arrivals` (int32, one
element, zero, on `x`'s device) is the counter the Triton path's single launch uses; the caller that
launches often owns one (`Gate` does) and passes it each time: the kernel leaves it zero again. Without it
the Triton path allocates a zeroed one per call (one launch more).

* "reference": `F.linear` in float32, then PyTorch ops (the oracle); which of several experts tied at the
  k-th value it keeps is unspecified.
* "triton" (`route_experts_triton.py`): for a decode batch (N ≤ `FUSED_MAX_ROWS`) one launch for the
  logits and the whole choice; above it the logits by `F.linear` in float32, then one launch for the
  choice. Of tied experts the lowest ids. No host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.model_config import ScoringFunc

_TOKEN_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_WEIGHT_DTYPES = (torch.float32, torch.bfloat16)


def route_experts(
    x: torch.Tensor,
    weight: torch.Tensor,
    *,
    score_func: ScoringFunc,
    top_k: int,
    scale: float,
    bias: torch.Tensor | None = None,
    hashed: torch.Tensor | None = None,
    arrivals: torch.Tensor | None = None,
    impl: KernelImpl,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, indices) of each token's experts (see the module docstring)."""
    _check_operands(x, weight, top_k, bias, hashed, arrivals)
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.route_experts_triton import route_experts_triton

        return route_experts_triton(
            x,
            weight,
            score_func=score_func,
            top_k=top_k,
            scale=scale,
            bias=bias,
            hashed=hashed,
            arrivals=arrivals,
        )
    logits = F.linear(x.float(), weight.float())
    return route_experts_reference(logits, score_func, top_k, scale, bias, hashed)


def _check_operands(
    x: torch.Tensor,
    weight: torch.Tensor,
    top_k: int,
    bias: torch.Tensor | None,
    hashed: torch.Tensor | None,
    arrivals: torch.Tensor | None,
) -> None:
    """Shapes, dtypes and devices (no host sync: nothing is read)."""
    if (bias is None) == (hashed is None):
        raise ValueError("route_experts needs exactly one of bias (top-k routing) and hashed (hash routing)")
    if x.dtype not in _TOKEN_DTYPES or weight.dtype not in _WEIGHT_DTYPES:
        raise TypeError(f"route_experts takes x in {_TOKEN_DTYPES} and weight in {_WEIGHT_DTYPES}")
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x [N, D] and weight [E, D] disagree: {list(x.shape)} and {list(weight.shape)}")
    n_tokens, n_experts = x.shape[0], weight.shape[0]
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k must be in [1, {n_experts}], got {top_k}")
    if bias is not None and tuple(bias.shape) != (n_experts,):
        raise ValueError(f"bias must be [{n_experts}], got {list(bias.shape)}")
    if hashed is not None and tuple(hashed.shape) != (n_tokens, top_k):
        raise ValueError(f"hashed must be [{n_tokens}, {top_k}], got {list(hashed.shape)}")
    if arrivals is not None and (arrivals.dtype != torch.int32 or arrivals.numel() != 1):
        raise TypeError(f"arrivals must be one int32 element, got {arrivals.dtype} {list(arrivals.shape)}")
    if any(t is not None and t.device != x.device for t in (weight, bias, hashed, arrivals)):
        raise ValueError(f"route_experts' operands must all be on x's device ({x.device})")


def route_experts_reference(
    logits: torch.Tensor,
    score_func: ScoringFunc,
    top_k: int,
    scale: float,
    bias: torch.Tensor | None,
    hashed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle's choice from the float32 logits `[N, E]`, in PyTorch ops."""
    if score_func == "sqrtsoftplus":
        scores = F.softplus(logits).sqrt()
    elif score_func == "sigmoid":
        scores = logits.sigmoid()
    else:
        scores = logits.softmax(dim=-1)
    if hashed is not None:
        indices = hashed.long()
    else:
        assert bias is not None
        indices = torch.topk(scores + bias, top_k, dim=-1, sorted=False).indices
    weights = scores.gather(1, indices)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scale, indices
