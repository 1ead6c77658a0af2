"""`Fp8BlockLinear`: a bias-free linear whose weight lives on the device in the checkpoint's FP8 block format.

It holds two buffers under the official names, `weight` (`float8_e4m3fn` `[out, in]`) and `scale`
(`[ceil(out/128), ceil(in/128)]`, `float8_e8m0fnu` for official V4 checkpoints or float32 for V3-style
ones), so `layers.0.attn.wq_a.weight` / `.scale` load by name, and runs `kernels/fp8_linear.py` on the
path named by its `kernels` attribute. The scales stay as stored: the Triton kernel decodes e8m0 bytes
itself, so no converted copy is kept.

Moving the module (`.to(device)`, `.cuda()`, `to_empty`) moves both buffers; casting it (`.to(bfloat16)`,
`.half()`, the model's `.to(dtype)`) leaves their stored formats alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepscout.model_runtime.v4.kernels.fp8_linear import fp8_linear
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.weights.quant import (
    QuantizedTensor,
    ScaleFormat,
    fp8_scale_shape,
    quantize_fp8_block,
)

_SCALE_DTYPES: dict[ScaleFormat, torch.dtype] = {"e8m0": torch.float8_e8m0fnu, "float32": torch.float32}


class Fp8BlockLinear(nn.Module):
    """`y = x Wᵀ` with `W = weight * scale` per 128×128 block; `x` bf16/float32 `[..., in]` → `[..., out]`."""

    weight: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scale_format: ScaleFormat = "e8m0",
        *,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if scale_format not in _SCALE_DTYPES:
            raise ValueError(f"scale_format must be one of {list(_SCALE_DTYPES)}, got {scale_format!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.scale_format: ScaleFormat = scale_format
        self.kernels: KernelImpl = "reference"
        weight = torch.zeros(out_features, in_features, dtype=torch.float8_e4m3fn, device=device)
        ones = torch.ones(fp8_scale_shape((out_features, in_features)), device=device)
        self.register_buffer("weight", weight)
        self.register_buffer("scale", ones.to(_SCALE_DTYPES[scale_format]))

    @classmethod
    def from_quantized(cls, quantized: QuantizedTensor) -> Fp8BlockLinear:
        """The layer of a stored FP8 weight, on its device, holding its tensors (scales stored as uint8 e8m0
        bytes are viewed as `float8_e8m0fnu`, bfloat16 ones widened to float32 — both exact)."""
        if quantized.format != "fp8_block" or len(quantized.shape) != 2:
            raise ValueError(
                f"Fp8BlockLinear needs a 2-D fp8_block weight, got {quantized.format} {quantized.shape}"
            )
        scale = quantized.scale
        if scale.dtype == torch.uint8:
            scale = scale.view(torch.float8_e8m0fnu)
        elif scale.dtype == torch.bfloat16:
            scale = scale.to(torch.float32)
        scale_format: ScaleFormat = "e8m0" if scale.dtype == torch.float8_e8m0fnu else "float32"
        out_features, in_features = quantized.shape
        layer = cls(in_features, out_features, scale_format, device="meta")
        layer.set_quantized(quantized.data, scale)
        return layer

    @classmethod
    def random(
        cls,
        in_features: int,
        out_features: int,
        *,
        generator: torch.Generator,
        std: float | None = None,
        scale_format: ScaleFormat = "e8m0",
    ) -> Fp8BlockLinear:
        """Normal weights times `std` (default `in_features ** -0.5`), drawn and quantised on the generator's
        device (only this layer's float32 weight is ever materialised)."""
        device = generator.device
        value = torch.randn(out_features, in_features, generator=generator, device=device)
        weight, scale = quantize_fp8_block(
            value.mul_(in_features**-0.5 if std is None else std), scale_format=scale_format
        )
        layer = cls(in_features, out_features, scale_format, device="meta")
        layer.set_quantized(weight, scale)
        return layer

    def set_quantized(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        """Hold `weight` and `scale` (no copy) in place of the current buffers; same shapes and dtypes."""
        for name, new in (("weight", weight), ("scale", scale)):
            old = self._buffers[name]
            assert old is not None
            if new.shape != old.shape or new.dtype != old.dtype:
                want, got = f"{old.dtype} {list(old.shape)}", f"{new.dtype} {list(new.shape)}"
                raise ValueError(f"Fp8BlockLinear.{name} must be {want}, got {got}")
            self._buffers[name] = new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.scale, impl=self.kernels)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Fp8BlockLinear:
        """Apply `fn` where it keeps the stored dtype (moves, `to_empty`); where it would convert, only move
        to the device `fn` targets (learnt from an empty probe)."""
        for name, tensor in self._buffers.items():
            if tensor is None:
                continue
            probe = fn(tensor.new_empty(0))
            self._buffers[name] = fn(tensor) if probe.dtype == tensor.dtype else tensor.to(probe.device)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale_format}"
