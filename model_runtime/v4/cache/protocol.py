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

Rollback (speculative decoding): `SequenceCache.mark()` remembers the state after the current `num_tokens`
tokens; `rollback(n)` then forgets the last `n` tokens processed since that mark (0 <= n <= tokens since
the mark) and leaves the cache exactly as it was after `num_tokens - n` tokens: the window ring holds the
rows it held then (overwritten slots come back), each compressor's tail and overlap state are the ones it
had then, and the compressed entries completed by the forgotten tokens are gone. A rollback ends the mark
(so does the next `mark()`); layers not written since the mark are unchanged. The layers need the rows
their compressors pooled to rebuild a tail, so a compressor hands every forward's `CompressorTrail` to
`LayerCache.record_trail` (kept only while marked). A cache may refuse to roll back into one write longer
than the sliding window (the paged cache does). Per layer the same is `LayerCache.mark()` and
`LayerCache.rollback(num_tokens)` (forget what positions >= num_tokens wrote since the mark).
Stable since commit "cache protocol v1"; changes are named in commit messages: this is "cache protocol v2".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class CompressorTrail:
    """A compressor's tail after every token of one forward, so a rollback can restore any of them.

    `kv`, `gate` `[t + n, width]`: the t rows of the tail the forward started from, then the raw rows of its n
    new tokens; row 0 is token `start` (an entry boundary, `ratio` tokens per entry). `before`: the tail the
    forward started from (None when nothing was written before). `window_kv`, `window_gate` `[w, ratio,
    dim]`: the overlap state after each of the w entries the forward completed (CSA; None on HCA).
    """

    ratio: int
    start: int
    kv: torch.Tensor
    gate: torch.Tensor
    before: CompressorTail | None
    window_kv: torch.Tensor | None = None
    window_gate: torch.Tensor | None = None

    @property
    def first(self) -> int:
        """The token count the forward started from."""
        return self.start + (0 if self.before is None else self.before.kv.shape[0])

    @property
    def end(self) -> int:
        """The token count after the forward."""
        return self.start + self.kv.shape[0]

    def tail_after(self, num_tokens: int) -> CompressorTail | None:
        """The tail once `num_tokens` tokens were processed (`first <= num_tokens <= end`)."""
        if not self.first <= num_tokens <= self.end:
            raise ValueError(f"this trail covers token counts [{self.first}, {self.end}], not {num_tokens}")
        if self.before is None and num_tokens == self.first:
            return None
        rows = num_tokens - self.start
        done = rows // self.ratio
        kv, gate = self.kv[done * self.ratio : rows], self.gate[done * self.ratio : rows]
        if done == 0:
            if self.before is None:
                return CompressorTail(kv, gate)
            return CompressorTail(kv, gate, self.before.overlap_kv, self.before.overlap_gate)
        if self.window_kv is None or self.window_gate is None:
            return CompressorTail(kv, gate)
        return CompressorTail(kv, gate, self.window_kv[done - 1], self.window_gate[done - 1])


def trail_covering(trails: Sequence[CompressorTrail], num_tokens: int) -> CompressorTrail:
    """The first of a compressor's trails since a mark that covers the token count `num_tokens`."""
    for trail in trails:
        if trail.first <= num_tokens <= trail.end:
            return trail
    raise ValueError(f"cannot roll back to {num_tokens} tokens: that count is not since the mark")


class TokenMark:
    """A sequence cache's rollback bookkeeping: the token count `mark` remembered, and how far `rollback`
    may go back from it (the whole rule is in the module docstring)."""

    def __init__(self) -> None:
        self._at: int | None = None

    def set(self, num_tokens: int) -> None:
        self._at = num_tokens

    def rolled_back(self, num_tokens: int, n: int) -> int:
        """The token count after forgetting the last `n` of `num_tokens`; ends the mark. ValueError when
        there is no mark or `n` reaches before it."""
        marked_at, self._at = self._at, None
        if marked_at is None:
            raise ValueError("rollback needs a mark() first")
        if not 0 <= n <= num_tokens - marked_at:
            raise ValueError(
                f"can roll back 0..{num_tokens - marked_at} tokens (processed since the mark), not {n}"
            )
        return num_tokens - n


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

    # rollback (protocol v2)
    def record_trail(self, name: CompressorName, trail: CompressorTrail) -> None:
        """The compressor's trail of the forward that just wrote its tail (kept only while marked)."""
        ...

    def mark(self) -> None:
        """Remember the current state; `rollback` can return to any token count since."""
        ...

    def rollback(self, num_tokens: int) -> None:
        """Forget what tokens at positions >= `num_tokens` wrote since the mark; ends the mark."""
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

    def mark(self) -> None:
        """Remember the state after the current `num_tokens` tokens (see "Rollback" above)."""
        ...

    def rollback(self, n: int) -> None:
        """Forget the last `n` tokens processed since the mark; ends the mark."""
        ...
