"""FP8 block and MXFP4 formats: bit-exact dequantisation against a per-element reference formula and against
transformers' own dequantiser, quantise → dequantise error bounds, and the storage variants."""

from __future__ import annotations

import math

import pytest
import torch

from deepscout.model_runtime.v4.weights.quant import (
    FP8_BLOCK,
    QuantizedTensor,
    decode_scales,
    dequantize_fp8_block,
    dequantize_mxfp4,
    encode_e2m1,
    quantize_fp8_block,
    quantize_mxfp4,
    unpack_e2m1,
)


# ------------------------------------------------------------------ reference formulas (bit by bit)
def _e4m3_value(byte: int) -> float:
    sign = -1.0 if byte & 0x80 else 1.0
    exponent = (byte >> 3) & 0xF
    mantissa = byte & 0x7
    if exponent == 0xF and mantissa == 0x7:
        return math.nan
    if exponent == 0:
        return sign * 2.0**-6 * (mantissa / 8)
    return sign * 2.0 ** (exponent - 7) * (1 + mantissa / 8)


def _e2m1_value(code: int) -> float:
    sign = -1.0 if code & 0x8 else 1.0
    exponent = (code >> 1) & 0x3
    mantissa = code & 0x1
    if exponent == 0:
        return sign * 0.5 * mantissa
    return sign * 2.0 ** (exponent - 1) * (1 + mantissa / 2)


def _e8m0_value(byte: int) -> float:
    return math.nan if byte == 255 else 2.0 ** (byte - 127)


