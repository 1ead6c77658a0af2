"""The learned KV compressor of CSA and HCA layers (and of the lightning indexer): gated pooling of windows.

A compressor turns every `ratio` consecutive tokens into one compressed entry. Tokens of an incomplete
window are carried between forwards as the cache's `CompressorTail`; completed entries are appended to the
cache (normed, RoPE'd at position `entry_index * ratio`). Every forward also hands the cache its
`CompressorTrail` (the rows it pooled), which a marked cache keeps to roll back (cache protocol v2).
"""

from __future__ import annotations

import torch
from torch import nn

from deepscout.model_runtime.v4.cache.protocol import (
    CompressorName,
    CompressorTail,
    CompressorTrail,
    LayerCache,
)
from deepscout.model_runtime.v4.model.primitives import RMSNorm, RopeSpec, apply_rope
from deepscout.model_runtime.v4.model_config import ModelArgs


class Compressor(nn.Module):
    """Learned KV compressor: softmax-gated pooling of `ratio` tokens into one entry (paper eqs. 9-12, 20-23).

    With `overlap` (CSA, ratio 4) each token projects to two series: Ca (`[:dim]`, feeds the *next* window's
    entry) and Cb (`[dim:]`, feeds its own window's entry); entry w pools window w-1's Ca with window w's Cb.
    """

    def __init__(self, args: ModelArgs, ratio: int, dim: int) -> None:
        super().__init__()
        self.ratio = ratio
        self.dim = dim
        self.overlap = ratio == args.csa_ratio
        width = (2 if self.overlap else 1) * dim
        self.ape = nn.Parameter(torch.zeros(ratio, width, dtype=torch.float32))
        self.wkv = nn.Linear(args.hidden_size, width, bias=False)
        self.wgate = nn.Linear(args.hidden_size, width, bias=False)
        self.norm = RMSNorm(dim, args.rms_norm_eps)

    def compress(
        self, x: torch.Tensor, cache: LayerCache, name: CompressorName, rope: RopeSpec
    ) -> torch.Tensor:
        """Project one row's new tokens `x` `[L, hidden]`, append the completed entries to the cache.

        Returns the new entries `[n_new, dim]` (already normed and RoPE'd at position entry_index * ratio).
        """
        kv, gate = self.wkv(x), self.wgate(x)
        tail = cache.read_tail(name)
        if tail is not None and tail.kv.shape[0]:
            kv = torch.cat([tail.kv.to(kv.dtype), kv])
            gate = torch.cat([tail.gate.to(gate.dtype), gate])
        usable = (kv.shape[0] // self.ratio) * self.ratio
        overlap_kv = None if tail is None else tail.overlap_kv
        overlap_gate = None if tail is None else tail.overlap_gate
        first_entry = cache.num_entries(name)
        n_windows = usable // self.ratio
        window_kv = window_gate = None
        if n_windows == 0:
            entries = kv.new_zeros(0, self.dim)
        else:
            chunk_kv = kv[:usable].view(n_windows, self.ratio, -1)
            chunk_gate = gate[:usable].view(n_windows, self.ratio, -1) + self.ape
            if self.overlap:
                slots_kv, slots_gate = self._overlap_slots(chunk_kv, chunk_gate, overlap_kv, overlap_gate)
                window_kv, window_gate = chunk_kv[..., : self.dim], chunk_gate[..., : self.dim]
                overlap_kv, overlap_gate = window_kv[-1].clone(), window_gate[-1].clone()
            else:
                slots_kv, slots_gate = chunk_kv, chunk_gate
            weights = slots_gate.softmax(dim=1, dtype=torch.float32).to(slots_kv.dtype)
            entries = self.norm((slots_kv * weights).sum(dim=1))
            positions = (torch.arange(n_windows, device=x.device) + first_entry) * self.ratio
            entries = apply_rope(entries, rope.at(positions))
            cache.append_entries(name, entries)
        before = None if tail is None else _detached(tail, kv, gate)  # the cache may overwrite `tail` now
        cache.write_tail(name, CompressorTail(kv[usable:], gate[usable:], overlap_kv, overlap_gate))
        start = first_entry * self.ratio
        cache.record_trail(name, CompressorTrail(self.ratio, start, kv, gate, before, window_kv, window_gate))
        return entries

    def _overlap_slots(
        self,
        chunk_kv: torch.Tensor,
        chunk_gate: torch.Tensor,
        prior_kv: torch.Tensor | None,
        prior_gate: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lay out `[windows, 2*ratio, dim]`: previous window's Ca in the first half, own Cb in the second."""
        n, r, d = chunk_kv.shape[0], self.ratio, self.dim
        slots_kv = chunk_kv.new_zeros(n, 2 * r, d)
        slots_gate = chunk_gate.new_full((n, 2 * r, d), float("-inf"))
        slots_kv[:, r:] = chunk_kv[..., d:]
        slots_gate[:, r:] = chunk_gate[..., d:]
        slots_kv[1:, :r] = chunk_kv[:-1, :, :d]
        slots_gate[1:, :r] = chunk_gate[:-1, :, :d]
        if prior_kv is not None and prior_gate is not None:
            slots_kv[0, :r] = prior_kv.to(slots_kv.dtype)
            slots_gate[0, :r] = prior_gate.to(slots_gate.dtype)
        return slots_kv, slots_gate


def _detached(tail: CompressorTail, kv: torch.Tensor, gate: torch.Tensor) -> CompressorTail:
    """`tail` without views of the cache's storage: its rows from the forward's `kv`/`gate` (which start
    with them), its overlap state copied."""
    rows = tail.kv.shape[0]
    overlap_kv = None if tail.overlap_kv is None else tail.overlap_kv.clone()
    overlap_gate = None if tail.overlap_gate is None else tail.overlap_gate.clone()
    return CompressorTail(kv[:rows], gate[:rows], overlap_kv, overlap_gate)
