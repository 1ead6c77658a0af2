"""The compressor decode step's Triton kernels against their PyTorch reference: same tails, overlap state and
entries, step after step."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.compress_step import compress_step
from deepscout.model_runtime.v4.kernels.compress_step_triton import CompressTiles, compress_step_triton
from deepscout.model_runtime.v4.kernels.compressor_state import CompressorState
from deepscout.model_runtime.v4.kernels.paged_keys import KeyFormat, PagedKeys


def _pool(
    fmt: KeyFormat,
    blocks: int,
    per_block: int,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    rope: int = 8,
) -> PagedKeys:
    """An empty entry pool in a storage format (zeros, so unwritten entries compare equal): plain in `dtype`,
    FP8 with `rope` trailing BF16 dims, or MXFP4."""
    if fmt == "plain":
        return PagedKeys("plain", torch.zeros(blocks, per_block, dim, dtype=dtype, device=device))
    if fmt == "fp8_rope":
        nope = torch.zeros(blocks, per_block, dim - rope, device=device).to(torch.float8_e4m3fn)
        return PagedKeys(
            "fp8_rope", nope, rope=torch.zeros(blocks, per_block, rope, device=device).bfloat16()
        )
    packed = torch.zeros(blocks, per_block, dim // 2, dtype=torch.uint8, device=device)
    return PagedKeys(
        "mxfp4", packed, torch.zeros(blocks, per_block, dim // 32, dtype=torch.uint8, device=device)
    )


def _state(
    *,
    overlap: bool,
    ratio: int,
    dim: int,
    rows: int,
    fmt: KeyFormat,
    proj: torch.dtype,
    stored: torch.dtype,
    rope_half: int,
    device: torch.device,
) -> CompressorState:
    """A compressor mid-sequence over `rows + 2` slots: tails and overlap state holding values of the
    projections' dtype (as decoding leaves them) stored in `stored`, float32 parameters, an empty pool and
    each row's blocks distinct (the same every call)."""
    gen = torch.Generator().manual_seed(7)
    width = 2 * dim if overlap else dim
    slots, per_block = rows + 2, 2
    table_width = (rows + 6) // per_block + 1

    def values(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(proj).to(stored).to(device)

    blocks = rows * table_width + 2
    return CompressorState(
        tail_kv=values(slots, ratio, width),
        tail_gate=values(slots, ratio, width),
        overlap_kv=values(slots, ratio, dim) if overlap else None,
        overlap_gate=values(slots, ratio, dim) if overlap else None,
        ape=torch.randn(ratio, width, generator=gen).to(device),
        norm_weight=(torch.rand(dim, generator=gen) + 0.5).to(device),
        norm_eps=1e-6,
        entries=_pool(fmt, blocks, per_block, dim, stored, device, rope=2 * rope_half),
        block_tables=torch.randperm(blocks, generator=gen)[: rows * table_width]
        .view(rows, table_width)
        .int()
        .to(device),
    )


def _assert_steps_match(
    *,
    overlap: bool,
    ratio: int,
    dim: int,
    rows: int,
    fmt: KeyFormat,
    proj: torch.dtype,
    stored: torch.dtype,
    device: torch.device,
    rope_half: int = 4,
    tiles: CompressTiles | None = None,
    steps: int = 6,
) -> None:
    """`steps` consecutive tokens for `rows` rows in distinct slots, starting at a window's first slot, two
    and one before a window completes, and one after (round robin): after every step the reference and the
    kernels leave the same tails and overlap state (within one rounding step of the projections' dtype:
    the CPU's interpreter truncates to bfloat16 where the GPU rounds) and the same entries (within the
    reference's rounding of its products to bfloat16, and one rounding step of a quantised format; with
    bfloat16 products an MXFP4 block's scale may round the other way, so most values must agree)."""
    ref, fused = (
        _state(
            overlap=overlap,
            ratio=ratio,
            dim=dim,
            rows=rows,
            fmt=fmt,
            proj=proj,
            stored=stored,
            rope_half=rope_half,
            device=device,
        )
        for _ in range(2)
    )
    g = torch.Generator().manual_seed(ratio * dim + rows)
    width = 2 * dim if overlap else dim
    slot_ids = torch.randperm(rows + 2, generator=g)[:rows].to(device)
    starts = torch.tensor(
        [i * ratio + (0, ratio - 2, ratio - 1, 1)[i % 4] for i in range(rows)], device=device
    )
    state_step = 0.0 if proj == torch.float32 else 2.0**-7
    tolerance = max(1e-5 if proj == torch.float32 else 2e-2, 1e-5 if fmt == "plain" else 0.13)
    for step in range(steps):
        kv = torch.randn(rows, width, generator=g).to(proj).to(device)
        gate = torch.randn(rows, width, generator=g).to(proj).to(device)
        angles = torch.randn(rows, rope_half, generator=g).to(device)
        args = (kv, gate, starts + step, slot_ids, angles.cos(), angles.sin())
        compress_step(*args, ref, impl="reference")
        compress_step_triton(*args, fused, tiles=tiles)
        for name in ("tail_kv", "tail_gate", "overlap_kv", "overlap_gate"):
            want, got = getattr(ref, name), getattr(fused, name)
            if want is not None:
                assert torch.allclose(want, got, rtol=state_step, atol=0.0), f"{name} after step {step}"
        want, got = ref.entries.dequantize().float(), fused.entries.dequantize().float()
        written = (want != 0).any(-1) | (got != 0).any(-1)
        agree = (want[written] == got[written]).float().mean()
        scale = want.abs().max().item()
        assert scale > 0
        if fmt == "mxfp4" and proj != torch.float32:
            assert agree > 0.9, f"entries after step {step}"
        else:
            close = torch.allclose(want, got, rtol=tolerance, atol=tolerance * scale)
            assert close, f"entries after step {step}"
        if fmt != "plain" and proj == torch.float32:
            assert agree > 0.95, f"entries after step {step}"  # the same bits but for rounding ties


@pytest.mark.parametrize("fmt", ["plain", "fp8_rope", "mxfp4"])
@pytest.mark.parametrize(
    ("overlap", "ratio"), [(True, 4), (False, 8), (False, 32)], ids=["csa", "hca", "hca-tiles"]
)
def test_kernel_matches_reference(device: torch.device, overlap: bool, ratio: int, fmt: KeyFormat) -> None:
    """One step for five rows (first, completing, later windows) lands the entries where the reference
    puts them, quantised as the pool stores them."""
    g = torch.Generator().manual_seed(ratio)
    dim, slots, blocks, per_block = 32, 5, 12, 4
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
            entries=_pool(fmt, blocks, per_block, dim, torch.float32, device),
            block_tables=torch.randperm(blocks, generator=gen)[: rows * 2].view(rows, 2).int().to(device),
        )

    kv = torch.randn(rows, width, generator=g).to(device)
    gate = torch.randn(rows, width, generator=g).to(device)
    angles = torch.randn(rows, 4, generator=g).to(device)
    slot_ids = torch.tensor([3, 0, 4, 1, 2], device=device)
    outputs = []
    for impl in ("reference", "triton"):
        s = state()
        compress_step(kv, gate, positions.to(device), slot_ids, angles.cos(), angles.sin(), s, impl=impl)
        outputs.append(s)
    ref, fused = outputs
    for name in ("tail_kv", "tail_gate", "overlap_kv", "overlap_gate"):
        a, b = getattr(ref, name), getattr(fused, name)
        if a is not None:
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), name
    stored_ref, stored = ref.entries.dequantize().float(), fused.entries.dequantize().float()
    tolerance = 1e-5 if fmt == "plain" else 0.13  # a 3-bit (FP8) / 1-bit (e2m1) mantissa step
    assert torch.allclose(stored_ref, stored, rtol=tolerance, atol=tolerance * stored_ref.abs().max().item())
    if fmt != "plain":
        assert (stored_ref == stored).float().mean() > 0.95  # the same bits but for rounding ties
    assert stored_ref.abs().sum() > 0