def _reference_fp8(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    codes = weight.view(torch.uint8).tolist()
    scale_values = decode_scales(scale).tolist() if scale.dtype == torch.float32 else None
    scale_bytes = scale.view(torch.uint8).tolist() if scale_values is None else None
    out = torch.empty(weight.shape, dtype=torch.float64)
    for i, row in enumerate(codes):
        for j, byte in enumerate(row):
            if scale_bytes is not None:
                s = _e8m0_value(scale_bytes[i // FP8_BLOCK][j // FP8_BLOCK])
            else:
                assert scale_values is not None
                s = scale_values[i // FP8_BLOCK][j // FP8_BLOCK]
            out[i, j] = _e4m3_value(byte) * s
    return out.to(torch.float32)


def _reference_mxfp4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    rows, half = packed.shape
    out = torch.empty(rows, 2 * half, dtype=torch.float64)
    data = packed.view(torch.uint8).tolist()
    scales = scale.view(torch.uint8).tolist()
    for i in range(rows):
        for j in range(half):
            byte = data[i][j]
            for k, code in enumerate((byte & 0xF, byte >> 4)):
                col = 2 * j + k
                out[i, col] = _e2m1_value(code) * _e8m0_value(scales[i][col // 32])
    return out.to(torch.float32)


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


# ------------------------------------------------------------------ scales
def test_e8m0_scales_decode_every_byte_as_a_power_of_two() -> None:
    every = torch.arange(256, dtype=torch.uint8)
    decoded = decode_scales(every)
    expected = torch.tensor([_e8m0_value(b) for b in range(256)], dtype=torch.float32)
    assert torch.equal(decoded[:255], expected[:255]) and decoded[255].isnan()
    # the float8_e8m0fnu dtype and raw bytes decode identically, and agree with torch's own conversion
    as_dtype = decode_scales(every.view(torch.float8_e8m0fnu))
    assert _bit_equal(as_dtype, decoded)
    assert torch.equal(every.view(torch.float8_e8m0fnu)[:255].to(torch.float32), decoded[:255])


# ------------------------------------------------------------------ FP8 block
@pytest.mark.parametrize("scale_format", ["e8m0", "float32"])
def test_fp8_dequant_is_bit_exact_against_the_reference_formula(scale_format: str) -> None:
    gen = torch.Generator().manual_seed(1)
    # ragged edges on both axes: 200 = 128 + 72 rows, 160 = 128 + 32 columns
    weight = torch.randn(200, 160, generator=gen) * torch.logspace(-3, 1, 160)
    q, scale = quantize_fp8_block(weight, scale_format=scale_format)  # type: ignore[arg-type]
    assert q.dtype == torch.float8_e4m3fn and tuple(scale.shape) == (2, 2)
    assert scale.dtype == (torch.float8_e8m0fnu if scale_format == "e8m0" else torch.float32)
    ours = dequantize_fp8_block(q, scale)
    assert _bit_equal(ours, _reference_fp8(q, scale))


def test_fp8_dequant_covers_every_e4m3_code() -> None:
    codes = torch.arange(256, dtype=torch.uint8).repeat(128, 1)[:, :128]  # 128 x 128, codes 0..127 per row
    codes = torch.cat([codes, codes | 0x80], dim=1)  # and the negatives: 128 x 256
    weight = codes.view(torch.float8_e4m3fn)
    scale = torch.tensor([[130, 120]], dtype=torch.uint8).view(torch.float8_e8m0fnu)  # 2^3 and 2^-7
    ours = dequantize_fp8_block(weight, scale)
    ref = _reference_fp8(weight, scale)
    nan = ref.isnan()
    assert torch.equal(ours.isnan(), nan)
    assert _bit_equal(ours.masked_fill(nan, 0), ref.masked_fill(nan, 0))


def test_fp8_round_trip_error_is_within_half_an_e4m3_step() -> None:
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(256, 384, generator=gen) * 0.02
    weight[:128, :128] *= 1000  # blocks of very different magnitude keep their own scale
    for scale_format in ("e8m0", "float32"):
        q, scale = quantize_fp8_block(weight, scale_format=scale_format)  # type: ignore[arg-type]
        back = dequantize_fp8_block(q, scale)
        per_element_scale = decode_scales(scale).repeat_interleave(128, 0).repeat_interleave(128, 1)
        # 3 mantissa bits: relative error <= 2^-4 for normals; absolute <= 2^-10 * scale for subnormals
        bound = torch.maximum(weight.abs() * 2.0**-4, per_element_scale * 2.0**-10)
        assert ((back - weight).abs() <= bound).all()
        assert (back.abs().amax() / weight.abs().amax() - 1).abs() < 2.0**-4


def test_fp8_dequant_matches_transformers_dequantizer() -> None:
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(256, 384, generator=gen)
    q, scale = quantize_fp8_block(weight)
    theirs = Fp8Dequantize(None)._dequantize_one(q, scale, output_dtype=torch.float32)
    assert _bit_equal(dequantize_fp8_block(q, scale), theirs)


def test_fp8_dequant_rejects_a_scale_grid_of_the_wrong_shape() -> None:
    q, _ = quantize_fp8_block(torch.randn(256, 256))
    with pytest.raises(ValueError, match=r"needs block scales \[2, 2\]"):
        dequantize_fp8_block(q, torch.ones(1, 2))


# ------------------------------------------------------------------ MXFP4
def test_e2m1_table_matches_the_bit_formula_for_all_codes() -> None:
    every_byte = torch.arange(256, dtype=torch.uint8).view(16, 16)
    values = unpack_e2m1(every_byte)
    for byte in range(256):
        low, high = values.view(-1, 2)[byte].tolist()
        assert low == _e2m1_value(byte & 0xF) and high == _e2m1_value(byte >> 4)


def test_mxfp4_dequant_is_bit_exact_against_the_reference_formula() -> None:
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(48, 256, generator=gen) * torch.logspace(-4, 2, 256)
    packed, scale = quantize_mxfp4(weight)
    assert packed.dtype == torch.int8 and tuple(packed.shape) == (48, 128)
    assert scale.dtype == torch.float8_e8m0fnu and tuple(scale.shape) == (48, 8)
    assert _bit_equal(dequantize_mxfp4(packed, scale), _reference_mxfp4(packed, scale))


def test_mxfp4_storage_dtypes_decode_identically() -> None:
    packed, scale = quantize_mxfp4(torch.randn(32, 128, generator=torch.Generator().manual_seed(5)))
    base = dequantize_mxfp4(packed, scale)
    for view in (packed.view(torch.uint8), packed.view(torch.float4_e2m1fn_x2)):
        assert _bit_equal(dequantize_mxfp4(view, scale), base)
    assert _bit_equal(dequantize_mxfp4(packed, scale.view(torch.uint8)), base)


def test_mxfp4_round_trip_error_is_within_half_an_e2m1_step() -> None:
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(64, 512, generator=gen) * 0.05
    packed, scale = quantize_mxfp4(weight)
    back = dequantize_mxfp4(packed, scale)
    s = decode_scales(scale).repeat_interleave(32, dim=1)
    # e2m1 steps: 0.5 below 2, 1 in [2, 4], 2 in [4, 6]; no value is clipped (|w| / s <= 6)
    assert ((weight.abs() / s) <= 6).all()
    bound = s * torch.clamp(weight.abs() / (4 * s), min=0.25)
    assert ((back - weight).abs() <= bound + 1e-12).all()
    # the block's largest magnitude lands in the top half of the e2m1 range (scale is the tightest power of 2)
    block_max = (weight.abs() / s).view(64, 16, 32).amax(-1)
    assert (block_max > 3).all()


def test_mxfp4_dequant_matches_transformers_dequantizer() -> None:
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    packed, scale = quantize_mxfp4(torch.randn(64, 256, generator=torch.Generator().manual_seed(7)))
    theirs = Fp8Dequantize(None)._dequantize_one(packed, scale, output_dtype=torch.float32)
    assert _bit_equal(dequantize_mxfp4(packed, scale), theirs)


def test_e2m1_rounds_to_nearest_with_ties_to_even() -> None:
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, 0.2, 0.3, 5.9, -0.1])
    decoded = unpack_e2m1(
        (encode_e2m1(x)[0::2] | (encode_e2m1(x)[1::2] << 4)).to(torch.uint8).view(1, -1)
    ).flatten()
    assert decoded.tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -4.0, 0.0, 0.5, 6.0, 0.0]


def test_quantized_tensor_dequantises_to_the_requested_dtype() -> None:
    weight = torch.randn(128, 256, generator=torch.Generator().manual_seed(8))
    q, scale = quantize_fp8_block(weight)
    tensor = QuantizedTensor(format="fp8_block", data=q, scale=scale, shape=(128, 256))
    assert tensor.block == (128, 128) and tensor.nbytes == 128 * 256 + 2
    as_bf16 = tensor.dequantize(torch.bfloat16)
    # e4m3 times a power of two is exactly representable in bfloat16
    assert as_bf16.dtype == torch.bfloat16 and torch.equal(as_bf16.float(), tensor.dequantize())
