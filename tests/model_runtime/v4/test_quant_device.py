"""MXFP4 quantisation gives the same bits on every device, and those bits are the exact MX rule: the
smallest power-of-two scale that maps the block's max |x| into [0, 6], then round to nearest e2m1
(ties to even mantissa). Rows include zeros, subnormals, tiny and huge magnitudes and exact ties."""

from __future__ import annotations

import math

import pytest
import torch

from deepscout.model_runtime.v4.weights.quant import (
    E2M1_MAGNITUDES,
    dequantize_mxfp4,
    quantize_mxfp4,
)


def awkward_rows(seed: int) -> torch.Tensor:
    """`[12, 64]` float32 rows: normal, all-zero, half-zero, tiny, subnormal, huge, and exact midpoints."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(12, 64, generator=g)
    rows[1] = 0.0
    rows[2, ::2] = 0.0
    rows[3] *= 1e-30
    rows[4] = torch.randn(64, generator=g) * 1e-42  # float32 subnormals
    rows[5] *= 1e30
    rows[6] = 3.0e38 * torch.sign(rows[6])
    rows[7] = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] * 8)  # every e2m1 midpoint
    rows[8] = -rows[7]
    rows[9] = torch.tensor([6.0, 2.9, 3.1, 5.0000005, 4.9999995, 0.2, 0.3, 0.0] * 8)
    rows[10] *= torch.rand(64, generator=g) ** 8
    rows[11, 32:] = 1e-38
    return rows


def oracle_codes(rows: torch.Tensor) -> tuple[list[int], list[int]]:
    """The MX rule in Python floats: (e2m1 codes in row order, e8m0 scale bytes)."""
    codes, scales = [], []
    for block in rows.reshape(-1, 32).tolist():
        amax = max(abs(v) for v in block)
        exponent = 0 if amax == 0 else math.ceil(math.log2(amax / 6.0))
        while amax and 2.0 ** (exponent - 1) >= amax / 6.0:  # log2 rounding guard
            exponent -= 1
        while amax and 2.0**exponent < amax / 6.0:
            exponent += 1
        exponent = max(-127, min(127, exponent))
        scales.append(exponent + 127)
        for v in block:
            x = abs(v) / 2.0**exponent
            best = min(
                range(8),
                key=lambda c: (abs(E2M1_MAGNITUDES[c] - x), c % 2),  # ties: even mantissa bit
            )
            codes.append(best | (8 if v < 0 and best > 0 else 0))
    return codes, scales


def unpacked_codes(packed: torch.Tensor) -> list[int]:
    as_bytes = packed.view(torch.uint8).flatten().tolist()
    return [nibble for b in as_bytes for nibble in (b & 0xF, b >> 4)]


@pytest.mark.parametrize("seed", [0, 1])
def test_quantize_mxfp4_follows_the_mx_rule_bit_for_bit(seed: int) -> None:
    rows = awkward_rows(seed)
    packed, scale = quantize_mxfp4(rows)
    codes, scales = oracle_codes(rows)
    assert scale.view(torch.uint8).flatten().tolist() == scales
    assert unpacked_codes(packed) == codes
    back = dequantize_mxfp4(packed, scale)
    block_max = rows.abs().reshape(12, 2, 32).amax(-1).repeat_interleave(32, -1)
    # half an e2m1 step (<= scale < amax/3), or under half the smallest code at the clamped scale 2^-127
    bound = torch.clamp(block_max / 3, min=2.0**-129)
    close = (back - rows).abs() <= bound
    assert bool(close[torch.arange(12) != 6].all())
    assert bool(torch.isinf(back[6]).any())  # 3e38 rounds up to 4 * 2^126, past float32's range


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantize_mxfp4_on_cuda_matches_the_cpu_bit_for_bit() -> None:
    rows = torch.cat([awkward_rows(2), torch.randn(4096, 64, generator=torch.Generator().manual_seed(9))])
    packed, scale = quantize_mxfp4(rows)
    cuda_rows = rows.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # quantising and decoding never wait for the host
    try:
        cuda_packed, cuda_scale = quantize_mxfp4(cuda_rows)
        back = dequantize_mxfp4(cuda_packed, cuda_scale)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert cuda_packed.is_cuda and cuda_scale.is_cuda and back.is_cuda
    assert torch.equal(cuda_packed.cpu().view(torch.uint8), packed.view(torch.uint8))
    assert torch.equal(cuda_scale.cpu().view(torch.uint8), scale.view(torch.uint8))
    assert torch.equal(back.cpu(), dequantize_mxfp4(packed, scale))
