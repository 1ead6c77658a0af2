"""The decode step's input projections (`decode_step._project_input`): in the shipped format the FP8 `wq_a`
and `wkv` join the plain projections in the one `multi_linear` launch at decode row counts, and every
output equals the module's own product (its FP8 or `F.linear` reference) up to summation order.

Tolerance as in `test_multi_linear.py`: 1e-5 of the largest output for float32, 1e-2 for bfloat16."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from deepscout.model_runtime.v4.kernels import multi_linear as multi_linear_module
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.multi_linear import FUSED_MAX_ROWS, Fp8Weight, LinearWeight
from deepscout.model_runtime.v4.model import decode_step
from deepscout.model_runtime.v4.model.attention import Attention
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, tiny

ARGS = tiny((LayerKind.CSA, LayerKind.HCA), o_lora_rank=128, sliding_window=16)
_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[LinearWeight]]:
    """The weight lists `_project_input` hands `multi_linear`, recorded."""
    calls: list[list[LinearWeight]] = []

    def recording(
        x: torch.Tensor, weights: Sequence[LinearWeight], *, impl: KernelImpl
    ) -> list[torch.Tensor]:
        calls.append(list(weights))
        return multi_linear_module.multi_linear(x, weights, impl=impl)

    monkeypatch.setattr(decode_step, "multi_linear", recording)
    return calls


def _attention(model: DeepseekV4Model, layer: int) -> Attention:
    attn = model.layers[layer].attn
    assert isinstance(attn, Attention) and isinstance(attn.wq_a, Fp8BlockLinear)
    assert isinstance(attn.wkv, Fp8BlockLinear)
    return attn


def _holds(weight: LinearWeight, layer: nn.Module) -> bool:
    """Whether `weight` is the FP8 layer's own weight and scales (no copy)."""
    return isinstance(weight, Fp8Weight) and weight.weight is layer.weight and weight.scale is layer.scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, FUSED_MAX_ROWS, FUSED_MAX_ROWS + 1])
def test_shipped_projections_run_as_one_launch(
    device: torch.device, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, rows: int
) -> None:
    model = DeepseekV4Model.random(ARGS, seed=1, weights="shipped").to(device=device, dtype=dtype).eval()
    calls = _fused_calls(monkeypatch)
    gen = torch.Generator().manual_seed(rows)
    for index, n_weights in enumerate((7, 4)):  # CSA, HCA
        attn = _attention(model, index)
        x = torch.randn(rows, ARGS.hidden_size, generator=gen).to(device=device, dtype=dtype)
        model.kernels = "reference"
        with torch.no_grad():
            expected: dict[nn.Module, torch.Tensor] = decode_step._project_input(attn, x, "reference")
            model.kernels = "triton"
            projected = decode_step._project_input(attn, x, "triton")
        assert projected.keys() == expected.keys() and len(projected) == n_weights
        for layer, want in expected.items():
            got = projected[layer]
            assert got.dtype == dtype and got.shape == want.shape
            assert float((got - want).abs().max() / want.abs().max()) < _TOLERANCE[dtype]
        if rows <= FUSED_MAX_ROWS:  # every projection in one launch, the FP8 ones as stored
            fused = calls.pop()
            assert len(fused) == n_weights
            assert _holds(fused[0], attn.wq_a) and _holds(fused[1], attn.wkv)
            assert not any(isinstance(w, Fp8Weight) for w in fused[2:])
    assert not calls  # above FUSED_MAX_ROWS (and under the references) each module runs on its own


def test_fp8_layers_on_their_reference_stay_apart(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `Fp8BlockLinear` set to its reference kernels runs on its own; the plain rest still fuse."""
    model = DeepseekV4Model.random(ARGS, seed=1, weights="shipped").to(device).eval()
    model.kernels = "triton"
    attn = _attention(model, 0)
    attn.wq_a.kernels = "reference"
    calls = _fused_calls(monkeypatch)
    with torch.no_grad():
        decode_step._project_input(attn, torch.randn(1, ARGS.hidden_size, device=device), "triton")
    (fused,) = calls
    assert len(fused) == 6 and _holds(fused[0], attn.wkv)
