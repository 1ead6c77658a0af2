"""The routed experts' weights kept in MXFP4 (V4-Flash's stored format), stacked per projection.

Each projection is a packed e2m1 stack `[E, N, K/2]` (two codes per byte, element 2j in the low nibble;
stored as uint8, int8 or float4_e2m1fn_x2) and its scale stack `[E, N, K/32]` (e8m0: float8_e8m0fnu or the
raw exponent bytes as uint8), one power of two per 32 consecutive elements of a row, exactly as
`weights/quant.py` defines MXFP4: w1/w3 `[E, inter, hidden/2]`, w2 `[E, hidden, inter/2]`.

Dequantisation is exact (a ≤2-significant-bit value times a power of two) in float32 and bfloat16 wherever
the product is in range; it runs on the tensors' device, one expert at a time where only some are needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertStacks
from deepscout.model_runtime.v4.weights.quant import (
    FP4_BLOCK,
    FP4_STORAGE_DTYPES,
    dequantize_mxfp4,
    quantize_mxfp4,
)

#: dtypes an MXFP4 scale stack may be stored as (uint8: the raw e8m0 exponent bytes).
MXFP4_SCALE_DTYPES = (torch.float8_e8m0fnu, torch.uint8)


@dataclass(frozen=True)
class Mxfp4ExpertStacks:
    """Packed projections `w1`/`w3` `[E, inter, hidden/2]`, `w2` `[E, hidden, inter/2]` and their e8m0
    scales `w1_scale`/`w3_scale` `[E, inter, hidden/32]`, `w2_scale` `[E, hidden, inter/32]`."""

    w1: torch.Tensor
    w2: torch.Tensor
    w3: torch.Tensor
    w1_scale: torch.Tensor
    w2_scale: torch.Tensor
    w3_scale: torch.Tensor

    def __post_init__(self) -> None:
        if any(w.dtype not in FP4_STORAGE_DTYPES for w in (self.w1, self.w2, self.w3)):
            raise TypeError(f"packed MXFP4 stacks must be one of {FP4_STORAGE_DTYPES}")
        if any(s.dtype not in MXFP4_SCALE_DTYPES for s in (self.w1_scale, self.w2_scale, self.w3_scale)):
            raise TypeError(f"MXFP4 scale stacks must be one of {MXFP4_SCALE_DTYPES}")
        if self.w1.dim() != 3 or self.w1.shape != self.w3.shape:
            raise ValueError(f"w1/w3 must both be [E, inter, hidden/2], got {self.w1.shape}, {self.w3.shape}")
        experts, inter, half_hidden = self.w1.shape
        if self.w2.shape != (experts, 2 * half_hidden, inter // 2) or inter % FP4_BLOCK:
            raise ValueError(f"w2 must be [E, hidden, inter/2] = {[experts, 2 * half_hidden, inter // 2]}")
        for name in ("w1", "w2", "w3"):
            packed, scale = getattr(self, name), getattr(self, f"{name}_scale")
            e, n, half_k = packed.shape
            if half_k % (FP4_BLOCK // 2) or scale.shape != (e, n, 2 * half_k // FP4_BLOCK):
                raise ValueError(f"{name}_scale must be {[e, n, 2 * half_k // FP4_BLOCK]}, got {scale.shape}")

    @property
    def n_experts(self) -> int:
        return self.w1.shape[0]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Mxfp4ExpertStacks:
        """The stacks with `fn` applied to each packed and scale tensor (a move or a copy, dtypes kept)."""
        return Mxfp4ExpertStacks(*(fn(getattr(self, f.name)) for f in fields(self)))

    def expert(self, index: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expert `index`'s (w1, w2, w3) dequantised to `dtype`."""
        w1, w2, w3 = (
            dequantize_mxfp4(getattr(self, p)[index], getattr(self, f"{p}_scale")[index], dtype=dtype)
            for p in ("w1", "w2", "w3")
        )
        return w1, w2, w3

    def dequantize(self, dtype: torch.dtype) -> ExpertStacks:
        """Every expert dequantised to `dtype` (exact; see the module docstring)."""
        per_expert = [self.expert(e, dtype) for e in range(self.n_experts)]
        return ExpertStacks(*(torch.stack(projection) for projection in zip(*per_expert, strict=True)))


def quantize(stacks: ExpertStacks) -> Mxfp4ExpertStacks:
    """`stacks` rounded to MXFP4 by `quantize_mxfp4` (packed uint8, float8_e8m0fnu scales), expert by
    expert on the stacks' device."""

    def stack(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        packed, scales = zip(*(quantize_mxfp4(w) for w in weights), strict=True)
        return torch.stack(packed).view(torch.uint8), torch.stack(scales)

    (w1, s1), (w2, s2), (w3, s3) = stack(stacks.w1), stack(stacks.w2), stack(stacks.w3)
    return Mxfp4ExpertStacks(w1, w2, w3, s1, s2, s3)
