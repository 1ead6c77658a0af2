"""MXFP4 expert stacks: exact dequantisation (every byte pattern and scale, float32 and bfloat16),
quantisation with `weights/quant.py`'s quantiser, and one-line errors on malformed stacks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertStacks
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks, quantize
from deepscout.model_runtime.v4.weights.quant import dequantize_mxfp4, quantize_mxfp4


def _every_pattern(experts: int, hidden: int, inter: int) -> Mxfp4ExpertStacks:
    """Packed bytes running through all 256 patterns; scale bytes through 0..254 (255 is NaN)."""

    def counting(shape: tuple[int, ...], step: int, modulo: int) -> torch.Tensor:
        return (torch.arange(math.prod(shape)) * step % modulo).to(torch.uint8).view(shape)

    shapes = ((inter, hidden), (hidden, inter), (inter, hidden))
    packed = (counting((experts, r, c // 2), 1 + 2 * i, 256) for i, (r, c) in enumerate(shapes))
    scales = (counting((experts, r, c // 32), 7 + i, 255) for i, (r, c) in enumerate(shapes))
    return Mxfp4ExpertStacks(*packed, *scales)


def test_dequantize_is_exact_in_bfloat16() -> None:
    stacks = _every_pattern(3, 64, 32)
    wide = stacks.dequantize(torch.float32)
    narrow = stacks.dequantize(torch.bfloat16)
    for e in range(3):
        assert torch.equal(wide.w2[e], dequantize_mxfp4(stacks.w2[e], stacks.w2_scale[e]))
        whole, exact = narrow.expert(e, torch.bfloat16), wide.expert(e, torch.float32)
        for mine, from_whole, from_exact in zip(stacks.expert(e, torch.bfloat16), whole, exact, strict=True):
            assert torch.equal(mine, from_whole) and torch.equal(mine.float(), from_exact)


def test_quantize_uses_the_checkpoint_quantiser() -> None:
    gen = torch.Generator().manual_seed(1)
    dense = ExpertStacks(*(torch.randn(4, r, c, generator=gen) for r, c in ((32, 64), (64, 32), (32, 64))))
    stacks = quantize(dense)
    assert stacks.n_experts == 4 and stacks.w1.dtype == torch.uint8 and stacks.w2.shape == (4, 64, 16)
    assert stacks.w2_scale.dtype == torch.float8_e8m0fnu and stacks.w2_scale.shape == (4, 64, 1)
    packed, scale = quantize_mxfp4(dense.w3[2])
    assert torch.equal(stacks.w3[2], packed.view(torch.uint8))
    assert torch.equal(stacks.w3_scale[2].view(torch.uint8), scale.view(torch.uint8))
    moved = stacks.map(torch.Tensor.clone)
    assert torch.equal(moved.dequantize(torch.float32).w1, stacks.dequantize(torch.float32).w1)


def test_malformed_stacks_are_refused() -> None:
    stacks = _every_pattern(2, 64, 32)
    with pytest.raises(TypeError, match="packed"):
        replace(stacks, w1=stacks.w1.float())
    with pytest.raises(TypeError, match="scale"):
        replace(stacks, w1_scale=stacks.w1_scale.float())
    with pytest.raises(ValueError, match="w2 must be"):
        replace(stacks, w2=stacks.w2[:, :-1])
    with pytest.raises(ValueError, match="w3_scale must be"):
        replace(stacks, w3_scale=stacks.w3_scale[..., :1])
