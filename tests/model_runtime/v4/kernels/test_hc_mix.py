"""The fused mHC mapping kernel against its PyTorch reference, on fresh random logits."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.hc_mix import hc_mix


@pytest.mark.parametrize("n_tokens", [1, 33, 100])
def test_kernel_matches_reference(device: torch.device, n_tokens: int) -> None:
    g = torch.Generator().manual_seed(n_tokens)
    hc = 4
    mixes = (torch.randn(n_tokens, 2 * hc + hc * hc, generator=g) * 3).to(device)
    scale = (torch.rand(3, generator=g) + 0.5).to(device)
    base = torch.randn(2 * hc + hc * hc, generator=g).to(device)
    ref = hc_mix(mixes, scale, base, hc=hc, iters=20, eps=1e-6, impl="reference")
    out = hc_mix(mixes, scale, base, hc=hc, iters=20, eps=1e-6, impl="triton")
    for got, want in zip(out, ref, strict=True):
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    comb = out[2]
    assert torch.allclose(comb.sum(dim=-2), torch.ones(n_tokens, hc, device=device), atol=1e-4)
