"""The mHC mixing logits in split form, as the premix leaves them and its consumers read them
(`hc_streams.py`, `hc_mix.py` and their Triton kernels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixLogits:
    """Mixing logits of T tokens in split form: `part` `[splits, T, ≥ n_mix]` the unscaled projections
    `x · fnᵀ` of `splits` slices of the hc·D axis (`k_total` long; columns past `n_mix` are padding) and
    `sumsq` `[splits, T]` the slices' sums of squares. The logits are `Σ part · rsqrt(Σ sumsq / k_total +
    eps)`."""

    part: torch.Tensor
    sumsq: torch.Tensor
    k_total: int
    n_mix: int

    @property
    def splits(self) -> int:
        return self.part.shape[0]

    def logits(self, norm_eps: float) -> torch.Tensor:
        """The finished logits `[T, n_mix]` (float32)."""
        inv = torch.rsqrt(self.sumsq.sum(0) / self.k_total + norm_eps)
        return self.part.sum(0)[:, : self.n_mix] * inv[:, None]
