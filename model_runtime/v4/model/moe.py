"""The V4 feed-forward: a mixture of SwiGLU experts behind a hash or score router, plus one shared expert.

The first layers route by a frozen token → experts table (`tid2eid`, "hash MoE"); the others by top-k of
the router's scores plus a per-expert bias. Routing decisions are made in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepscout.model_runtime.v4.model_config import ModelArgs


class Expert(nn.Module):
    """SwiGLU expert with clamped pre-activations: w2(silu(min(w1 x, l)) * clamp(w3 x, -l, l))."""

    def __init__(self, dim: int, inter_dim: int, swiglu_limit: float) -> None:
        super().__init__()
        self.limit = swiglu_limit
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x), self.w3(x)
        if self.limit > 0:
            gate = gate.clamp(max=self.limit)
            up = up.clamp(min=-self.limit, max=self.limit)
        return self.w2(F.silu(gate) * up)


class Gate(nn.Module):
    """Router. Hash layers pick experts by the frozen `tid2eid[token]` table; others by top-k of
    score + bias. Either way the weights are the picked experts' scores, normalised, times the route scale."""

    tid2eid: torch.Tensor

    def __init__(self, args: ModelArgs, hash_routed: bool) -> None:
        super().__init__()
        self.hash_routed = hash_routed
        self.top_k = args.num_experts_per_tok
        self.score_func = args.scoring_func
        self.route_scale = args.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(args.n_routed_experts, args.hidden_size))
        self.bias: nn.Parameter | None = None
        if hash_routed:
            self.register_buffer(
                "tid2eid", torch.zeros(args.vocab_size, self.top_k, dtype=torch.long), persistent=True
            )
        else:
            self.bias = nn.Parameter(torch.zeros(args.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (weights `[n, k]`, expert indices `[n, k]`)."""
        logits = F.linear(x.float(), self.weight.float())  # routing decisions in float32
        if self.score_func == "sqrtsoftplus":
            scores = F.softplus(logits).sqrt()
        elif self.score_func == "sigmoid":
            scores = logits.sigmoid()
        else:
            scores = logits.softmax(dim=-1)
        if self.hash_routed:
            indices = self.tid2eid[token_ids].long()
        else:
            assert self.bias is not None
            indices = torch.topk(scores + self.bias, self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(1, indices)
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.route_scale, indices


class MoE(nn.Module):
    """Routed experts plus one always-on shared expert."""

    def __init__(self, args: ModelArgs, hash_routed: bool) -> None:
        super().__init__()
        self.gate = Gate(args, hash_routed)
        self.experts = nn.ModuleList(
            Expert(args.hidden_size, args.moe_intermediate_size, args.swiglu_limit)
            for _ in range(args.n_routed_experts)
        )
        self.shared_experts = Expert(args.hidden_size, args.moe_intermediate_size, args.swiglu_limit)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        weights, indices = self.gate(x, token_ids)
        routed = torch.zeros_like(x)
        for expert_id in torch.unique(indices).tolist():
            token_idx, slot = torch.where(indices == expert_id)
            out = self.experts[expert_id](x[token_idx]) * weights[token_idx, slot, None]
            routed.index_add_(0, token_idx, out.to(x.dtype))
        return routed + self.shared_experts(x)
