"""The projections official V4 checkpoints store in FP8, built in the model's `WeightFormat`.

"dense" builds a bias-free `nn.Linear` (its weight in the model's dtype); "shipped" an `Fp8BlockLinear`
holding the checkpoint's e4m3 bytes and e8m0 block scales. Both are called the same way (`layer(x)`, the
output in `x`'s dtype); the one place that reads a projection's weight directly, V4's grouped output
projection `wo_a`, goes through `grouped_projection`, which takes either.
"""

from __future__ import annotations

import torch
from torch import nn

from deepscout.model_runtime.v4.kernels.fp8_linear import fp8_linear
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model_config import WeightFormat

Projection = nn.Linear | Fp8BlockLinear


def projection(in_features: int, out_features: int, weights: WeightFormat) -> Projection:
    """A bias-free `[out, in]` projection in `weights`' format (zeros/uninitialised: filled by a load)."""
    if weights == "shipped":
        return Fp8BlockLinear(in_features, out_features)
    return nn.Linear(in_features, out_features, bias=False)


def grouped_projection(x: torch.Tensor, layer: Projection, groups: int) -> torch.Tensor:
    """`x` `[n, G, K]` → `[n, G, N/G]`: group g through rows `g·N/G … (g+1)·N/G` of the layer's weight."""
    if isinstance(layer, Fp8BlockLinear):
        return fp8_linear(x, layer.weight, layer.scale, impl=layer.kernels, groups=groups)
    weight = layer.weight.view(groups, -1, x.shape[-1])
    return torch.einsum("ngi,gri->ngr", x, weight)
