"""The fused compressor decode step against its PyTorch reference: same tails, overlap state and entries."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.compress_step import compress_step
from deepscout.model_runtime.v4.kernels.compressor_state import CompressorState
from deepscout.model_runtime.v4.kernels.paged_keys import KeyFormat, PagedKeys


def _pool(fmt: KeyFormat, blocks: int, per_block: int, dim: int, device: torch.device) -> PagedKeys:
    """An empty entry pool in a storage format (zeros, so unwritten entries compare equal)."""
    if fmt == "plain":
        return PagedKeys("plain", torch.zeros(blocks, per_block, dim, device=device))
    if fmt == "fp8_rope":
        nope = torch.zeros(blocks, per_block, dim - 8, device=device).to(torch.float8_e4m3fn)
        return PagedKeys("fp8_rope", nope, rope=torch.zeros(blocks, per_block, 8, device=device).bfloat16())
    packed = torch.zeros(blocks, per_block, dim // 2, dtype=torch.uint8, device=device)
    return PagedKeys(
        "mxfp4", packed, torch.zeros(blocks, per_block, dim // 32, dtype=torch.uint8, device=device)
    )


@pytest.mark.parametrize("fmt", ["plain", "fp8_rope", "mxfp4"])
@pytest.mark.parametrize(
    ("overlap", "ratio"), [(True, 4), (False, 8), (False, 32)], ids=["csa", "hca", "hca-tiles"]
)
def test_kernel_matches_reference(device: torch.device, overlap: bool, ratio: int, fmt: KeyFormat) -> None:
    """Entries land where the reference puts them, quantised as the pool stores them (the quantised
    formats compare the stored values within one rounding step of the format)."""
    g = torch.Generator().manual_seed(ratio)
    dim, rope_half, slots, blocks, per_block = 32, 4, 5, 12, 4
    width = 2 * dim if overlap else dim
    positions = torch.tensor([0, ratio - 1, 2 * ratio + 1, 3 * ratio - 1, 5 * ratio + 2])
    rows = positions.shape[0]

    def state() -> CompressorState:
        gen = torch.Generator().manual_seed(7)
        return CompressorState(
            tail_kv=torch.randn(slots, ratio, width, generator=gen).to(device),
            tail_gate=torch.randn(slots, ratio, width, generator=gen).to(device),
            overlap_kv=torch.randn(slots, ratio, dim, generator=gen).to(device) if overlap else None,
            overlap_gate=torch.randn(slots, ratio, dim, generator=gen).to(device) if overlap else None,
            ape=torch.randn(ratio, width, generator=gen).to(device),
            norm_weight=(torch.rand(dim, generator=gen) + 0.5).to(device),
            norm_eps=1e-6,
            entries=_pool(fmt, blocks, per_block, dim, device),
            block_tables=torch.randperm(blocks, generator=gen)[: rows * 2].view(rows, 2).int().to(device),
        )

    kv = torch.randn(rows, width, generator=g).to(device)
    gate = torch.randn(rows, width, generator=g).to(device)
    angles = torch.randn(rows, rope_half, generator=g).to(device)
    slot_ids = torch.tensor([3, 0, 4, 1, 2], device=device)
    outputs = []
    for impl in ("reference", "triton"):
        s = state()
        compress_step(kv, gate, positions.to(device), slot_ids, angles.cos(), angles.sin(), s, impl=impl)  # type: ignore[arg-type]
        outputs.append(s)
    ref, fused = outputs
    for name in ("tail_kv", "tail_gate", "overlap_kv", "overlap_gate"):
        a, b = getattr(ref, name), getattr(fused, name)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), name
    stored_ref, stored = ref.entries.dequantize().float(), fused.entries.dequantize().float()
    tolerance = 1e-5 if fmt == "plain" else 0.13  # a 3-bit (FP8) / 1-bit (e2m1) mantissa step
    assert torch.allclose(stored_ref, stored, rtol=tolerance, atol=tolerance * stored_ref.abs().max())
    if fmt != "plain":
        assert (stored_ref == stored).float().mean() > 0.95  # the same bits but for rounding ties
    assert stored_ref.abs().sum() > 0
