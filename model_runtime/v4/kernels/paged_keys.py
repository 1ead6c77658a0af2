"""The indexer kernels' inputs: compressed keys in a paged pool as stored, and the rows that read them.

A pool `[num_blocks, per_block, dim]` holds keys in one of the KV pool's storage formats: plain
float32/bfloat16 rows, FP8 e4m3 rows (no scale), or MXFP4 (two e2m1 codes per byte, low nibble first, one
e8m0 scale byte per 32 values). Row `r` of a batch owns the queries `[query_starts[r], query_starts[r+1])`
and reads its key `t` at `(block_table[r, t // per_block], t % per_block)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK, dequantize_mxfp4

KeyFormat = Literal["plain", "fp8", "mxfp4"]
_STORED_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "plain": (torch.float32, torch.bfloat16),
    "fp8": (torch.float8_e4m3fn,),
    "mxfp4": (torch.uint8,),
}


class IndexerInputError(DeepscoutError, ValueError):
    """Indexer kernel inputs whose shapes or dtypes do not fit together (the message names the mismatch)."""


@dataclass(frozen=True)
class PagedKeys:
    """Indexer keys `[num_blocks, per_block, dim]` as stored.

    * "plain": `data` float32 or bfloat16 `[blocks, per_block, dim]`;
    * "fp8": `data` float8_e4m3fn `[blocks, per_block, dim]`;
    * "mxfp4": `data` uint8 `[blocks, per_block, dim // 2]` and `scale` uint8 (e8m0 bytes)
      `[blocks, per_block, dim // 32]`.
    """

    format: KeyFormat
    data: torch.Tensor
    scale: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.data.dim() != 3:
            raise IndexerInputError(
                f"paged keys must be [blocks, per_block, ...], got {list(self.data.shape)}"
            )
        if (self.format == "mxfp4") != (self.scale is not None):
            raise IndexerInputError(f"{self.format!r} keys carry scales exactly when the format is MXFP4")
        dtypes = _STORED_DTYPES[self.format]
        if self.data.dtype not in dtypes:
            raise IndexerInputError(f"{self.format!r} keys are stored as {dtypes}, got {self.data.dtype}")

    @classmethod
    def dense(cls, keys: torch.Tensor) -> PagedKeys:
        """Plain keys `[T, dim]` as one block of T entries."""
        return cls("plain", keys.unsqueeze(0))

    @property
    def per_block(self) -> int:
        return self.data.shape[1]

    @property
    def dim(self) -> int:
        return self.data.shape[2] * 2 if self.format == "mxfp4" else self.data.shape[2]

    def dequantize(self) -> torch.Tensor:
        """Every stored key `[blocks, per_block, dim]` as the KV pool reads it (bfloat16 unless plain)."""
        if self.format == "plain":
            return self.data
        if self.format == "fp8":
            return self.data.to(torch.bfloat16)
        assert self.scale is not None
        blocks, per_block, half = self.data.shape
        flat = dequantize_mxfp4(self.data.reshape(-1, half), self.scale.reshape(-1, half * 2 // FP4_BLOCK))
        return flat.to(torch.bfloat16).view(blocks, per_block, half * 2)


@dataclass(frozen=True)
class PagedRows:
    """Which queries belong to which row and where each row's keys live.

    `block_table` `[R, max_blocks]` int32 (row r's logical block j -> physical block), `query_starts`
    `[R + 1]` int32 (row r owns queries `[query_starts[r], query_starts[r+1])`, rows in order), and
    `max_queries`, a host-known bound on any row's query count (it sizes the kernel's grid). Table
    entries past a row's allocated blocks may hold anything: only keys below a query's limit are read.
    """

    block_table: torch.Tensor
    query_starts: torch.Tensor
    max_queries: int

    @classmethod
    def single(cls, n_queries: int, device: torch.device) -> PagedRows:
        """Every query in one row whose keys are block 0 (the dense case)."""
        table = torch.zeros(1, 1, dtype=torch.int32, device=device)
        starts = torch.arange(2, dtype=torch.int32, device=device) * n_queries
        return cls(table, starts, n_queries)

    @property
    def num_rows(self) -> int:
        return self.block_table.shape[0]


def key_capacity(keys: PagedKeys, rows: PagedRows) -> int:
    """`T_cap`: the key slots a row's block table can address (the width of the score matrix)."""
    return rows.block_table.shape[1] * keys.per_block
