"""The fused RMS-norm and RoPE kernels against their PyTorch reference, on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.norm_rope import rms_norm, rope, rope_into_rows
from deepscout.model_runtime.v4.kernels.norm_rope_triton import rope_head_block
from deepscout.model_runtime.v4.kernels.rope_rows import RowNorm, RowPositions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", [True, False])
def test_rms_norm_matches_reference(device: torch.device, dtype: torch.dtype, weighted: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(7, 3, 80, generator=g) * 4).to(device, dtype)
    weight = (torch.rand(80, generator=g) + 0.5).to(device) if weighted else None
    ref = rms_norm(x, weight, 1e-6, impl="reference")
    out = rms_norm(x, weight, 1e-6, impl="triton")
    assert out.dtype == ref.dtype and out.shape == ref.shape
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert torch.allclose(out.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 40), (5, 20, 40), (3, 3, 8)])
@pytest.mark.parametrize("inverse", [False, True])
def test_rope_matches_reference(
    device: torch.device, dtype: torch.dtype, shape: tuple[int, ...], inverse: bool
) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*shape, generator=g).to(device, dtype)
    angles = torch.randn(shape[0], 4, generator=g).to(device)
    cos, sin = angles.cos() * 1.3, angles.sin() * 1.3
    ref = rope(x, cos, sin, inverse=inverse, impl="reference")
    out = rope(x, cos, sin, inverse=inverse, impl="triton")
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    assert out.dtype == ref.dtype and torch.allclose(out.float(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_rope_into_rows_writes_only_the_named_rows(device: torch.device, out_dtype: torch.dtype) -> None:
    """A decode step's KV rows into the window rings (flattened `[slots * window, dim]`), in the ring's dtype;
    the other rows keep what they held."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 40, generator=g).to(device)
    angles = torch.randn(3, 4, generator=g).to(device)
    cos, sin = angles.cos(), angles.sin()
    rows = torch.tensor([9, 2, 14], device=device)
    before = torch.randn(16, 40, generator=g).to(device, out_dtype)
    want, got = before.clone(), before.clone()
    rope_into_rows(x, cos, sin, want, rows, impl="reference")
    rope_into_rows(x, cos, sin, got, rows, impl="triton")
    tol = 1e-6 if out_dtype == torch.float32 else 1e-2
    assert torch.allclose(got.float(), want.float(), rtol=tol, atol=tol)
    others = torch.ones(16, dtype=torch.bool, device=device)
    others[rows] = False
    assert torch.equal(got[others], before[others])
    assert not torch.equal(got[rows], before[rows])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 40), (5, 20, 40), (3, 3, 8)])
@pytest.mark.parametrize("weighted", [True, False])
def test_normed_rope_matches_norm_then_rope(
    device: torch.device, dtype: torch.dtype, shape: tuple[int, ...], weighted: bool
) -> None:
    """RMS norm and rotation in one launch equal the norm's output rotated (V4's query and KV rows)."""
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(*shape, generator=g) * 3).to(device, dtype)
    angles = torch.randn(shape[0], 4, generator=g).to(device)
    cos, sin = angles.cos(), angles.sin()
    norm = RowNorm((torch.rand(shape[-1], generator=g) + 0.5).to(device) if weighted else None, 1e-6)
    normed = rms_norm(x, norm.weight, norm.eps, impl="reference")
    want = rope(normed, cos, sin, inverse=False, impl="reference")
    assert torch.equal(rope(x, cos, sin, inverse=False, impl="reference", norm=norm), want)
    got = rope(x, cos, sin, inverse=False, impl="triton", norm=norm)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: two roundings (norm, rotation) of values ~3
    assert got.dtype == want.dtype and torch.allclose(got.float(), want.float(), rtol=tol, atol=tol)
    if len(shape) == 2:
        rows = torch.tensor([7, 0, 3, 9, 1][: shape[0]], device=device)
        ring = torch.zeros(10, shape[-1], device=device, dtype=torch.bfloat16)
        rope_into_rows(x, cos, sin, ring, rows, impl="triton", norm=norm)
        assert torch.allclose(ring[rows].float(), want.to(torch.bfloat16).float(), rtol=2e-2, atol=2e-2)


def test_rope_into_rows_writes_the_positions_beside_the_rows(device: torch.device) -> None:
    """The window ring's positions in the rows' launch: position i lands at rows[i], nothing else moves."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 40, generator=g).to(device)
    angles = torch.randn(3, 4, generator=g).to(device)
    rows = torch.tensor([9, 2, 14], device=device)
    values = torch.tensor([1000, 17, 123456789], device=device)
    for impl in ("reference", "triton"):
        ring = torch.zeros(16, 40, device=device)
        ring_pos = torch.full((16,), -1, dtype=torch.long, device=device)
        rope_into_rows(
            x, angles.cos(), angles.sin(), ring, rows, impl=impl, positions=RowPositions(values, ring_pos)
        )
        want = torch.full((16,), -1, dtype=torch.long, device=device)
        want[rows] = values
        assert torch.equal(ring_pos, want)


def test_rope_head_blocks_shrink_until_the_launch_fills_the_multiprocessors() -> None:
    assert rope_head_block(2048, 64, programs=132) == 16  # prefill: blocks of 16 heads fill the GPU
    assert rope_head_block(8, 64, programs=132) == 2  # 256 programs; 4 heads a program would be 128
    assert rope_head_block(1, 64, programs=132) == 1  # a decode row: one program a head
    assert rope_head_block(30, 8, programs=1) == 8  # the interpreter (one multiprocessor): a token a program
    assert rope_head_block(5, 20, programs=1) == 16  # two blocks, the second masked past head 20
