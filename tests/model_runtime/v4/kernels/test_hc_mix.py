"""The fused mHC mappings (one kernel over the premix's slices) against their PyTorch reference, on fresh
random streams."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.hc_mix import hc_mix
from deepscout.model_runtime.v4.kernels.hc_streams import hc_premix

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
    settings = {"hc": HC, "norm_eps": EPS, "iters": 20, "eps": EPS}
    ref = hc_mix(hc_premix(streams, fn, impl="reference"), scale, base, **settings, impl="reference")
    out = hc_mix(hc_premix(streams, fn, impl="triton"), scale, base, **settings, impl="triton")
    for got, want in zip(out, ref, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    comb = out[1]
    assert torch.allclose(comb.sum(dim=-2), torch.ones(n_tokens, HC, device=device), atol=1e-4)


def test_mismatched_weights_are_one_line_errors() -> None:
    logits = hc_premix(torch.zeros(2, HC, 8), torch.zeros(10, HC * 8), impl="reference")
    with pytest.raises(ValueError, match="hc_mix needs 24 logits"):
        hc_mix(
            logits, torch.ones(3), torch.zeros(10), hc=HC, norm_eps=EPS, iters=2, eps=EPS, impl="reference"
        )
