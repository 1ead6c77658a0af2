"""The compressor decode step's inputs: one compressor's state over all slots, its parameters and entry pool.

See `compress_step.py` for what the step does with them; they live apart so the Triton module and the
reference import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CompressorState:
    """One compressor's tensors over all slots, its parameters and where its entries go."""

    tail_kv: torch.Tensor
    tail_gate: torch.Tensor
    overlap_kv: torch.Tensor | None
    overlap_gate: torch.Tensor | None
    ape: torch.Tensor
    norm_weight: torch.Tensor
    norm_eps: float
    pool: torch.Tensor
    block_tables: torch.Tensor
