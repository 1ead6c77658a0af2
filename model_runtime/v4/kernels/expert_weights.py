"""The grouped MoE's inputs: the routed experts' BF16 weights stacked per projection, and which global
experts a rank's stacks hold (see `grouped_moe.py` for the function they feed; they live apart so the
Triton modules and the MXFP4 stacks import them without importing the dispatcher).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ExpertStacks:
    """The routed experts' weights, one tensor per projection: w1/w3 `[E, inter, hidden]`, w2 `[E, hidden,
    inter]` (expert `e`'s `nn.Linear` weights are `w1[e]`, `w2[e]`, `w3[e]`)."""

    w1: torch.Tensor
    w2: torch.Tensor
    w3: torch.Tensor

    @property
    def n_experts(self) -> int:
        return self.w1.shape[0]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> ExpertStacks:
        """The stacks with `fn` applied to each projection."""
        return ExpertStacks(fn(self.w1), fn(self.w2), fn(self.w3))

    def expert(self, index: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expert `index`'s (w1, w2, w3) in `dtype` (views when already in it)."""
        return self.w1[index].to(dtype), self.w2[index].to(dtype), self.w3[index].to(dtype)


@dataclass(frozen=True)
class ExpertSlice:
    """The global experts `[start, start + count)` whose weights a rank's stacks hold, in order."""

    start: int
    count: int

    @property
    def stop(self) -> int:
        return self.start + self.count

    def local_ids(self, indices: torch.Tensor) -> torch.Tensor:
        """`indices` (global expert ids) as stack rows; `count` (the sentinel) where not held here."""
        held = (indices >= self.start) & (indices < self.stop)
        return torch.where(held, indices - self.start, self.count)
