"""The packed batch the V4 forward pass works on: the valid tokens of all rows concatenated (`[N, ...]`).

Each batch row is a `RowSegment` of the packed axis with its own start position, read from the row's
`SequenceCache` (`num_tokens`). Everything except attention is per token; attention runs per segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.cache.protocol import SequenceCache


class ForwardInputError(DeepscoutError, ValueError):
    """The inputs handed to the model's forward are inconsistent (shapes, lengths, caches)."""


@dataclass(frozen=True)
class RowSegment:
    """One batch row inside the packed tokens: `offset` into the packed axis, `start` position, `length`."""

    offset: int
    start: int
    length: int

    @property
    def positions(self) -> torch.Tensor:
        return torch.arange(self.start, self.start + self.length)


def pack_rows(
    input_ids: torch.Tensor, caches: Sequence[SequenceCache], lengths: Sequence[int] | None
) -> tuple[torch.Tensor, list[RowSegment]]:
    """Valid tokens of all rows concatenated, and each row's segment (start position from its cache).

    Rows are right-padded to `input_ids.shape[1]`; `lengths` (default: all full) says how many are valid.
    """
    if input_ids.dim() != 2:
        raise ForwardInputError(f"input_ids must be [batch, seq]; got shape {tuple(input_ids.shape)}")
    batch, seq = input_ids.shape
    if len(caches) != batch:
        raise ForwardInputError(f"need one cache per row: {batch} rows, {len(caches)} caches")
    lens = [seq] * batch if lengths is None else [int(n) for n in lengths]
    if len(lens) != batch or any(n < 1 or n > seq for n in lens):
        raise ForwardInputError(f"lengths must be {batch} values in [1, {seq}]; got {lens}")
    segments, offset = [], 0
    for n, cache in zip(lens, caches, strict=True):
        segments.append(RowSegment(offset, cache.num_tokens, n))
        offset += n
    token_ids = torch.cat([input_ids[row, :n] for row, n in enumerate(lens)])
    return token_ids, segments


def packed_positions(segments: Sequence[RowSegment], device: torch.device) -> torch.Tensor:
    """Absolute position of every packed token `[N]`, on `device`."""
    return torch.cat([s.positions for s in segments]).to(device)
