"""The two quantised weight formats of DeepSeek-V4 checkpoints, and their exact dequantisation.

* **FP8 block** (dense linears): ``weight`` in ``float8_e4m3fn`` of shape ``[N, K]`` and a multiplier per
  128×128 block, ``scale`` of shape ``[ceil(N/128), ceil(K/128)]`` (official V4 checkpoints store it as
  ``float8_e8m0fnu``, i.e. a power of two; V3-style checkpoints as ``float32`` under ``weight_scale_inv``).
  ``dequant[i, j] = weight[i, j] * scale[i // 128, j // 128]``.
* **MXFP4** (routed experts of V4-Flash): two e2m1 codes per byte (element ``2j`` in the low nibble,
  ``2j+1`` in the high nibble), ``weight`` of shape ``[N, K/2]`` stored as int8/uint8 (or
  ``float4_e2m1fn_x2``), and a power-of-two multiplier per 32 consecutive elements of a row,
  ``scale`` of shape ``[N, K/32]`` in ``float8_e8m0fnu``.
  ``dequant[i, j] = e2m1(code[i, j]) * scale[i, j // 32]``.

Both dequantisations are exact in float32 (a product of a ≤4-significant-bit value and a scale). The
quantisers write synthetic checkpoints in the same formats and the paged KV pool's MXFP4 indexer keys;
everything here runs on the tensors' own device, with the same bits on every device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

FP8_BLOCK = 128
FP4_BLOCK = 32
FP8_E4M3_MAX = 448.0
FP4_E2M1_MAX = 6.0
#: e2m1 magnitudes by code (bit 3 is the sign): exponent 0 is subnormal (0, 0.5), then 2^(e-1)·(1 + m/2).
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

#: dtypes a packed FP4 tensor may be stored as (one byte = two e2m1 codes).
FP4_STORAGE_DTYPES = (torch.int8, torch.uint8, torch.float4_e2m1fn_x2)
#: dtypes a block scale may be stored as; uint8 holds raw e8m0 exponent bytes.
SCALE_DTYPES = (torch.float8_e8m0fnu, torch.uint8, torch.float32, torch.bfloat16)

QuantFormat = Literal["fp8_block", "mxfp4"]
ScaleFormat = Literal["e8m0", "float32"]


@dataclass(frozen=True)
class QuantizedTensor:
    """A weight in its stored format, with what is needed to dequantise it (or to hand it to a kernel)."""

    format: QuantFormat
    data: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, ...]

    @property
    def block(self) -> tuple[int, int]:
        """Rows × columns covered by one scale."""
        return (FP8_BLOCK, FP8_BLOCK) if self.format == "fp8_block" else (1, FP4_BLOCK)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.format == "fp8_block":
            return dequantize_fp8_block(self.data, self.scale, dtype=dtype)
        return dequantize_mxfp4(self.data, self.scale, dtype=dtype)


def fp8_scale_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The block-scale shape of an FP8 ``[N, K]`` weight."""
    rows, cols = shape
    return (-(-rows // FP8_BLOCK), -(-cols // FP8_BLOCK))


# ---------------------------------------------------------------------------------------------- scales
def decode_scales(scale: torch.Tensor) -> torch.Tensor:
    """Block scales as float32 multipliers: e8m0 (dtype or raw uint8 bytes) → 2^(b-127), floats as is."""
    if scale.dtype in (torch.float8_e8m0fnu, torch.uint8):
        exponent = scale.view(torch.uint8).to(torch.int32) - 127
        return torch.where(exponent == 128, torch.nan, _exact_pow2(exponent.clamp(max=127)))
    if scale.dtype in (torch.float32, torch.bfloat16):
        return scale.to(torch.float32)
    raise TypeError(f"block scales must be one of {SCALE_DTYPES}, got {scale.dtype}")


def _exact_pow2(exponent: torch.Tensor) -> torch.Tensor:
    """2^e as float32 for integer e in [-127, 127], built from its bits (exact on every device; 2^-127 is
    the one subnormal)."""
    bits = torch.where(exponent > -127, (exponent.to(torch.int32) + 127) << 23, 1 << 22)
    return bits.to(torch.int32).view(torch.float32)


def _pow2_ceil_exponent(x: torch.Tensor) -> torch.Tensor:
    """Smallest integer e with 2^e >= x, for positive float32 x (exact, via frexp)."""
    mantissa, exponent = torch.frexp(x)
    return torch.where(mantissa == 0.5, exponent - 1, exponent)


def _block_scale(amax: torch.Tensor, qmax: float, fmt: ScaleFormat) -> torch.Tensor:
    """Per-block multiplier with amax / scale <= qmax (a power of two for e8m0); 1 for all-zero blocks."""
    if fmt == "float32":
        return torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    exponent = _pow2_ceil_exponent(torch.where(amax > 0, amax / qmax, torch.ones_like(amax)))
    return _exact_pow2(exponent.clamp(-127, 127))


def _store_scale(scale: torch.Tensor, fmt: ScaleFormat) -> torch.Tensor:
    """e8m0: the biased exponent byte of each power of two 2^e, e in [-127, 127] (frexp gives e + 1)."""
    if fmt == "float32":
        return scale.to(torch.float32)
    return (torch.frexp(scale).exponent + 126).to(torch.uint8).view(torch.float8_e8m0fnu)


# ---------------------------------------------------------------------------------------------- FP8 block
def dequantize_fp8_block(
    weight: torch.Tensor, scale: torch.Tensor, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``[N, K]`` e4m3 weight times its ``[ceil(N/128), ceil(K/128)]`` block scales, in ``dtype``."""
    if weight.dtype != torch.float8_e4m3fn:
        raise TypeError(f"FP8 block weights must be float8_e4m3fn, got {weight.dtype}")
    if weight.dim() != 2 or tuple(scale.shape) != fp8_scale_shape(tuple(weight.shape)):
        raise ValueError(
            f"FP8 weight {list(weight.shape)} needs block scales {list(fp8_scale_shape(tuple(weight.shape)))}"
            f", got {list(scale.shape)}"
        )
    rows, cols = weight.shape
    out = weight.to(torch.float32)
    column_scales = decode_scales(scale).repeat_interleave(FP8_BLOCK, dim=1)[:, :cols]
    full_blocks = rows // FP8_BLOCK
    if full_blocks:
        head = out[: full_blocks * FP8_BLOCK].view(full_blocks, FP8_BLOCK, cols)
        head.mul_(column_scales[:full_blocks, None, :])
    if rows % FP8_BLOCK:
        out[full_blocks * FP8_BLOCK :].mul_(column_scales[full_blocks])
    return out if dtype == torch.float32 else out.to(dtype)


def quantize_fp8_block(
    weight: torch.Tensor, *, scale_format: ScaleFormat = "e8m0"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, block scale) of a 2-D weight; ragged edge blocks are allowed, as in the official code."""
    if weight.dim() != 2:
        raise ValueError(f"FP8 block quantisation needs a 2-D weight, got shape {list(weight.shape)}")
    rows, cols = weight.shape
    n_r, n_c = fp8_scale_shape((rows, cols))
    w = weight.detach().to(torch.float32)
    if (n_r * FP8_BLOCK, n_c * FP8_BLOCK) != (rows, cols):
        w = F.pad(w, (0, n_c * FP8_BLOCK - cols, 0, n_r * FP8_BLOCK - rows))
    blocks = w.reshape(n_r, FP8_BLOCK, n_c, FP8_BLOCK)
    scale = _block_scale(blocks.abs().amax(dim=(1, 3)), FP8_E4M3_MAX, scale_format)
    scaled = (blocks / scale[:, None, :, None]).clamp_(-FP8_E4M3_MAX, FP8_E4M3_MAX)
    q = scaled.view(n_r * FP8_BLOCK, n_c * FP8_BLOCK)[:rows, :cols].to(torch.float8_e4m3fn).contiguous()
    return q, _store_scale(scale, scale_format)


# ---------------------------------------------------------------------------------------------- MXFP4
def _e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """float32 value of each e2m1 code (0..15): bit 3 the sign, then 2 exponent bits and 1 mantissa bit."""
    exponent = (codes >> 1) & 3
    mantissa = (codes & 1).to(torch.float32)
    power = (1 << (exponent - 1).clamp(min=0)).to(torch.float32)  # 2^(e-1) for the normal codes
    value = torch.where(exponent == 0, mantissa * 0.5, (1 + mantissa * 0.5) * power)
    return torch.where(codes >= 8, -value, value)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """Two e2m1 codes per byte → float32 values, the last dimension doubled (low nibble first).
    (The `[256, 2]` byte table is built on the tensor's device: no host-to-device copy.)"""
    if packed.dtype not in FP4_STORAGE_DTYPES:
        raise TypeError(f"packed FP4 must be stored as one of {FP4_STORAGE_DTYPES}, got {packed.dtype}")
    byte = torch.arange(256, device=packed.device)
    table = torch.stack((_e2m1_values(byte & 0xF), _e2m1_values(byte >> 4)), dim=-1)
    as_bytes = packed.contiguous().view(torch.uint8).flatten().to(torch.int32)
    return table.index_select(0, as_bytes).view(*packed.shape[:-1], packed.shape[-1] * 2)


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes (0..15, last dimension even) → bytes with element 2j in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"e2m1 packing needs an even last dimension, got {list(codes.shape)}")
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)


def encode_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round finite float32 values to e2m1 codes (nearest, ties to even mantissa; |x| > 6 gives ±6), as
    uint8. The grid steps by 0.5 below 2, by 1 below 4 and by 2 up to 6, so each range is one exact
    scaling and a round-half-to-even (the code's parity is the mantissa bit)."""
    magnitude = x.abs().clamp(max=FP4_E2M1_MAX)
    index = torch.where(
        magnitude < 2,
        torch.round(magnitude * 2),  # codes 0..4: 0, 0.5, 1, 1.5, 2
        torch.where(magnitude < 4, torch.round(magnitude) + 2, torch.round(magnitude / 2) + 4),
    ).to(torch.int64)
    sign = ((x < 0) & (index > 0)).to(torch.int64) << 3
    return (index | sign).to(torch.uint8)


def dequantize_mxfp4(
    packed: torch.Tensor, scale: torch.Tensor, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``[N, K/2]`` packed e2m1 weight times its ``[N, K/32]`` scales → ``[N, K]`` in ``dtype``."""
    if packed.dim() != 2:
        raise ValueError(f"MXFP4 weights must be 2-D, got shape {list(packed.shape)}")
    rows, cols = packed.shape[0], packed.shape[1] * 2
    if cols % FP4_BLOCK or tuple(scale.shape) != (rows, cols // FP4_BLOCK):
        raise ValueError(
            f"MXFP4 weight [{rows}, {cols}] (packed {list(packed.shape)}) needs scales "
            f"[{rows}, {cols // FP4_BLOCK}], got {list(scale.shape)}"
        )
    values = unpack_e2m1(packed).view(rows, cols // FP4_BLOCK, FP4_BLOCK)
    values.mul_(decode_scales(scale)[..., None])
    out = values.view(rows, cols)
    return out if dtype == torch.float32 else out.to(dtype)


def quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed int8 ``[N, K/2]``, e8m0 scales ``[N, K/32]``) of a 2-D weight whose K is a multiple of 32.

    The scale of a block is the smallest power of two that maps its max |value| into [0, 6], so no value
    is clipped; each element then rounds to the nearest e2m1 value.
    """
    if weight.dim() != 2 or weight.shape[1] % FP4_BLOCK:
        raise ValueError(f"MXFP4 needs a 2-D weight with K % {FP4_BLOCK} == 0, got {list(weight.shape)}")
    rows, cols = weight.shape
    blocks = weight.detach().to(torch.float32).view(rows, cols // FP4_BLOCK, FP4_BLOCK)
    scale = _block_scale(blocks.abs().amax(dim=-1), FP4_E2M1_MAX, "e8m0")
    codes = encode_e2m1(blocks / scale[..., None]).view(rows, cols)
    return pack_e2m1(codes).view(torch.int8), _store_scale(scale, "e8m0")
