"""The compressor decode step's inputs: one compressor's state over all slots, its parameters and entry pool.

See `compress_step.py` for what the step does with them; they live apart so the Triton module and the
reference import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepscout.model_runtime.v4.kernels.paged_keys import PagedKeys


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
    entries: PagedKeys
    block_tables: torch.Tensor

    def entry_places(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block, offset) `[B]` each of the entry that the token at `positions[b]` belongs to."""
        ratio = self.tail_kv.shape[1]
        entry = positions // ratio
        per_block = self.entries.per_block
        blocks = self.block_tables.gather(1, (entry // per_block)[:, None]).squeeze(1).long()
        return blocks, entry % per_block
