"""A compressor's decode step for B rows, one token each (see `model/decode_step.py` for the rules).

Contract. Inputs: the token's projections `kv`, `gate` `[B, width]` (width = 2·dim with CSA's overlapping
windows, dim otherwise), the rows' `positions` and state `slots` `[B]`; the compressor's state over all
slots — `tail_kv`, `tail_gate` `[slots, ratio, width]` (raw projections at row p % ratio) and, on CSA,
`overlap_kv`, `overlap_gate` `[slots, ratio, dim]` (the previous window's Ca half, gate with the position
bias); its parameters `ape` `[ratio, width]` and `norm_weight` `[dim]`; RoPE `cos`, `sin` `[B, rope/2]` at
the entry's position; the entry pool `[blocks, per_block, dim]` and block tables `[B, n]`.

Effects, per row: the token enters its tail row; the entry of its window `e = p // ratio` (softmax-gated
pooling over the window — on CSA the previous window's Ca half then this window's Cb half — RMS-normed,
rotated, rounded to the projections' dtype) is written at `e`'s place in the pool, quantised as the pool
stores it (provisional until the window completes); when the token
completes its window, this window's Ca half (gate plus bias) becomes the overlap state.

"reference": the PyTorch ops; "triton": two launches, the window pooled by programs over (row, channel
block) then one program per row norming, rotating and storing the entry (plus the pool's quantising write
when the pool is not plain rows).
"""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.kernels.compressor_state import CompressorState
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.norm_rope import rms_norm, rope


def compress_step(
    kv: torch.Tensor,
    gate: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    state: CompressorState,
    *,
    impl: KernelImpl,
) -> None:
    if impl == "triton":
        from deepscout.model_runtime.v4.kernels.compress_step_triton import compress_step_triton

        compress_step_triton(kv, gate, positions, slots, cos, sin, state)
        return
    compress_step_reference(kv, gate, positions, slots, cos, sin, state)


def compress_step_reference(
    kv: torch.Tensor,
    gate: torch.Tensor,
    positions: torch.Tensor,
    slots: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    state: CompressorState,
) -> None:
    ratio = state.tail_kv.shape[1]
    row = positions % ratio
    state.tail_kv[slots, row] = kv.to(state.tail_kv.dtype)
    state.tail_gate[slots, row] = gate.to(state.tail_gate.dtype)
    window_kv = state.tail_kv[slots].to(kv.dtype)  # [B, ratio, width]
    window_gate = state.tail_gate[slots].to(gate.dtype) + state.ape
    if state.overlap_kv is not None and state.overlap_gate is not None:
        d = state.overlap_kv.shape[-1]
        prior_kv = state.overlap_kv[slots].to(kv.dtype)
        prior_gate = state.overlap_gate[slots].to(gate.dtype)
        has_prior = (positions >= ratio)[:, None, None]
        slots_kv = torch.cat([prior_kv, window_kv[..., d:]], dim=1)
        slots_gate = torch.cat([prior_gate.masked_fill(~has_prior, float("-inf")), window_gate[..., d:]], 1)
        complete = (row == ratio - 1)[:, None, None]
        new_kv = torch.where(complete, window_kv[..., :d], prior_kv)
        state.overlap_kv[slots] = new_kv.to(state.overlap_kv.dtype)
        new_gate = torch.where(complete, window_gate[..., :d], prior_gate)
        state.overlap_gate[slots] = new_gate.to(state.overlap_gate.dtype)
    else:
        slots_kv, slots_gate = window_kv, window_gate
    weights = slots_gate.softmax(dim=1, dtype=torch.float32).to(slots_kv.dtype)
    entry = rms_norm((slots_kv * weights).sum(dim=1), state.norm_weight, state.norm_eps, impl="reference")
    entry = rope(entry, cos, sin, inverse=False, impl="reference")
    blocks, offsets = state.entry_places(positions)
    state.entries.write(blocks, offsets, entry.to(kv.dtype))
