"""The MoE router's choice from its logits: each token's experts and their weights.

Contract (`route_experts(logits, ...)`): `logits` `[N, E]` float32 (the gate's projection of the tokens).
Each expert's score is `score_func` of its logit (sqrt(softplus), sigmoid, or the softmax over the
experts). The picked experts are the top-k of score + `bias` (`[E]` float32), or, for a hash-routed layer,
`hashed` (`[N, k]`, the frozen `tid2eid` rows of the tokens); exactly one of the two is given. Their weights
are their scores, divided by the picked scores' sum (+1e-20), times `scale`. Returns (weights `[N, k]`
float32, indices `[N, k]` int64); the order of a token's k picks is unspecified.

* "reference": PyTorch ops (the oracle); which of several experts tied at the k-th value it keeps is
  unspecified.
* "triton" (`route_experts_triton.py`): one launch for the whole choice (the reference takes about ten
  kernels a layer), one program per token; of tied experts the lowest ids. No host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.model_config import ScoringFunc


def route_experts(
    logits: torch.Tensor,
    *,
    score_func: ScoringFunc,
    top_k: int,
    scale: float,
    bias: torch.Tensor | None = None,
    hashed: torch.Tensor | None = None,
    impl: KernelImpl,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, indices) of each token's experts (see the module docstring)."""
    if (bias is None) == (hashed is None):
        raise ValueError("route_experts needs exactly one of bias (top-k routing) and hashed (hash routing)")
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.route_experts_triton import route_experts_triton

        return route_experts_triton(logits, score_func, top_k, scale, bias, hashed)
    return route_experts_reference(logits, score_func, top_k, scale, bias, hashed)


def route_experts_reference(
    logits: torch.Tensor,
    score_func: ScoringFunc,
    top_k: int,
    scale: float,
    bias: torch.Tensor | None,
    hashed: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle, in PyTorch ops."""
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
