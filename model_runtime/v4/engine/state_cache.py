"""The fixed-size per-sequence state: a preallocated pool of slots, and snapshots of it for prefix reuse.

A slot holds, per main attention layer: the sliding-window ring (`[window, head_dim]` raw KV + positions),
and per compressor the uncompressed tail (< ratio tokens of raw projections and gate logits) plus, on CSA,
the overlap state (the Ca half of the last complete window). Its size does not depend on context length.

Everything is addressed by position, so the device decode path can write without the host bookkeeping:
the token at position p sits at ring row `p % window` and tail row `p % ratio`. Ring rows never written
for the slot's current sequence hold positions larger than any it will query (a sentinel, or a later
position of the slot's previous sequence), so a position mask alone separates live keys from stale ones.
After device decode steps (`mark_decoded`) the host bookkeeping is derived from the token count when next
needed.

Rollback (speculative decoding): before a marked write, `window_undo` copies the ring rows the write will
overwrite (at most `window` rows), and `undo_window` puts them back for the positions forgotten.

A `StateSnapshot` copies a slot at a block boundary (tails are empty there, so it is mostly the windows);
`SnapshotStore` keeps snapshots under a memory budget (LRU) so a later sequence with the same prefix can
restore the state and reuse the prefix's blocks instead of recomputing them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.cache.protocol import CompressorName, CompressorTail, WindowView
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs


class StatePoolExhausted(DeepscoutError, RuntimeError):
    """Every state slot is held by a running sequence or a session; raise EngineConfig.num_state_slots."""


@dataclass
class _TailMeta:
    length: int = 0
    written: bool = False
    has_overlap: bool = False


# the position of ring rows never written: larger than any position a query can have
UNWRITTEN_POSITION = 2**62


@dataclass
class _LayerMeta:
    window_len: int = 0
    window_end: int = 0  # one past the newest position in the ring
    tails: dict[str, _TailMeta] = field(default_factory=dict)


@dataclass(frozen=True)
class _LayerState:
    window_kv: torch.Tensor  # [slots, window, head_dim]
    window_pos: torch.Tensor  # [slots, window] int64
    tails: dict[str, CompressorTail]  # all slots': kv/gate [slots, ratio, width], overlap [slots, ratio, dim]


@dataclass(frozen=True)
class WindowUndo:
    """The ring before one write of `length` rows at positions `start, ...`: the rows it overwrote (for its
    last min(length, window) positions) and the ring's extent."""

    start: int
    length: int
    kv: torch.Tensor
    positions: torch.Tensor
    window_len: int
    window_end: int


@dataclass(frozen=True)
class LayerSnapshot:
    window_kv: torch.Tensor
    window_pos: torch.Tensor
    tails: dict[str, CompressorTail | None]


@dataclass(frozen=True)
class StateSnapshot:
    """A copy of one slot's state after `num_tokens` tokens."""

    num_tokens: int
    layers: tuple[LayerSnapshot, ...]

    @property
    def nbytes(self) -> int:
        total = 0
        for layer in self.layers:
            total += layer.window_kv.nbytes + layer.window_pos.nbytes
            tails = [tail for tail in layer.tails.values() if tail is not None]
            total += sum(t.nbytes for tail in tails for t in tail.tensors())
        return total


