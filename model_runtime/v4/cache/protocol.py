"""The cache protocol between the DeepSeek-V4 model and whatever stores its KV (contiguous or paged).

One `SequenceCache` per sequence; it holds one `LayerCache` per attention layer (main layers first, then the
MTP layers). The model never sees how entries are stored: it only calls the methods below, once per layer
per forward, for the rows of the batch that belong to this sequence.

Per layer the cache keeps two kinds of data (paper §2.3, "heterogeneous KV cache"):

(a) fixed-size *state* — bounded at any context length:
    * the sliding-window ring: the last `sliding_window` raw KV entries (normed + RoPE'd, `[n, head_dim]`)
      with their absolute positions (`[n]`, int64), every layer kind; the positions read back are
      consecutive and end at `num_tokens - 1` (the model slices the band by position arithmetic);
    * per compressor (`"main"` on CSA and HCA layers, `"indexer"` on CSA layers) a `CompressorTail`:
      the projected rows of the tokens since the last complete compressed entry (< ratio rows, raw
      projections `kv` and gate logits *without* the position bias), and on CSA (overlapping windows, m=4)
      the Ca half of the last complete window (`[ratio, dim]` kv and gate logits *with* the position bias).

(b) compressed *entries* — append-only, addressed by entry index `e` (entry `e` summarises source tokens
    `[e*ratio, (e+1)*ratio)` and carries RoPE at position `e*ratio`):
    * `"main"`: `[n, head_dim]` on CSA and HCA layers; CSA attention gathers the indexer's top-k of them,
      HCA attention reads all of them;
    * `"indexer"`: `[n, index_head_dim]` indexer keys on CSA layers; the lightning indexer scores all of them.
    The model appends entries in index order; entry `e` exists exactly when `num_tokens >= (e+1)*ratio`.

Token accounting: `SequenceCache.num_tokens` is the number of tokens already processed (= the position of
the next token). The model reads it as the row's start position and calls `advance(n)` once after all layers
have consumed the `n` new tokens. Tensors returned by reads may be views; the model never writes into them.
Stable since commit "cache protocol v1"; changes are named in commit messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

from deepscout.model_runtime.v4.model_config import LayerKind

CompressorName = Literal["main", "indexer"]


@dataclass(frozen=True)
class WindowView:
    """The sliding-window ring, oldest first: `kv` `[n, head_dim]`, `positions` `[n]` int64, n <= window."""

    kv: torch.Tensor
    positions: torch.Tensor


@dataclass(frozen=True)
class CompressorTail:
    """A compressor's carried state between forwards.

    `kv`, `gate`: `[t, width]` raw projections of the t < ratio tokens since the last complete entry
    (width = 2*dim on CSA, dim on HCA). `overlap_kv`, `overlap_gate`: `[ratio, dim]` Ca half of the last
    complete window (gate with position bias added), CSA only; None on HCA and before the first window.
    """

    kv: torch.Tensor
    gate: torch.Tensor
    overlap_kv: torch.Tensor | None = None
    overlap_gate: torch.Tensor | None = None

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors held: `kv`, `gate`, then the overlap pair where present."""
        return tuple(t for t in (self.kv, self.gate, self.overlap_kv, self.overlap_gate) if t is not None)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> CompressorTail:
        """The same tail with `fn` applied to each tensor (absent overlap state stays absent)."""
        return CompressorTail(
            kv=fn(self.kv),
            gate=fn(self.gate),
            overlap_kv=None if self.overlap_kv is None else fn(self.overlap_kv),
            overlap_gate=None if self.overlap_gate is None else fn(self.overlap_gate),
        )


@runtime_checkable
class LayerCache(Protocol):
    """One sequence's cache for one attention layer."""

    @property
    def kind(self) -> LayerKind: ...

    # (a) fixed-size state
    def read_window(self) -> WindowView:
        """The last <= sliding_window raw KV entries with positions, oldest first."""
        ...

    def write_window(self, kv: torch.Tensor, positions: torch.Tensor) -> None:
        """Append new raw entries `[n, head_dim]` at increasing `positions`; keep only the last window."""
        ...

    def read_tail(self, name: CompressorName) -> CompressorTail | None:
        """The compressor's tail state, or None when nothing was written yet."""
        ...

    def write_tail(self, name: CompressorName, tail: CompressorTail) -> None:
        """Replace the compressor's tail state."""
        ...

    # (b) compressed entries
    def num_entries(self, name: CompressorName) -> int:
        """How many compressed entries of this compressor exist."""
        ...

    def append_entries(self, name: CompressorName, entries: torch.Tensor) -> None:
        """Append `[n, dim]` entries with indices num_entries .. num_entries+n-1."""
        ...

    def gather_entries(self, name: CompressorName, indices: torch.Tensor) -> torch.Tensor:
        """Entries at `indices` (any shape `[...]`, int64, each in [0, num_entries)) as `[..., dim]`."""
        ...

    def all_entries(self, name: CompressorName) -> torch.Tensor:
        """All entries `[num_entries, dim]` in index order."""
        ...


@runtime_checkable
class SequenceCache(Protocol):
    """One sequence's cache over all attention layers."""

    @property
    def num_tokens(self) -> int: ...

    def layer(self, index: int) -> LayerCache:
        """The cache of attention layer `index` (main layers 0..L-1, then MTP layers L..)."""
        ...

    def advance(self, n: int) -> None:
        """Record that `n` more tokens have been processed by every layer."""
        ...