@pytest.mark.parametrize(
    ("proj", "stored"),
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)],
    ids=["f32", "bf16-f32-state", "bf16"],
)
@pytest.mark.parametrize("fmt", ["plain", "fp8_rope"])
@pytest.mark.parametrize(("overlap", "ratio"), [(True, 4), (False, 16)], ids=["csa", "hca"])
def test_consecutive_steps_match_reference(
    device: torch.device, overlap: bool, ratio: int, fmt: KeyFormat, proj: torch.dtype, stored: torch.dtype
) -> None:
    """Three rows step across CSA's first-window boundary and completed windows (HCA: two completions),
    with 40 channels (a partial channel block) and the default tiles."""
    _assert_steps_match(
        overlap=overlap, ratio=ratio, dim=40, rows=3, fmt=fmt, proj=proj, stored=stored, device=device
    )


@pytest.mark.parametrize(("overlap", "ratio"), [(True, 4), (False, 16)], ids=["csa", "hca"])
def test_slot_tiles_match_reference(device: torch.device, overlap: bool, ratio: int) -> None:
    """Windows pooled in tiles of two slots (online softmax across tiles, the overlap state handed over tile
    by tile) and channel blocks of 8 agree with the reference too."""
    _assert_steps_match(
        overlap=overlap,
        ratio=ratio,
        dim=32,
        rows=4,
        fmt="mxfp4",
        proj=torch.float32,
        stored=torch.float32,
        device=device,
        tiles=CompressTiles(channels=8, tile_elements=16),
    )


def test_tiles_must_be_powers_of_two() -> None:
    with pytest.raises(ValueError, match="powers of two"):
        CompressTiles(channels=24)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rows", [1, 8])
@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16], ids=["f32-state", "bf16-state"])
@pytest.mark.parametrize(
    ("overlap", "ratio", "dim", "fmt"),
    [
        (False, 128, 512, "plain"),
        (False, 128, 512, "fp8_rope"),
        (True, 4, 512, "plain"),
        (True, 4, 512, "fp8_rope"),
        (True, 4, 128, "mxfp4"),
    ],
    ids=["hca", "hca-paper", "csa", "csa-paper", "indexer-paper"],
)
def test_real_shapes_match_reference(
    overlap: bool, ratio: int, dim: int, fmt: KeyFormat, stored: torch.dtype, rows: int
) -> None:
    """V4-Flash's compressors (HCA 512 channels over 128 slots; CSA 512 and the indexer's 128 over 4 with
    overlap) at batch 1 and 8, bfloat16 projections, RoPE over the trailing 64 channels."""
    _assert_steps_match(
        overlap=overlap,
        ratio=ratio,
        dim=dim,
        rows=rows,
        fmt=fmt,
        proj=torch.bfloat16,
        stored=stored,
        device=torch.device("cuda"),
        rope_half=32,
    )