class StatePool:
    """`num_slots` preallocated state slots for the model's main attention layers."""

    def __init__(
        self,
        args: ModelArgs,
        num_slots: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_slots = num_slots
        self.window = args.sliding_window
        self.dtype = dtype
        dev = torch.device(device)
        self._layers: list[_LayerState] = []
        for kind in args.layer_types:
            tails: dict[str, CompressorTail] = {}
            if kind is not LayerKind.SLIDING:
                tails["main"] = _tail_tensors(num_slots, args.ratio(kind), args.head_dim, kind, dtype, dev)
            if kind is LayerKind.CSA:
                tails["indexer"] = _tail_tensors(
                    num_slots, args.csa_ratio, args.index_head_dim, kind, dtype, dev
                )
            self._layers.append(
                _LayerState(
                    window_kv=torch.zeros(num_slots, self.window, args.head_dim, dtype=dtype, device=dev),
                    window_pos=torch.full(
                        (num_slots, self.window), UNWRITTEN_POSITION, dtype=torch.long, device=dev
                    ),
                    tails=tails,
                )
            )
        self._ratios = [
            {name: args.ratio(kind) for name in layer.tails}
            for kind, layer in zip(args.layer_types, self._layers, strict=True)
        ]
        self._meta: list[list[_LayerMeta]] = [self._fresh_meta() for _ in range(num_slots)]
        self._decoded_to: dict[int, int] = {}  # slot -> token count reached by device decode steps
        self._free = list(range(num_slots - 1, -1, -1))

    def _fresh_meta(self) -> list[_LayerMeta]:
        return [_LayerMeta(tails={name: _TailMeta() for name in layer.tails}) for layer in self._layers]

    # ------------------------------------------------------------------ slots
    @property
    def num_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        """A cleared slot."""
        if not self._free:
            raise StatePoolExhausted(f"all {self.num_slots} state slots are in use")
        slot = self._free.pop()
        self._meta[slot] = self._fresh_meta()
        return slot

    def free(self, slot: int) -> None:
        if slot in self._free:
            raise ValueError(f"state slot {slot} is already free")
        self._decoded_to.pop(slot, None)
        self._free.append(slot)

    def layer_tensors(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, CompressorTail]]:
        """Layer `layer`'s tensors over all slots: window kv `[slots, window, dim]`, window positions
        `[slots, window]` and the compressor tails (the device decode path reads and writes them)."""
        state = self._layers[layer]
        return state.window_kv, state.window_pos, state.tails

    def mark_decoded(self, slot: int, num_tokens: int) -> None:
        """Device decode steps brought the slot to `num_tokens` processed tokens (written by position)."""
        self._decoded_to[slot] = num_tokens

    def _slot_meta(self, slot: int) -> list[_LayerMeta]:
        """The slot's bookkeeping, first derived from its token count if device steps ran since."""
        n = self._decoded_to.pop(slot, None)
        if n is not None:
            for meta, ratios in zip(self._meta[slot], self._ratios, strict=True):
                meta.window_len, meta.window_end = min(self.window, n), n
                for name, tail in meta.tails.items():
                    ratio = ratios[name]
                    tail.length, tail.written, tail.has_overlap = n % ratio, n > 0, n >= ratio
        return self._meta[slot]

    @property
    def nbytes(self) -> int:
        """Allocated bytes of the whole pool."""
        total = 0
        for layer in self._layers:
            total += layer.window_kv.untyped_storage().nbytes() + layer.window_pos.untyped_storage().nbytes()
            tensors = [t for tail in layer.tails.values() for t in tail.tensors()]
            total += sum(t.untyped_storage().nbytes() for t in tensors)
        return total

    @property
    def slot_nbytes(self) -> int:
        return self.nbytes // self.num_slots

    # ------------------------------------------------------------------ window ring
    def read_window(self, slot: int, layer: int) -> WindowView:
        meta, state = self._slot_meta(slot)[layer], self._layers[layer]
        first = meta.window_end - meta.window_len
        order = self._ring_rows(first, meta.window_end, state)
        return WindowView(state.window_kv[slot, order], state.window_pos[slot, order])

    def write_window(
        self, slot: int, layer: int, kv: torch.Tensor, positions: torch.Tensor, *, start: int
    ) -> None:
        """Write raw entries at consecutive positions `start, start+1, ...` (`positions` on the device)."""
        meta, state = self._slot_meta(slot)[layer], self._layers[layer]
        n = kv.shape[0]
        if n == 0:
            return
        keep = min(n, self.window)
        index = self._ring_rows(start + n - keep, start + n, state)
        state.window_kv[slot, index] = kv[-keep:].to(self.dtype)
        state.window_pos[slot, index] = positions[-keep:]
        if meta.window_end != start:
            meta.window_len = 0  # a jump (restore): only the rows written now are live
        meta.window_len = min(self.window, meta.window_len + n)
        meta.window_end = start + n

    def window_undo(self, slot: int, layer: int, *, start: int, length: int) -> WindowUndo:
        """What `undo_window` needs to take back a write of `length` rows at positions `start, ...`."""
        meta, state = self._slot_meta(slot)[layer], self._layers[layer]
        index = self._ring_rows(start + length - min(length, self.window), start + length, state)
        kv, positions = state.window_kv[slot, index].clone(), state.window_pos[slot, index].clone()
        return WindowUndo(start, length, kv, positions, meta.window_len, meta.window_end)

    def undo_window(self, slot: int, layer: int, undo: WindowUndo, num_tokens: int) -> None:
        """Forget the rows `undo`'s write put at positions >= `num_tokens` (later writes undone first)."""
        end = undo.start + undo.length
        if num_tokens >= end:
            return
        first = max(num_tokens, undo.start)
        written = min(undo.length, self.window)
        if first < end - written:
            raise ValueError(
                f"cannot roll back into a write of {undo.length} rows (longer than the window, {self.window})"
            )
        meta, state = self._slot_meta(slot)[layer], self._layers[layer]
        index = self._ring_rows(first, end, state)
        state.window_kv[slot, index] = undo.kv[first - end :]
        state.window_pos[slot, index] = undo.positions[first - end :]
        if first == undo.start:
            meta.window_len, meta.window_end = undo.window_len, undo.window_end
        else:  # the write continued the ring (its extent then), or jumped (only its rows were live)
            live = undo.window_len if undo.window_end == undo.start else 0
            meta.window_len, meta.window_end = min(self.window, live + first - undo.start), first

    def _ring_rows(self, first: int, end: int, state: _LayerState) -> torch.Tensor:
        """Ring rows of positions `[first, end)`, made on the state's device (no host-to-device copy)."""
        return torch.arange(first, end, device=state.window_kv.device) % self.window

    # ------------------------------------------------------------------ compressor tails
    def read_tail(self, slot: int, layer: int, name: CompressorName) -> CompressorTail | None:
        meta = self._tail_meta(slot, layer, name)
        if not meta.written:
            return None
        t = self._layers[layer].tails[name]
        overlap = meta.has_overlap and t.overlap_kv is not None and t.overlap_gate is not None
        return CompressorTail(
            kv=t.kv[slot, : meta.length],
            gate=t.gate[slot, : meta.length],
            overlap_kv=t.overlap_kv[slot] if overlap and t.overlap_kv is not None else None,
            overlap_gate=t.overlap_gate[slot] if overlap and t.overlap_gate is not None else None,
        )

    def write_tail(self, slot: int, layer: int, name: CompressorName, tail: CompressorTail) -> None:
        meta = self._tail_meta(slot, layer, name)
        t = self._layers[layer].tails[name]
        n = tail.kv.shape[0]
        if n > t.kv.shape[1]:
            raise ValueError(f"a compressor tail holds < ratio rows; got {n} for ratio {t.kv.shape[1]}")
        t.kv[slot, :n] = tail.kv.to(self.dtype)
        t.gate[slot, :n] = tail.gate.to(self.dtype)
        meta.length, meta.written = n, True
        meta.has_overlap = tail.overlap_kv is not None
        if tail.overlap_kv is not None and tail.overlap_gate is not None:
            if t.overlap_kv is None or t.overlap_gate is None:
                raise ValueError("overlap state is only kept on CSA layers")
            t.overlap_kv[slot] = tail.overlap_kv.to(self.dtype)
            t.overlap_gate[slot] = tail.overlap_gate.to(self.dtype)

    def forget_tail(self, slot: int, layer: int, name: CompressorName) -> None:
        """Back to no tail written (a rollback to before the compressor's first forward)."""
        meta = self._tail_meta(slot, layer, name)
        meta.length, meta.written, meta.has_overlap = 0, False, False

    def _tail_meta(self, slot: int, layer: int, name: CompressorName) -> _TailMeta:
        try:
            return self._slot_meta(slot)[layer].tails[name]
        except KeyError:
            raise ValueError(f"layer {layer} has no {name!r} compressor") from None

    # ------------------------------------------------------------------ snapshots
    def capture(self, slot: int, num_tokens: int) -> StateSnapshot:
        layers = []
        for i, layer in enumerate(self._layers):
            view = self.read_window(slot, i)
            tails: dict[str, CompressorTail | None] = {}
            for name in layer.tails:
                tail = self.read_tail(slot, i, name)  # type: ignore[arg-type]
                tails[name] = None if tail is None else _clone_tail(tail)
            layers.append(LayerSnapshot(view.kv.clone(), view.positions.clone(), tails))
        return StateSnapshot(num_tokens, tuple(layers))

    def restore(self, slot: int, snapshot: StateSnapshot) -> None:
        self._meta[slot] = self._fresh_meta()
        self._decoded_to.pop(slot, None)
        dev = self._layers[0].window_kv.device if self._layers else torch.device("cpu")
        for i, layer in enumerate(snapshot.layers):
            start = snapshot.num_tokens - layer.window_kv.shape[0]
            self.write_window(slot, i, layer.window_kv.to(dev), layer.window_pos.to(dev), start=start)
            for name, tail in layer.tails.items():
                if tail is not None:
                    self.write_tail(slot, i, name, _clone_tail(tail, dev))  # type: ignore[arg-type]


