"""Numeric building blocks of the V4 forward pass: RMS normalisation and rotary position embeddings (RoPE).

RoPE rotates the trailing `rope_dim` channels as interleaved pairs; cos/sin are kept in float32, one per
pair, and may carry an attention scaling (YaRN's `attention_factor`) folded in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.norm_rope import rms_norm, rope, rope_into_rows
from deepscout.model_runtime.v4.kernels.rope_rows import RowNorm, RowPositions
from deepscout.model_runtime.v4.model_config import YarnScaling

# ----------------------------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """RMSNorm with a float32 weight; computes in float32 and casts back once (`kernels/norm_rope.py`;
    `kernels` is set by the model for all its norms)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.kernels: KernelImpl = "reference"
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, impl=self.kernels)

    def before_rope(self) -> RowNorm:
        """This norm, to be applied by `apply_rope` in the rotation's launch."""
        return RowNorm(self.weight, self.eps)


# ------------------------------------------------------------------------------------------------ RoPE


def rope_inv_freq(rope_dim: int, theta: float, yarn: YarnScaling | None) -> torch.Tensor:
    """Inverse frequencies (one per interleaved pair), with YaRN interpolation when `yarn` is given."""
    pos_freqs = theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float) / rope_dim)
    inv_freq = 1.0 / pos_freqs
    if yarn is None:
        return inv_freq

    def correction_dim(rotations: float) -> float:
        return (rope_dim * math.log(yarn.original_max_position_embeddings / (rotations * 2 * math.pi))) / (
            2 * math.log(theta)
        )

    low = max(math.floor(correction_dim(yarn.beta_fast)), 0)
    high = min(math.ceil(correction_dim(yarn.beta_slow)), rope_dim - 1)
    span = (high - low) if high != low else 0.001
    ramp = torch.clamp((torch.arange(rope_dim // 2, dtype=torch.float32) - low) / span, 0, 1)
    extrapolation = 1 - ramp
    interpolated = 1.0 / (yarn.factor * pos_freqs)
    return interpolated * (1 - extrapolation) + inv_freq * extrapolation


@dataclass(frozen=True)
class RopeSpec:
    """A RoPE flavour: inverse frequencies, the attention scaling folded into cos/sin, and the kernels
    its tables apply the rotation with."""

    inv_freq: torch.Tensor
    scaling: float = 1.0
    kernels: KernelImpl = "reference"

    def at(self, positions: torch.Tensor) -> RopeTable:
        return RopeTable.at(positions, self.inv_freq, self.scaling, self.kernels)


@dataclass(frozen=True)
class RopeTable:
    """cos/sin (float32, one per pair) at some positions, plus the attention scaling they carry."""

    cos: torch.Tensor
    sin: torch.Tensor
    kernels: KernelImpl = "reference"

    @classmethod
    def at(
        cls,
        positions: torch.Tensor,
        inv_freq: torch.Tensor,
        scaling: float = 1.0,
        kernels: KernelImpl = "reference",
    ) -> RopeTable:
        freqs = positions.float()[..., None] * inv_freq.to(positions.device)
        return cls(freqs.cos() * scaling, freqs.sin() * scaling, kernels)


def apply_rope(
    x: torch.Tensor, table: RopeTable, *, inverse: bool = False, norm: RowNorm | None = None
) -> torch.Tensor:
    """Rotate the trailing rope channels (interleaved pairs) of `x` `[n, (heads,) dim]` per table row.

    `inverse` applies the conjugate rotation (used on the attention output, paper §2.3.3); `norm` RMS-
    normalises each row (head) first, in the same launch on the fused path.
    """
    return rope(x, table.cos, table.sin, inverse=inverse, impl=table.kernels, norm=norm)


def apply_rope_into(
    x: torch.Tensor,
    table: RopeTable,
    out: torch.Tensor,
    rows: torch.Tensor,
    *,
    norm: RowNorm | None = None,
    positions: RowPositions | None = None,
) -> None:
    """`apply_rope(x, table, norm=norm)` of `x` `[n, dim]`, written to rows `rows` of `out` `[R, dim]` (its
    dtype), and `positions` beside them (same launch on the fused path)."""
    rope_into_rows(x, table.cos, table.sin, out, rows, impl=table.kernels, norm=norm, positions=positions)
