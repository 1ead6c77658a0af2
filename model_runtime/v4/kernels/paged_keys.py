"""Compressed entries in a paged pool as stored, and the rows that read them (the kernels' inputs).

A pool `[num_blocks, per_block, dim]` holds entries in one of the KV pool's storage formats: plain
float32/bfloat16 rows, FP8 e4m3 rows (no scale), FP8 e4m3 leading dims with BF16 trailing RoPE dims (main
entries of the paper layout), or MXFP4 (two e2m1 codes per byte, low nibble first, one e8m0 scale byte per
32 values). Row `r` of a batch owns the queries `[query_starts[r], query_starts[r+1])` and reads its key
`t` at `(block_table[r, t // per_block], t % per_block)`.

Writes quantise on the pool's device (FP8: round to nearest even, saturated at ±448; the rows are
RMS-normalised, so no scale is needed); reads return bfloat16 for every quantised format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.weights.quant import (
    FP8_E4M3_MAX,
    dequantize_mxfp4,
    quantize_mxfp4,
)

KeyFormat = Literal["plain", "fp8", "fp8_rope", "mxfp4"]
_STORED_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "plain": (torch.float32, torch.bfloat16),
    "fp8": (torch.float8_e4m3fn,),
    "fp8_rope": (torch.float8_e4m3fn,),
    "mxfp4": (torch.uint8,),
}


class IndexerInputError(DeepscoutError, ValueError):
    """Indexer kernel inputs whose shapes or dtypes do not fit together (the message names the mismatch)."""


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    """e4m3, round to nearest even, saturated (computed on `x`'s device)."""
    return x.float().clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)


@dataclass(frozen=True)
class PagedKeys:
    """Entries `[num_blocks, per_block, dim]` as stored.

    * "plain": `data` float32 or bfloat16 `[blocks, per_block, dim]`;
    * "fp8": `data` float8_e4m3fn `[blocks, per_block, dim]`;
    * "fp8_rope": `data` float8_e4m3fn `[blocks, per_block, dim - rope_dim]` and `rope` bfloat16
      `[blocks, per_block, rope_dim]` (the trailing, rotated dims);
    * "mxfp4": `data` uint8 `[blocks, per_block, dim // 2]` and `scale` uint8 (e8m0 bytes)
      `[blocks, per_block, dim // 32]`.
    """

    format: KeyFormat
    data: torch.Tensor
    scale: torch.Tensor | None = None
    rope: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.data.dim() != 3:
            raise IndexerInputError(
                f"paged keys must be [blocks, per_block, ...], got {list(self.data.shape)}"
            )
        if (self.format == "mxfp4") != (self.scale is not None):
            raise IndexerInputError(f"{self.format!r} keys carry scales exactly when the format is MXFP4")
        if (self.format == "fp8_rope") != (self.rope is not None):
            raise IndexerInputError(f"{self.format!r} keys carry BF16 RoPE dims exactly when 'fp8_rope'")
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
        if self.format == "mxfp4":
            return self.data.shape[2] * 2
        if self.rope is not None:
            return self.data.shape[2] + self.rope.shape[2]
        return self.data.shape[2]

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The stored tensors (first dim = block id)."""
        extra = self.scale if self.scale is not None else self.rope
        return (self.data,) if extra is None else (self.data, extra)

    def read(self, blocks: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Entries at (`blocks`, `offsets`) (equal shapes `[...]`) as `[..., dim]`, bfloat16 unless plain."""
        data = self.data[blocks, offsets]
        if self.format == "plain":
            return data
        if self.format == "fp8":
            return data.to(torch.bfloat16)
        if self.rope is not None:
            return torch.cat([data.to(torch.bfloat16), self.rope[blocks, offsets]], dim=-1)
        assert self.scale is not None
        scale = self.scale[blocks, offsets]
        flat = dequantize_mxfp4(data.reshape(-1, data.shape[-1]), scale.reshape(-1, scale.shape[-1]))
        return flat.view(*data.shape[:-1], self.dim).to(torch.bfloat16)

    def write(self, blocks: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor) -> None:
        """Store `rows` `[n, dim]` at (`blocks[i]`, `offsets[i]`), quantised on the pool's device."""
        rows = rows.to(self.data.device)
        if self.format == "plain":
            self.data[blocks, offsets] = rows.to(self.data.dtype)
        elif self.format == "fp8":
            self.data[blocks, offsets] = to_fp8(rows)
        elif self.rope is not None:
            split = self.data.shape[2]
            self.data[blocks, offsets] = to_fp8(rows[:, :split])
            self.rope[blocks, offsets] = rows[:, split:].to(torch.bfloat16)
        else:
            assert self.scale is not None
            packed, scale = quantize_mxfp4(rows)
            self.data[blocks, offsets] = packed.view(torch.uint8)
            self.scale[blocks, offsets] = scale.view(torch.uint8)

    def dequantize(self) -> torch.Tensor:
        """Every stored entry `[blocks, per_block, dim]` as `read` returns them."""
        if self.format == "plain":
            return self.data
        blocks, per_block = self.data.shape[:2]
        ids = torch.arange(blocks, device=self.data.device)[:, None].expand(blocks, per_block)
        offsets = torch.arange(per_block, device=self.data.device)[None, :].expand(blocks, per_block)
        return self.read(ids, offsets)


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
