"""One decode step for a batch of sequences, run on the device straight on the engine's paged storage.

Each of the B rows adds one token at `positions[b]` to the sequence whose fixed-size state lives in slot
`slots[b]` and whose compressed entries live in the blocks of `block_tables[b]`. Everything the step reads
or writes is addressed by position (see `engine/state_cache.py`):

* the token's raw KV goes to ring row `p % window`; attention reads the whole ring and masks by position;
* each compressor writes the token's projections to tail row `p % ratio` and computes the entry of the
  token's window `p // ratio` from the tail (and, on CSA, the previous window's Ca half), writing it at
  that entry's place in the block table. Until the window is complete the entry is provisional: no query
  sees an entry before its window is complete, and the window's last token rewrites it. On CSA the
  completing token also makes its window's Ca half the overlap state of the next window.

So every shape is fixed by (B, block-table width) and nothing reads back to the host: the step can be
captured in a CUDA graph and replayed. It computes what the protocol path (`attention.py`,
`compressor.py`) computes for a one-token chunk; `tests/.../test_decode_step.py` holds them equal.

With the Triton kernels and at most `FUSED_MAX_ROWS` rows, a layer's projections of its normed input
(`wq_a`, `wkv`, the compressors' `wkv`/`wgate`, the indexer's `weights_proj`) run as one `multi_linear`
launch, each weight read where and as its module holds it: plain ones in the activations' dtype and, in
the shipped format, `wq_a` and `wkv` as FP8 weights with their block scales (`_project_input`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar, cast

import torch
from torch import nn

from deepscout.model_runtime.v4.cache.protocol import CompressorName, CompressorTail
from deepscout.model_runtime.v4.kernels.attention_keys import BandKeys, EntryKeys
from deepscout.model_runtime.v4.kernels.compress_step import compress_step
from deepscout.model_runtime.v4.kernels.compressor_state import CompressorState
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.indexer_scores import indexer_topk
from deepscout.model_runtime.v4.kernels.multi_linear import (
    FUSED_MAX_ROWS,
    Fp8Weight,
    LinearWeight,
    multi_linear,
)
from deepscout.model_runtime.v4.kernels.paged_keys import PagedKeys, PagedRows
from deepscout.model_runtime.v4.kernels.rope_rows import RowPositions
from deepscout.model_runtime.v4.kernels.sparse_attention import sparse_attention
from deepscout.model_runtime.v4.model.attention import Attention
from deepscout.model_runtime.v4.model.compressor import Compressor
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model.primitives import (
    RopeSpec,
    RopeTable,
    apply_rope,
    apply_rope_into,
)
from deepscout.model_runtime.v4.model.side_streams import SideStreams, side_chain, wait_for
from deepscout.model_runtime.v4.model_config import LayerKind

_T = TypeVar("_T")


@dataclass(frozen=True)
class LayerStorage:
    """One layer's state over all slots (window ring `[slots, window, dim]` and positions `[slots, window]`,
    compressor tails with a leading slot axis) and its compressed entries as stored (`[blocks, per_block,
    dim]` per compressor, in the pool's storage format; the kernels read and write them as stored)."""

    window_kv: torch.Tensor
    window_pos: torch.Tensor
    tails: Mapping[str, CompressorTail]
    entries: Mapping[str, PagedKeys]


@dataclass(frozen=True)
class DecodeStep:
    """The step's inputs, all on the device: token ids, positions, state slots `[B]` (int64) and block
    tables `[B, max_blocks]` (int32; entries past a row's blocks are never read).

    What the layers derive from them (ring rows, entry limits, the compressors' RoPE tables, ...) depends
    only on the window or the ratio, so it is computed once per step (`derived`), not once per layer: in a
    captured graph that is a few dozen kernels instead of hundreds. `side_streams`: the CUDA streams the
    layers' independent chains run on (`side_streams.py`), or None (in line)."""

    token_ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    block_tables: torch.Tensor
    kernels: KernelImpl
    side_streams: SideStreams | None = None
    _derived: dict[Hashable, object] = field(default_factory=dict, compare=False, repr=False)

    def derived(self, key: Hashable, make: Callable[[], _T]) -> _T:
        """`make()`, computed the first time this step asks for `key`."""
        if key not in self._derived:
            self._derived[key] = make()
        return cast(_T, self._derived[key])

    def rows(self) -> torch.Tensor:
        """`[B]` int32 row ids."""
        return self.derived(
            "rows", lambda: torch.arange(self.positions.shape[0], device=self.positions.device).int()
        )

    def entry_limit(self, ratio: int) -> torch.Tensor:
        """`[B]` int32: the complete entries of a compressor with this ratio, per row."""
        return self.derived(("limit", ratio), lambda: ((self.positions + 1) // ratio).to(torch.int32))

    def ring_rows(self, window: int) -> torch.Tensor:
        """`[B]` each row's slot in the window rings flattened to `[slots * window]`: `slot * window +
        position % window`."""
        return self.derived(("ring", window), lambda: self.slots * window + self.positions % window)

    def band(self, window_kv: torch.Tensor, window_pos: torch.Tensor) -> BandKeys:
        """Each row's whole window ring `[slots, window, dim]` as its band (masked by position in the
        kernel); the rows' starts and lengths are shared by every layer."""
        window = window_kv.shape[1]
        start, length = self.derived(
            ("band", window),
            lambda: (
                (self.slots * window).to(torch.int32),
                torch.full_like(self.slots, window, dtype=torch.int32),
            ),
        )
        return BandKeys(
            kv=window_kv.view(-1, window_kv.shape[-1]),
            positions=window_pos.view(-1),
            start=start,
            length=length,
            max_length=window,
        )

    def compress_table(self, rope: RopeSpec, ratio: int) -> RopeTable:
        """RoPE at each row's entry position (`p // ratio * ratio`) for a compressor with this ratio."""
        return self.derived(("compress_rope", ratio), lambda: rope.at((self.positions // ratio) * ratio))


def decode_attention(
    attn: Attention,
    x: torch.Tensor,
    storage: LayerStorage,
    step: DecodeStep,
    rope: RopeTable,
    compress_rope: RopeSpec,
) -> torch.Tensor:
    """The layer's attention output `[B, hidden]` for normed inputs `x` `[B, hidden]`.

    With side streams (`side_streams.py`) the token's keys (the indexer's compressor step, the window-ring
    row, the main compressor step) and the indexer's queries and top-k run beside the query projection;
    the indexer's chain waits for its compressor's entry before it scores, the attention for both chains."""
    projected = _project_input(attn, x, step.kernels)
    streams = step.side_streams
    index_entries: torch.cuda.Event | None = None
    with side_chain(streams.keys if streams is not None else None) as keys_written:
        if attn.indexer is not None:
            _compress(attn.indexer.compressor, projected, storage, "indexer", step, compress_rope)
            index_entries = keys_written.mark()
        apply_rope_into(  # the token's KV row and its position, into the window ring
            projected[attn.wkv],
            rope,
            storage.window_kv.view(-1, attn.head_dim),
            step.ring_rows(attn.window),
            norm=attn.kv_norm.before_rope(),
            positions=RowPositions(step.positions, storage.window_pos.view(-1)),
        )
        if attn.compressor is not None:
            _compress(attn.compressor, projected, storage, "main", step, compress_rope)
    q_residual = attn.q_norm(projected[attn.wq_a])
    index_stream = streams.index if streams is not None and attn.indexer is not None else None
    with side_chain(index_stream) as indexed:
        entries = _entry_keys(attn, projected, q_residual, rope, storage, step, index_entries)
    q = apply_rope(attn.queries(q_residual), rope, norm=attn.q_head_norm())
    band = step.band(storage.window_kv, storage.window_pos)
    keys_written.join()
    indexed.join()
    out = sparse_attention(
        q.to(storage.window_kv.dtype),
        band,
        entries,
        attn.sinks(),
        step.positions,
        scale=attn.scale,
        window=attn.window,
        impl=step.kernels,
    )
    return attn.project_out(apply_rope(out.to(x.dtype), rope, inverse=True))


def _project_input(attn: Attention, x: torch.Tensor, kernels: KernelImpl) -> dict[nn.Module, torch.Tensor]:
    """Every projection of the layer that reads its normed input `x`, mapped to its output: `wq_a`, `wkv`,
    each compressor's `wkv` and `wgate`, the indexer's `weights_proj`.

    With the Triton kernels and at most `FUSED_MAX_ROWS` rows, the fusable ones (`_fused_weight`: bias-free
    `nn.Linear`s in `x`'s dtype, and `Fp8BlockLinear`s running the Triton kernels — in the shipped format
    the FP8 `wq_a` and `wkv` beside the plain rest, in the dense one all plain) run as one `multi_linear`
    launch reading each weight where and as its module holds it; otherwise, and for the rest, each module
    runs on its own."""
    layers: list[nn.Module] = [attn.wq_a, attn.wkv]
    if attn.compressor is not None:
        layers += [attn.compressor.wkv, attn.compressor.wgate]
    if attn.indexer is not None:
        comp = attn.indexer.compressor
        layers += [attn.indexer.weights_proj, comp.wkv, comp.wgate]
    fusable = {layer: weight for layer in layers if (weight := _fused_weight(layer, x.dtype)) is not None}
    if kernels != "triton" or x.shape[0] > FUSED_MAX_ROWS or len(fusable) < 2:
        return {layer: layer(x) for layer in layers}
    fused = dict(zip(fusable, multi_linear(x, list(fusable.values()), impl=kernels), strict=True))
    return {layer: fused[layer] if layer in fused else layer(x) for layer in layers}


def _fused_weight(layer: nn.Module, dtype: torch.dtype) -> LinearWeight | None:
    """What `multi_linear` reads for `layer`, as stored: a bias-free `nn.Linear`'s contiguous weight in
    `dtype`, or an `Fp8BlockLinear`'s weight and block scales (contiguous) when it runs the Triton kernels;
    None for any other layer (it runs on its own)."""
    if isinstance(layer, nn.Linear):
        plain = layer.bias is None and layer.weight.dtype == dtype and layer.weight.is_contiguous()
        return layer.weight if plain else None
    if isinstance(layer, Fp8BlockLinear) and layer.kernels == "triton":
        stored = layer.weight.is_contiguous() and layer.scale.is_contiguous()
        return Fp8Weight(layer.weight, layer.scale) if stored else None
    return None


def _entry_keys(
    attn: Attention,
    projected: Mapping[nn.Module, torch.Tensor],
    q_residual: torch.Tensor,
    rope: RopeTable,
    storage: LayerStorage,
    step: DecodeStep,
    index_entries: torch.cuda.Event | None,
) -> EntryKeys | None:
    """Every complete entry (HCA) or the indexer's top-k of them (CSA); None on sliding layers.
    `index_entries`: where the indexer's compressor has written this step's entry, when another stream
    does (the queries are projected before waiting for it)."""
    if attn.kind is LayerKind.SLIDING:
        return None
    main = storage.entries["main"]
    rows = step.rows()
    limit = step.entry_limit(attn.ratio)
    capacity = step.block_tables.shape[1] * main.per_block
    indices = None
    if attn.kind is LayerKind.CSA:
        assert attn.indexer is not None
        index = attn.indexer.queries_from(projected[attn.indexer.weights_proj], q_residual, rope)
        wait_for(index_entries)
        paged_rows = step.derived(
            "paged_rows",
            lambda: PagedRows(
                step.block_tables, torch.arange(rows.shape[0] + 1, device=rows.device).int(), 1
            ),
        )
        indices, _ = indexer_topk(
            index.q,
            index.weights,
            storage.entries["indexer"],
            paged_rows,
            limit,
            attn.indexer.topk,
            impl=step.kernels,
        )
    return EntryKeys(
        keys=main,
        block_table=step.block_tables,
        row=rows,
        limit=limit,
        indices=indices,
        max_count=capacity if indices is None else indices.shape[1],
    )


def _compress(
    comp: Compressor,
    projected: Mapping[nn.Module, torch.Tensor],
    storage: LayerStorage,
    name: CompressorName,
    step: DecodeStep,
    rope: RopeSpec,
) -> None:
    """Write the token (its projections by the compressor's `wkv` and `wgate` in `projected`) into the
    compressor's tail and its window's (possibly provisional) entry."""
    tail = storage.tails[name]
    state = CompressorState(
        tail_kv=tail.kv,
        tail_gate=tail.gate,
        overlap_kv=tail.overlap_kv,
        overlap_gate=tail.overlap_gate,
        ape=comp.ape,
        norm_weight=comp.norm.weight,
        norm_eps=comp.norm.eps,
        entries=storage.entries[name],
        block_tables=step.block_tables,
    )
    table = step.compress_table(rope, comp.ratio)
    kv, gate = projected[comp.wkv], projected[comp.wgate]
    compress_step(kv, gate, step.positions, step.slots, table.cos, table.sin, state, impl=step.kernels)
