"""The paged implementation of the cache protocol: state from a `StatePool` slot, compressed entries in
`KVBlockPool` blocks named by the sequence's block table (logical block j -> physical block id).

Entry `e` of a compressor with `P` entries per block lives in logical block `e // P` at offset `e % P`.
Blocks are shared read-only between sequences with a common prefix: a sequence only ever appends entries
past its processed tokens, i.e. into blocks it owns alone. The engine grows the block table before a
forward (`CacheCapacityError` otherwise).

Rollback (cache protocol v2): while marked, each layer keeps the ring rows its writes overwrite
(`StatePool.window_undo`) and its compressors' trails; a rollback puts the rows back, rebuilds the tails from
the trails and lowers the entry counts (entries past them are never read, and are overwritten later).
With speculative decoding the MTP layers' cache is a `ContiguousSequenceCache` attached as `mtp` (with its
own token count): `layer(i)` for i past the main layers is its layer `i - num_main_layers`.
"""

from __future__ import annotations

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.cache.contiguous import ContiguousSequenceCache
from deepscout.model_runtime.v4.cache.protocol import (
    CompressorName,
    CompressorTail,
    CompressorTrail,
    LayerCache,
    TokenMark,
    WindowView,
    trail_covering,
)
from deepscout.model_runtime.v4.engine.kv_pool import KVBlockPool
from deepscout.model_runtime.v4.engine.state_cache import StatePool, WindowUndo
from deepscout.model_runtime.v4.model_config import LayerKind


class CacheCapacityError(DeepscoutError, RuntimeError):
    """Entries were appended past the sequence's allocated blocks (an engine bookkeeping bug)."""


