"""Random V4 weights for tests and benchmarks, with healthy magnitudes for every kind of parameter.

Unlike transformers' init, nothing is left at zero (hash tables, attention sinks, compressor position
biases, router biases), so every code path is exercised. Values depend only on the generator's seed and
device type, and on the order of `named_parameters()` (the official checkpoint order).
"""

from __future__ import annotations

import torch
from torch import nn

from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model.moe import Gate, RoutedExperts
from deepscout.model_runtime.v4.model_config import ModelArgs
from deepscout.model_runtime.v4.weights.quant import quantize_fp8_block, quantize_mxfp4

_RESIDUAL_OUTPUTS = ("attn.wo_b.weight", "w2.weight")
"""Projections into the residual stream, scaled down like GPT-2's by 1/sqrt(2 * number of blocks)."""


def fill_random_(model: nn.Module, args: ModelArgs, gen: torch.Generator) -> None:
    """Overwrite every parameter of a freshly built V4 `model` and its hash-routing tables, in place; a
    model holding shipped weights gets its FP8 projections and MXFP4 experts drawn as float32 and quantised
    on the generator's device, one projection (of one expert) at a time."""
    branch_scale = (2 * (args.num_hidden_layers + args.num_nextn_predict_layers)) ** -0.5
    with torch.no_grad():
        for name, param in model.named_parameters():
            value = _random_like(name, param, gen)
            if name.endswith(_RESIDUAL_OUTPUTS):
                value = value * branch_scale
            param.copy_(value)
        for name, module in model.named_modules():
            residual = f"{name}.weight".endswith(_RESIDUAL_OUTPUTS)
            if isinstance(module, Fp8BlockLinear):
                value = _linear_weight(module.out_features, module.in_features, gen, residual, branch_scale)
                module.set_quantized(*quantize_fp8_block(value, scale_format=module.scale_format))
            elif isinstance(module, RoutedExperts) and isinstance(module.stacks, Mxfp4ExpertStacks):
                _fill_mxfp4_(module.stacks, gen, branch_scale)
            elif isinstance(module, Gate) and module.hash_routed:
                table = torch.rand(args.vocab_size, args.n_routed_experts, generator=gen, device=gen.device)
                table = table.argsort(dim=-1)
                module.tid2eid.copy_(table[:, : args.num_experts_per_tok])


def _linear_weight(
    rows: int, cols: int, gen: torch.Generator, residual: bool, branch_scale: float
) -> torch.Tensor:
    """A float32 `[rows, cols]` projection weight, std `cols ** -0.5` (times `branch_scale` into the
    residual stream)."""
    std = cols**-0.5 * (branch_scale if residual else 1.0)
    return torch.randn(rows, cols, generator=gen, device=gen.device).mul_(std)


def _fill_mxfp4_(stacks: Mxfp4ExpertStacks, gen: torch.Generator, branch_scale: float) -> None:
    """Every expert's projections drawn and written into the stacks as MXFP4 bytes (w2 into the residual)."""
    for expert in range(stacks.n_experts):
        for projection in ("w1", "w2", "w3"):
            packed, scales = (
                getattr(stacks, projection)[expert],
                getattr(stacks, f"{projection}_scale")[expert],
            )
            value = _linear_weight(
                packed.shape[0], 2 * packed.shape[1], gen, projection == "w2", branch_scale
            )
            data, scale = quantize_mxfp4(value)
            packed.copy_(data.view(torch.uint8))
            scales.copy_(scale.view(torch.uint8))


def _random_like(name: str, param: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random values with healthy magnitudes for each kind of parameter."""
    shape = param.shape
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith(("attn_sink", "ape")):
        return torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith("gate.bias"):
        return 0.1 * torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith(("_base",)):
        return 0.5 * torch.randn(shape, generator=gen, device=gen.device)
    if name.endswith("_scale"):
        return 0.5 + torch.rand(shape, generator=gen, device=gen.device)
    if name == "embed.weight":
        return torch.randn(shape, generator=gen, device=gen.device)
    fan_in = shape[-1]
    return torch.randn(shape, generator=gen, device=gen.device) * fan_in**-0.5
