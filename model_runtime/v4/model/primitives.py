"""Numeric building blocks of the V4 forward pass: RMS normalisation and rotary position embeddings (RoPE).

RoPE rotates the trailing `rope_dim` channels as interleaved pairs; cos/sin are kept in float32, one per
pair, and may carry an attention scaling (YaRN's `attention_factor`) folded in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from deepscout.model_runtime.v4.model_config import YarnScaling

# ----------------------------------------------------------------------------------------------- norms


class RMSNorm(nn.Module):
    """RMSNorm with a float32 weight; computes in float32 and casts back once."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * xf).to(x.dtype)


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMS normalisation over the last dim (the scale is computed in float32)."""
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)


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
    """A RoPE flavour: inverse frequencies and the attention scaling folded into cos/sin."""

    inv_freq: torch.Tensor
    scaling: float = 1.0

    def at(self, positions: torch.Tensor) -> RopeTable:
        return RopeTable.at(positions, self.inv_freq, self.scaling)


@dataclass(frozen=True)
class RopeTable:
    """cos/sin (float32, one per pair) at some positions, plus the attention scaling they carry."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def at(cls, positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float = 1.0) -> RopeTable:
        freqs = positions.float()[..., None] * inv_freq.to(positions.device)
        return cls(freqs.cos() * scaling, freqs.sin() * scaling)


def apply_rope(x: torch.Tensor, table: RopeTable, *, inverse: bool = False) -> torch.Tensor:
    """Rotate the trailing rope channels (interleaved pairs) of `x` `[n, (heads,) dim]` per table row.

    `inverse` applies the conjugate rotation (used on the attention output, paper §2.3.3).
    """
    cos = table.cos.repeat_interleave(2, dim=-1)
    sin = table.sin.repeat_interleave(2, dim=-1)
    if inverse:
        sin = -sin
    if x.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    rope_dim = cos.shape[-1]
    nope, rope = x[..., :-rope_dim], x[..., -rope_dim:]
    rotated_half = torch.stack((-rope[..., 1::2], rope[..., 0::2]), dim=-1).flatten(-2)
    rotated = (rope.float() * cos + rotated_half.float() * sin).to(x.dtype)
    return torch.cat([nope, rotated], dim=-1)
