"""Random V4 weights for tests and benchmarks, with healthy magnitudes for every kind of parameter.

Unlike transformers' init, nothing is left at zero (hash tables, attention sinks, compressor position
biases, router biases), so every code path is exercised. Values depend only on the generator's seed and
device type, and on the order of `named_parameters()` (the official checkpoint order).
"""

from __future__ import annotations

import torch
from torch import nn

from deepscout.model_runtime.v4.model.moe import Gate
from deepscout.model_runtime.v4.model_config import ModelArgs

_RESIDUAL_OUTPUTS = ("attn.wo_b.weight", "w2.weight")
"""Projections into the residual stream, scaled down like GPT-2's by 1/sqrt(2 * number of blocks)."""


def fill_random_(model: nn.Module, args: ModelArgs, gen: torch.Generator) -> None:
    """Overwrite every parameter of a freshly built V4 `model` and its hash-routing tables, in place."""
    branch_scale = (2 * (args.num_hidden_layers + args.num_nextn_predict_layers)) ** -0.5
    with torch.no_grad():
        for name, param in model.named_parameters():
            value = _random_like(name, param, gen)
            if name.endswith(_RESIDUAL_OUTPUTS):
                value = value * branch_scale
            param.copy_(value)
        for module in model.modules():
            if isinstance(module, Gate) and module.hash_routed:
                table = torch.rand(args.vocab_size, args.n_routed_experts, generator=gen, device=gen.device)
                table = table.argsort(dim=-1)
                module.tid2eid.copy_(table[:, : args.num_experts_per_tok])


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
