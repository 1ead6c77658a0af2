"""The V4 feed-forward: a mixture of SwiGLU experts behind a hash or score router, plus one shared expert.

The first layers route by a frozen token → experts table (`tid2eid`, "hash MoE"); the others by top-k of
the router's scores plus a per-expert bias. Routing decisions are made in float32. The routed experts keep
their official parameter names, but their weights live in one stacked tensor per projection, which the
grouped kernel (`kernels/grouped_moe.py`) reads in one launch for all experts of a step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepscout.model_runtime.v4.kernels.grouped_moe import ExpertStacks, grouped_moe, swiglu
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
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
        return swiglu(x, self.w1.weight, self.w2.weight, self.w3.weight, self.limit)


class RoutedExperts(nn.ModuleList):
    """The routed experts under their official names (`experts.{e}.w1.weight`, ...), each expert's weight a
    view into one stacked tensor per projection (`stacks`).

    The stacks are built once and the views kept through whatever moves or converts the weights:
    `.to()`/`.cuda()`/`.half()`/`to_empty()` convert each stack once (`_apply`); `load_state_dict` and
    in-place copies write through the views; a deep copy, an unpickling or a `load_state_dict(assign=True)`
    re-stacks (one copy)."""

    def __init__(self, n_experts: int, dim: int, inter_dim: int, swiglu_limit: float) -> None:
        super().__init__(Expert(dim, inter_dim, swiglu_limit) for _ in range(n_experts))
        self.limit = swiglu_limit
        self.stacks = self._stack()
        self._point_experts()
        self.register_load_state_dict_post_hook(_restack_after_load)

    def _linears(self, projection: str) -> list[nn.Linear]:
        return [getattr(expert, projection) for expert in self]

    def _weights(self, projection: str) -> list[torch.Tensor]:
        return [linear.weight for linear in self._linears(projection)]

    def _stack(self) -> ExpertStacks:
        with torch.no_grad():
            return ExpertStacks(*(torch.stack(self._weights(p)) for p in ("w1", "w2", "w3")))

    def _point_experts(self) -> None:
        """Make every expert's weights views into the stacks."""
        for projection in ("w1", "w2", "w3"):
            stack = getattr(self.stacks, projection)
            for expert, linear in enumerate(self._linears(projection)):
                linear.weight = nn.Parameter(stack[expert], requires_grad=linear.weight.requires_grad)

    def is_stacked(self) -> bool:
        """Whether every expert's weights are still views into the stacks."""
        for projection in ("w1", "w2", "w3"):
            stack = getattr(self.stacks, projection)
            step = stack[0].numel() * stack.element_size()
            for expert, weight in enumerate(self._weights(projection)):
                if weight.device != stack.device or weight.data_ptr() != stack.data_ptr() + expert * step:
                    return False
        return True

    def ensure_stacked(self) -> None:
        """Re-stack (one copy per projection) if something replaced the experts' weights."""
        if not self.is_stacked():
            self.stacks = self._stack()
            self._point_experts()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> RoutedExperts:
        with torch.no_grad():
            self.stacks = self.stacks.map(fn)
        self._point_experts()
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.ensure_stacked()


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


def _restack_after_load(module: nn.Module, _incompatible_keys: object) -> None:
    assert isinstance(module, RoutedExperts)
    module.ensure_stacked()


class MoE(nn.Module):
    """Routed experts plus one always-on shared expert; `kernels` picks the routed experts' path."""

    def __init__(self, args: ModelArgs, hash_routed: bool) -> None:
        super().__init__()
        self.gate = Gate(args, hash_routed)
        self.experts = RoutedExperts(
            args.n_routed_experts, args.hidden_size, args.moe_intermediate_size, args.swiglu_limit
        )
        self.shared_experts = Expert(args.hidden_size, args.moe_intermediate_size, args.swiglu_limit)

    def forward(
        self, x: torch.Tensor, token_ids: torch.Tensor, kernels: KernelImpl = "reference"
    ) -> torch.Tensor:
        weights, indices = self.gate(x, token_ids)
        routed = grouped_moe(x, weights, indices, self.experts.stacks, self.experts.limit, impl=kernels)
        return routed + self.shared_experts(x)
