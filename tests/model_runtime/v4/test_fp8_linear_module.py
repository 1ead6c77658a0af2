"""`Fp8BlockLinear`: official buffer names, loading stored tensors, dtype casts that leave the FP8 format
alone, random construction in FP8, and both kernel paths."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.weights.quant import QuantizedTensor, dequantize_fp8_block, quantize_fp8_block


def _stored(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    value = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * k**-0.5
    return quantize_fp8_block(value)


def test_buffers_load_by_their_official_names() -> None:
    model = nn.Module()
    model.wq_a = Fp8BlockLinear(300, 200)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in model.state_dict().items()} == {
        "wq_a.weight": (torch.float8_e4m3fn, (200, 300)),
        "wq_a.scale": (torch.float8_e8m0fnu, (2, 3)),
    }
    weight, scale = _stored(200, 300)
    model.load_state_dict({"wq_a.weight": weight, "wq_a.scale": scale})
    assert torch.equal(model.wq_a.weight.view(torch.uint8), weight.view(torch.uint8))
    assert torch.equal(model.wq_a.scale.view(torch.uint8), scale.view(torch.uint8))
    assert Fp8BlockLinear(300, 200, "float32").scale.dtype == torch.float32


def test_from_quantized_holds_the_stored_tensors() -> None:
    weight, scale = _stored(256, 128)
    layer = Fp8BlockLinear.from_quantized(
        QuantizedTensor("fp8_block", weight, scale.view(torch.uint8), (256, 128))
    )
    assert layer.weight is weight and layer.scale.dtype == torch.float8_e8m0fnu
    assert layer.scale.data_ptr() == scale.data_ptr()
    v3 = Fp8BlockLinear.from_quantized(QuantizedTensor("fp8_block", weight, scale.float(), (256, 128)))
    assert v3.scale_format == "float32"
    x = torch.randn(3, 128)
    assert torch.equal(layer(x), v3(x))
    with pytest.raises(ValueError, match="fp8_block"):
        Fp8BlockLinear.from_quantized(QuantizedTensor("mxfp4", weight, scale, (256, 128)))


def test_dtype_casts_keep_the_stored_format() -> None:
    layer = Fp8BlockLinear(128, 128)
    layer.to(torch.bfloat16)
    layer.half()
    assert (layer.weight.dtype, layer.scale.dtype) == (torch.float8_e4m3fn, torch.float8_e8m0fnu)
    layer.to("meta", torch.float32)
    assert layer.weight.device.type == "meta" and layer.weight.dtype == torch.float8_e4m3fn


@pytest.mark.parametrize("fmt", ["e8m0", "float32"])
def test_random_layer_is_quantised_on_the_generator_device(fmt: str) -> None:
    """On the CUDA device when present, else the CPU (Triton's interpreter runs the fused path)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=device).manual_seed(0)
    layer = Fp8BlockLinear.random(300, 200, generator=gen, std=0.02, scale_format=fmt)  # type: ignore[arg-type]
    assert layer.weight.device.type == device.type and layer.weight.dtype == torch.float8_e4m3fn
    assert layer.scale_format == fmt
    std = float(dequantize_fp8_block(layer.weight, layer.scale).std())
    assert 0.018 < std < 0.022
    x = torch.randn(2, 7, 300, device=device).bfloat16()
    reference = layer(x)
    layer.kernels = "triton"
    fused = layer(x)
    assert fused.shape == (2, 7, 200) and fused.dtype == torch.bfloat16
    assert float((fused.float() - reference.float()).abs().max() / reference.float().abs().max()) < 1e-2
