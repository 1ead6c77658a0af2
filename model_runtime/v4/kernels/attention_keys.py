"""The sparse-attention kernel's inputs: each query's sliding-window band and its compressed entries.

See `sparse_attention.py` for the function they feed; they live apart so the Triton module and the
reference import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepscout.model_runtime.v4.kernels.paged_keys import PagedKeys


@dataclass(frozen=True)
class BandKeys:
    """Each query's sliding-window band in a flat key buffer `kv` `[R, dim]` with positions `[R]` (int64)."""

    kv: torch.Tensor
    positions: torch.Tensor
    start: torch.Tensor  # [M] int32: first row of the query's band
    length: torch.Tensor  # [M] int32: rows in the band
    max_length: int  # host-known upper bound of `length`


@dataclass(frozen=True)
class EntryKeys:
    """Compressed entries in a paged pool `keys` (`[blocks, per_block, dim]` as stored: plain rows, or FP8
    with BF16 RoPE dims), per query: its row's block table row, its visible-entry limit, and either chosen
    `indices` `[M, k]` (int32/int64; out-of-range = skipped) or, when None, every entry below the limit.
    `max_count` bounds the entries any query scans (host-known)."""

    keys: PagedKeys
    block_table: torch.Tensor  # [rows, max_blocks] int32
    row: torch.Tensor  # [M] int32
    limit: torch.Tensor  # [M] int32
    indices: torch.Tensor | None
    max_count: int

    @classmethod
    def dense(
        cls, entries: torch.Tensor, limit: torch.Tensor, indices: torch.Tensor | None = None
    ) -> EntryKeys:
        """One row's entries `[T, dim]` as a single-block pool (every query of the batch reads them)."""
        n = limit.shape[0]
        device = entries.device
        count = indices.shape[1] if indices is not None else entries.shape[0]
        return cls(
            keys=PagedKeys.dense(entries),
            block_table=torch.zeros(1, 1, dtype=torch.int32, device=device),
            row=torch.zeros(n, dtype=torch.int32, device=device),
            limit=limit.to(device=device, dtype=torch.int32),
            indices=indices,
            max_count=count,
        )