def _tail_tensors(
    slots: int, ratio: int, dim: int, kind: LayerKind, dtype: torch.dtype, device: torch.device
) -> CompressorTail:
    overlap = kind is LayerKind.CSA
    width = (2 if overlap else 1) * dim
    return CompressorTail(
        kv=torch.zeros(slots, ratio, width, dtype=dtype, device=device),
        gate=torch.zeros(slots, ratio, width, dtype=dtype, device=device),
        overlap_kv=torch.zeros(slots, ratio, dim, dtype=dtype, device=device) if overlap else None,
        overlap_gate=torch.zeros(slots, ratio, dim, dtype=dtype, device=device) if overlap else None,
    )


def _clone_tail(tail: CompressorTail, device: torch.device | None = None) -> CompressorTail:
    def copy(t: torch.Tensor) -> torch.Tensor:
        return t.clone() if device is None else t.to(device, copy=True)

    return tail.map(copy)


class SnapshotStore:
    """State snapshots keyed by the registered block that ends at the snapshot's boundary; LRU under a
    byte budget (a snapshot larger than the whole budget is not kept)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[int, StateSnapshot] = OrderedDict()
        self.nbytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: int) -> bool:
        return key in self._items

    def put(self, key: int, snapshot: StateSnapshot) -> bool:
        size = snapshot.nbytes
        if size > self.budget_bytes:
            return False
        self.discard(key)
        while self.nbytes + size > self.budget_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes
            self.dropped += 1
        self._items[key] = snapshot
        self.nbytes += size
        return True

    def get(self, key: int) -> StateSnapshot | None:
        snap = self._items.get(key)
        if snap is not None:
            self._items.move_to_end(key)
        return snap

    def discard(self, key: int) -> None:
        snap = self._items.pop(key, None)
        if snap is not None:
            self.nbytes -= snap.nbytes