class PagedLayerCache:
    """One sequence's view of one main attention layer."""

    def __init__(self, seq: PagedSequenceCache, index: int, kind: LayerKind) -> None:
        self._seq = seq
        self._index = index
        self._kind = kind
        self._counts: dict[str, int] = {}
        self._memo: dict[str, torch.Tensor] = {}
        pool = seq.kv_pool
        if kind is not LayerKind.SLIDING:
            self._counts["main"] = 0
        if kind is LayerKind.CSA:
            self._counts["indexer"] = 0
        self._per_block = pool.entries_per_block(kind) if kind is not LayerKind.SLIDING else 0
        self._undo: list[WindowUndo] | None = None  # None: not marked
        self._trails: dict[CompressorName, list[CompressorTrail]] = {}
        self.reset_counts(seq.num_tokens)

    def reset_counts(self, num_tokens: int) -> None:
        """Entries present after `num_tokens` tokens: exactly those whose window is complete."""
        ratio = self._seq.kv_pool.args.ratio(self._kind)
        for name in self._counts:
            self._counts[name] = num_tokens // ratio
        self._memo.clear()

    @property
    def kind(self) -> LayerKind:
        return self._kind

    def read_window(self) -> WindowView:
        return self._seq.states.read_window(self._seq.slot, self._index)

    def write_window(self, kv: torch.Tensor, positions: torch.Tensor) -> None:
        seq, start = self._seq, self._seq.num_tokens
        if self._undo is not None:
            self._undo.append(seq.states.window_undo(seq.slot, self._index, start=start, length=kv.shape[0]))
        seq.states.write_window(seq.slot, self._index, kv, positions, start=start)

    def read_tail(self, name: CompressorName) -> CompressorTail | None:
        self._count(name)
        return self._seq.states.read_tail(self._seq.slot, self._index, name)

    def write_tail(self, name: CompressorName, tail: CompressorTail) -> None:
        self._count(name)
        self._seq.states.write_tail(self._seq.slot, self._index, name, tail)

    def num_entries(self, name: CompressorName) -> int:
        return self._count(name)

    def append_entries(self, name: CompressorName, entries: torch.Tensor) -> None:
        n = entries.shape[0]
        if n == 0:
            return
        first = self._count(name)
        blocks, offsets = self._locate(self._entry_range(first, first + n))
        self._seq.kv_pool.storage(self._index, name).write(blocks, offsets, entries)
        self._counts[name] = first + n
        self._memo.pop(name, None)

    def gather_entries(self, name: CompressorName, indices: torch.Tensor) -> torch.Tensor:
        count = self._count(name)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= count):
            raise IndexError(f"entry index out of range [0, {count}) for {name!r}")
        blocks, offsets = self._locate(indices.to(self._seq.kv_pool.device))
        return self._seq.kv_pool.storage(self._index, name).read(blocks, offsets)

    def all_entries(self, name: CompressorName) -> torch.Tensor:
        """All entries in order; the gathered copy is kept until the next append (the model reads it once
        per query block)."""
        count = self._count(name)
        memo = self._memo.get(name)
        if memo is None or memo.shape[0] != count:
            blocks, offsets = self._locate(self._entry_range(0, count))
            memo = self._seq.kv_pool.storage(self._index, name).read(blocks, offsets)
            self._memo[name] = memo
        return memo

    def record_trail(self, name: CompressorName, trail: CompressorTrail) -> None:
        self._count(name)
        if self._undo is not None:
            self._trails.setdefault(name, []).append(trail)

    def mark(self) -> None:
        self._undo, self._trails = [], {}

    def rollback(self, num_tokens: int) -> None:
        undo, trails = self._undo, self._trails
        self._undo, self._trails = None, {}
        if undo is None:
            raise ValueError("rollback needs a mark() first")
        seq = self._seq
        for record in reversed(undo):
            seq.states.undo_window(seq.slot, self._index, record, num_tokens)
        ratio = seq.kv_pool.args.ratio(self._kind) if self._counts else 1
        for name in self._counts:
            self._counts[name] = min(self._counts[name], num_tokens // ratio)
        self._memo.clear()
        for name, named in trails.items():
            tail = trail_covering(named, num_tokens).tail_after(num_tokens)
            if tail is None:
                seq.states.forget_tail(seq.slot, self._index, name)
            else:
                seq.states.write_tail(seq.slot, self._index, name, tail)

    def _entry_range(self, start: int, stop: int) -> torch.Tensor:
        """Entry indices `[start, stop)` on the pool's device, once the allocated blocks are known to hold
        them (checked from host integers: no device round trip)."""
        allocated = len(self._seq.block_table)
        if stop > start and (stop - 1) // self._per_block >= allocated:
            raise CacheCapacityError(
                f"entry {stop - 1} needs logical block {(stop - 1) // self._per_block}, "
                f"but only {allocated} blocks are allocated"
            )
        return torch.arange(start, stop, device=self._seq.kv_pool.device)

    def _locate(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical blocks and offsets of entries `index` (on the pool's device, within the allocated
        blocks), computed on the device from the sequence's device block table."""
        table = self._seq.device_block_table(self._seq.kv_pool.device)
        return table[index // self._per_block], index % self._per_block

    def _count(self, name: CompressorName) -> int:
        try:
            return self._counts[name]
        except KeyError:
            raise ValueError(f"a {self._kind.value} layer has no {name!r} compressor") from None


class PagedSequenceCache:
    """One sequence's cache: a state slot, a block table, and the processed-token count."""

    def __init__(
        self,
        kv_pool: KVBlockPool,
        states: StatePool,
        slot: int,
        block_table: list[int] | None = None,
        num_tokens: int = 0,
    ) -> None:
        self.kv_pool = kv_pool
        self.states = states
        self.slot = slot
        self.block_table: list[int] = list(block_table or [])
        self._num_tokens = num_tokens
        self._device_table: torch.Tensor | None = None
        self.registered_blocks = 0  # leading full blocks already offered to the prefix cache
        self._counts_stale = False
        self._mark = TokenMark()
        self._layers = [PagedLayerCache(self, i, kind) for i, kind in enumerate(kv_pool.layer_kinds)]
        self.mtp: ContiguousSequenceCache | None = None  # the MTP layers (speculative decoding only)

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def layer(self, index: int) -> LayerCache:
        if index >= len(self._layers) and self.mtp is not None:
            return self.mtp.layer(index - len(self._layers))
        if not 0 <= index < len(self._layers):
            raise IndexError(
                f"the paged cache covers the {len(self._layers)} main layers; layer {index} "
                "(an MTP layer?) is cached only with speculative decoding"
            )
        if self._counts_stale:
            self.set_position(self._num_tokens)
        return self._layers[index]

    def advance(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"cannot advance by a negative count ({n})")
        self._num_tokens += n

    def mark(self) -> None:
        """Remember this point for `rollback` (the main layers; `mtp` has its own)."""
        self._mark.set(self._num_tokens)
        for layer in self._layers:
            layer.mark()

    def rollback(self, n: int) -> None:
        self._num_tokens = self._mark.rolled_back(self._num_tokens, n)
        for layer in self._layers:
            layer.rollback(self._num_tokens)

    def advance_decoded(self) -> None:
        """A device decode step (`model/decode_step.py`) added one token, writing state and entries by
        position: the host bookkeeping follows from the new count."""
        self._num_tokens += 1
        self.states.mark_decoded(self.slot, self._num_tokens)
        self._counts_stale = True  # the layers' entry counts are refreshed when a layer is next asked for

    def device_block_table(self, device: torch.device) -> torch.Tensor:
        """The block table as int32 on `device`, extended (not rebuilt) as blocks are added."""
        table = self._device_table
        if table is None or table.device != device or table.shape[0] > len(self.block_table):
            table = torch.empty(0, dtype=torch.int32, device=device)
        if table.shape[0] < len(self.block_table):
            new = torch.tensor(self.block_table[table.shape[0] :], dtype=torch.int32)
            table = torch.cat([table, new.to(device, non_blocking=True)])
        self._device_table = table
        return table

    def set_position(self, num_tokens: int) -> None:
        """Jump to `num_tokens` processed tokens (after restoring a snapshot taken there)."""
        self._num_tokens = num_tokens
        self._counts_stale = False
        for layer in self._layers:
            layer.reset_counts(num_tokens)

    def extend_blocks(self, blocks: list[int]) -> None:
        self.block_table.extend(blocks)
