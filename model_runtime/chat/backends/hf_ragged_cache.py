"""The KV of a decode batch of Hugging Face sequences of different lengths: rows left-padded in one cache.

Every row of :class:`RaggedBatchCache` holds one sequence's keys and values, right-aligned so that one
forward appends a column for all rows. A row joins with its own ``DynamicCache`` (prefilled alone) and
leaves with its own again (padding stripped), so sessions outlive the batch; a copy of a row's prefix can
start another sequence (:meth:`RaggedBatchCache.row_prefix`). The attention mask hides each row's
padding and each row's positions count only its own tokens, so a row decodes as it would alone. Each
layer's keys and values are views of buffers with spare columns (:class:`GrowingLayer`), so a decode
step writes one column instead of copying the whole batch's KV (``DynamicLayer`` concatenates).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

Layers = list[tuple[torch.Tensor, torch.Tensor]]
SPARE_COLUMNS = 128
"""Columns a batch layer allocates beyond what it holds (at least; a quarter more for long rows)."""


def cache_layers(cache: DynamicCache) -> Layers:
    """The key and value tensors (``[batch, heads, tokens, dim]``) of each layer of ``cache``."""
    layers: Layers = [(getattr(layer, "keys"), getattr(layer, "values")) for layer in cache.layers]  # noqa: B009
    return layers


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are the filled part of buffers with spare columns: an
    update writes into the spare columns (reallocating, with more spare, only when they run out)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self._columns = keys.shape[2]
        self._key_buffer, self._value_buffer = _with_room(keys), _with_room(values)
        self.keys, self.values = (
            self._key_buffer[:, :, : self._columns],
            self._value_buffer[:, :, : self._columns],
        )

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self._columns, self._columns + key_states.shape[2]
        if end > self._key_buffer.shape[2]:
            self._key_buffer = _with_room(torch.cat([self._key_buffer[:, :, :start], key_states], dim=2))
            self._value_buffer = _with_room(
                torch.cat([self._value_buffer[:, :, :start], value_states], dim=2)
            )
        else:
            self._key_buffer[:, :, start:end] = key_states
            self._value_buffer[:, :, start:end] = value_states
        self._columns = end
        keys, values = self._key_buffer[:, :, :end], self._value_buffer[:, :, :end]
        self.keys, self.values = keys, values
        return keys, values


def growing_cache(layers: Layers, config: Any) -> DynamicCache:
    """A ``DynamicCache`` holding ``layers`` in :class:`GrowingLayer` s."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(keys, values) for keys, values in layers]
    return cache


class RaggedBatchCache:
    """One ``DynamicCache`` for the rows decoding together, each left-padded to the longest."""

    def __init__(self, config: Any) -> None:
        self._config = config
        self.cache = DynamicCache(config=config)
        self.pads: list[int] = []

    def __len__(self) -> int:
        return len(self.pads)

    @property
    def width(self) -> int:
        """Columns of the cache (the longest row's tokens)."""
        return self.cache.get_seq_length() if self.pads else 0

    def add(self, row: DynamicCache) -> None:
        """Append ``row`` (one sequence's cache) as the last row."""
        length = row.get_seq_length()
        width = max(self.width, length)
        joined: Layers = []
        old = cache_layers(self.cache) if self.pads else None
        for index, (keys, values) in enumerate(cache_layers(row)):
            new_keys, new_values = _left_pad(keys, width - length), _left_pad(values, width - length)
            if old is not None:
                grow = width - self.width
                new_keys = torch.cat([_left_pad(old[index][0], grow), new_keys])
                new_values = torch.cat([_left_pad(old[index][1], grow), new_values])
            joined.append((new_keys, new_values))
        self.pads = [pad + width - self.width for pad in self.pads] + [width - length]
        self.cache = growing_cache(joined, self._config)

    def remove(self, index: int) -> DynamicCache:
        """Take row ``index`` out; returns its own cache (its tokens only)."""
        pad = self.pads[index]
        layers = cache_layers(self.cache)
        own = [
            (keys[index : index + 1, :, pad:].clone(), values[index : index + 1, :, pad:].clone())
            for keys, values in layers
        ]
        del self.pads[index]
        if self.pads:
            keep = torch.tensor([i for i in range(len(self.pads) + 1) if i != index])
            trim = min(self.pads)  # columns that are padding in every row left
            rest = [
                (k.index_select(0, keep)[:, :, trim:], v.index_select(0, keep)[:, :, trim:])
                for k, v in layers
            ]
            self.pads = [pad - trim for pad in self.pads]
            self.cache = growing_cache(rest, self._config)
        else:
            self.cache = DynamicCache(config=self._config)
        return DynamicCache(ddp_cache_data=own, config=self._config)

    def row_prefix(self, index: int, length: int) -> DynamicCache:
        """A copy of the first ``length`` tokens of row ``index`` as a cache of its own (the row stays)."""
        start = self.pads[index]
        prefix = [
            (
                keys[index : index + 1, :, start : start + length].clone(),
                values[index : index + 1, :, start : start + length].clone(),
            )
            for keys, values in cache_layers(self.cache)
        ]
        return DynamicCache(ddp_cache_data=prefix, config=self._config)

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention mask (``[rows, width + 1]``) and positions (``[rows, 1]``) of the next column."""
        width = self.width
        columns = torch.arange(width + 1)
        pads = torch.tensor(self.pads).unsqueeze(1)
        mask = (columns.unsqueeze(0) >= pads).long()
        positions = width - pads
        return mask, positions


def _with_room(tensor: torch.Tensor) -> torch.Tensor:
    """A buffer holding ``tensor`` in its first columns, with spare columns after them."""
    shape = list(tensor.shape)
    shape[2] += max(SPARE_COLUMNS, tensor.shape[2] // 4)
    buffer = tensor.new_empty(shape)
    buffer[:, :, : tensor.shape[2]] = tensor
    return buffer


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    if columns <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[2] = columns
    return torch.cat([tensor.new_zeros(shape), tensor], dim=2)
