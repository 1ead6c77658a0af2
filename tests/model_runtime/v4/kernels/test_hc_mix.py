"""The fused mHC mapping (premix partials + one mapping kernel), and the merge fused into its premix
(`hc_merge_mix`), against their PyTorch references, on fresh random streams."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.hc_mix import hc_merge_mix, hc_mix

HC, EPS = 4, 1e-6


# 1 and 3 tokens: the decode shapes (the premix split over many slices); 100: fewer slices, blocks of tokens
@pytest.mark.parametrize("n_tokens", [1, 3, 100])
@pytest.mark.parametrize("dim", [16, 96])
def test_kernel_matches_reference(device: torch.device, n_tokens: int, dim: int) -> None:
    g = torch.Generator().manual_seed(n_tokens + dim)
    mix = 2 * HC + HC * HC
    streams = (torch.randn(n_tokens, HC, dim, generator=g) * 3).to(device)
    fn = (torch.randn(mix, HC * dim, generator=g) * 3 * dim**-0.5).to(device)
    scale = (torch.rand(3, generator=g) + 0.5).to(device)
    base = torch.randn(mix, generator=g).to(device)
    ref = hc_mix(streams, fn, scale, base, norm_eps=EPS, iters=20, eps=EPS, impl="reference")
    out = hc_mix(streams, fn, scale, base, norm_eps=EPS, iters=20, eps=EPS, impl="triton")
    for got, want in zip(out, ref, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    comb = out[2]
    assert torch.allclose(comb.sum(dim=-2), torch.ones(n_tokens, HC, device=device), atol=1e-4)


# 1 and 3 tokens: merged inside the premix launch; 100: the merge kernel, then the premix
@pytest.mark.parametrize("n_tokens", [1, 3, 100])
@pytest.mark.parametrize("dim", [16, 96])
def test_merge_then_mix_matches_reference(device: torch.device, n_tokens: int, dim: int) -> None:
    g = torch.Generator().manual_seed(7 * n_tokens + dim)
    mix = 2 * HC + HC * HC
    streams = (torch.randn(n_tokens, HC, dim, generator=g) * 3).to(device)
    block_out = torch.randn(n_tokens, dim, generator=g).to(device, torch.bfloat16)
    post = (2 * torch.rand(n_tokens, HC, generator=g)).to(device)
    comb = torch.rand(n_tokens, HC, HC, generator=g).to(device)
    fn = (torch.randn(mix, HC * dim, generator=g) * 3 * dim**-0.5).to(device)
    scale = (torch.rand(3, generator=g) + 0.5).to(device)
    base = torch.randn(mix, generator=g).to(device)
    operands = (block_out, streams, post, comb, fn, scale, base)
    ref = hc_merge_mix(*operands, norm_eps=EPS, iters=20, eps=EPS, impl="reference")
    out = hc_merge_mix(*operands, norm_eps=EPS, iters=20, eps=EPS, impl="triton")
    assert torch.allclose(out[0], ref[0], rtol=1e-5, atol=1e-5)  # the merged streams
    for got, want in zip(out[1:], ref[1:], strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_mismatched_weights_are_one_line_errors() -> None:
    streams = torch.zeros(2, HC, 8)
    with pytest.raises(ValueError, match="hc_mix needs fn"):
        hc_mix(
            streams,
            torch.zeros(10, HC * 8),
            torch.ones(3),
            torch.zeros(10),
            norm_eps=EPS,
            iters=2,
            eps=EPS,
            impl="reference",
        )
    with pytest.raises(ValueError, match="hc_merge block output"):
        hc_merge_mix(
            torch.zeros(2, 7),
            streams,
            torch.zeros(2, HC),
            torch.zeros(2, HC, HC),
            torch.zeros(24, HC * 8),
            torch.ones(3),
            torch.zeros(24),
            norm_eps=EPS,
            iters=2,
            eps=EPS,
            impl="triton",
        )
