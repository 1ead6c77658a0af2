"""What a RoPE launch may do to its rows besides rotating them (`norm_rope.rope`, `rope_into_rows`): an RMS
norm first, and positions written beside the rows. Apart from `norm_rope.py` so that its Triton module
imports them without importing the contract that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowPositions:
    """Positions `values` `[n]` written beside rows: `out[rows[i]] = values[i]` (`out` `[R]`)."""

    values: torch.Tensor
    out: torch.Tensor


@dataclass(frozen=True)
class RowNorm:
    """An RMS norm over the last dim applied before a rotation: `rms_norm(x, weight, eps)`."""

    weight: torch.Tensor | None
    eps: float
