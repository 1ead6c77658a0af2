"""A plain contiguous implementation of the cache protocol: growable tensors per layer (tests).

Rollback (cache protocol v2): a mark keeps the window as it was (tensors are replaced, never written in
place), then collects the window rows written and the compressors' trails until the rollback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict, Unpack

import torch

from deepscout.model_runtime.v4.cache.protocol import (
    CompressorName,
    CompressorTail,
    CompressorTrail,
    TokenMark,
    WindowView,
    trail_covering,
)
from deepscout.model_runtime.v4.model_config import LayerKind


class CacheUsageError(ValueError):
    """A cache method was called in a way the protocol does not allow."""


class _GrowableRows:
    """Append-only `[n, dim]` rows in one tensor whose capacity doubles when full."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self._data = torch.empty(0, dim, dtype=dtype, device=device)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, rows: torch.Tensor) -> None:
        n = rows.shape[0]
        if self._size + n > self._data.shape[0]:
            capacity = max(16, 2 * self._data.shape[0], self._size + n)
            grown = self._data.new_empty(capacity, self._data.shape[1])
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : self._size + n] = rows
        self._size += n

    def view(self) -> torch.Tensor:
        return self._data[: self._size]

    def truncate(self, size: int) -> None:
        """Keep the first `size` rows."""
        self._size = min(self._size, size)


@dataclass
class _Mark:
    """What a layer needs to roll back: the window at the mark, then what was written since."""

    window_kv: torch.Tensor
    window_pos: torch.Tensor
    written_kv: list[torch.Tensor] = field(default_factory=list)
    written_pos: list[torch.Tensor] = field(default_factory=list)
    trails: dict[CompressorName, list[CompressorTrail]] = field(default_factory=dict)


class LayerLayout(TypedDict):
    """The keyword arguments of `ContiguousLayerCache` besides its kind (defaults there);
    `ContiguousSequenceCache` passes them to every layer."""

    head_dim: int
    index_head_dim: int
    sliding_window: int
    dtype: NotRequired[torch.dtype]
    device: NotRequired[torch.device | str]


class ContiguousLayerCache:
    """One sequence's cache for one layer, stored contiguously in `dtype` on `device`."""

    def __init__(
        self,
        kind: LayerKind,
        *,
        head_dim: int,
        index_head_dim: int,
        sliding_window: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self._kind = kind
        self._window = sliding_window
        self._dtype = dtype
        device = torch.device(device)
        self._window_kv = torch.empty(0, head_dim, dtype=dtype, device=device)
        self._window_pos = torch.empty(0, dtype=torch.long, device=device)
        self._tails: dict[str, CompressorTail] = {}
        self._entries: dict[str, _GrowableRows] = {}
        self._mark: _Mark | None = None
        if kind is not LayerKind.SLIDING:
            self._entries["main"] = _GrowableRows(head_dim, dtype, device)
        if kind is LayerKind.CSA:
            self._entries["indexer"] = _GrowableRows(index_head_dim, dtype, device)

    @property
    def kind(self) -> LayerKind:
        return self._kind

    def read_window(self) -> WindowView:
        return WindowView(self._window_kv, self._window_pos)

    def write_window(self, kv: torch.Tensor, positions: torch.Tensor) -> None:
        # checked where it costs no device sync (CPU tensors: the tests and the reference runs)
        on_cpu = positions.device.type == "cpu"
        if on_cpu and positions.numel() and self._window_pos.numel() and positions[0] <= self._window_pos[-1]:
            raise CacheUsageError("window positions must increase; got a position at or before the last one")
        if self._mark is not None:
            self._mark.written_kv.append(kv.to(self._dtype))
            self._mark.written_pos.append(positions)
        self._window_kv = torch.cat([self._window_kv, kv.to(self._dtype)])[-self._window :]
        self._window_pos = torch.cat([self._window_pos, positions])[-self._window :]

    def read_tail(self, name: CompressorName) -> CompressorTail | None:
        self._entries_of(name)
        return self._tails.get(name)

    def write_tail(self, name: CompressorName, tail: CompressorTail) -> None:
        self._entries_of(name)
        self._tails[name] = tail.map(lambda t: t.to(self._dtype))

    def num_entries(self, name: CompressorName) -> int:
        return len(self._entries_of(name))

    def append_entries(self, name: CompressorName, entries: torch.Tensor) -> None:
        self._entries_of(name).append(entries.to(self._dtype))

    def gather_entries(self, name: CompressorName, indices: torch.Tensor) -> torch.Tensor:
        rows = self._entries_of(name).view()
        return rows[indices]

    def all_entries(self, name: CompressorName) -> torch.Tensor:
        return self._entries_of(name).view()

    def record_trail(self, name: CompressorName, trail: CompressorTrail) -> None:
        self._entries_of(name)
        if self._mark is not None:
            self._mark.trails.setdefault(name, []).append(trail)

    def mark(self) -> None:
        self._mark = _Mark(self._window_kv, self._window_pos)

    def rollback(self, num_tokens: int) -> None:
        mark, self._mark = self._mark, None
        if mark is None:
            raise CacheUsageError("rollback needs a mark() first")
        if mark.written_kv:
            positions = torch.cat(mark.written_pos)
            keep = int((positions < num_tokens).sum())
            kv = torch.cat([mark.window_kv, *mark.written_kv])
            pos = torch.cat([mark.window_pos, positions])
            cut = mark.window_kv.shape[0] + keep
            self._window_kv, self._window_pos = kv[:cut][-self._window :], pos[:cut][-self._window :]
        for name, trails in mark.trails.items():
            trail = trail_covering(trails, num_tokens)
            self._entries[name].truncate(num_tokens // trail.ratio)
            tail = trail.tail_after(num_tokens)
            if tail is None:
                self._tails.pop(name, None)
            else:
                self.write_tail(name, tail)

    def _entries_of(self, name: CompressorName) -> _GrowableRows:
        try:
            return self._entries[name]
        except KeyError:
            raise CacheUsageError(f"a {self._kind.value} layer has no {name!r} compressor") from None

    def nbytes(self) -> int:
        """Bytes held by this layer's tensors (window, tails, entries at their current size)."""
        total = self._window_kv.nbytes + self._window_pos.nbytes
        total += sum(t.nbytes for tail in self._tails.values() for t in tail.tensors())
        return total + sum(rows.view().nbytes for rows in self._entries.values())


class ContiguousSequenceCache:
    """One sequence's cache: a `ContiguousLayerCache` per attention layer (main layers, then MTP layers)."""

    def __init__(self, layer_kinds: Sequence[LayerKind], **layout: Unpack[LayerLayout]) -> None:
        self._layers = [ContiguousLayerCache(kind, **layout) for kind in layer_kinds]
        self._num_tokens = 0
        self._mark = TokenMark()

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def layer(self, index: int) -> ContiguousLayerCache:
        return self._layers[index]

    def advance(self, n: int) -> None:
        if n < 0:
            raise CacheUsageError(f"cannot advance by a negative count ({n})")
        self._num_tokens += n

    def mark(self) -> None:
        self._mark.set(self._num_tokens)
        for layer in self._layers:
            layer.mark()

    def rollback(self, n: int) -> None:
        self._num_tokens = self._mark.rolled_back(self._num_tokens, n)
        for layer in self._layers:
            layer.rollback(self._num_tokens)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self._layers)
