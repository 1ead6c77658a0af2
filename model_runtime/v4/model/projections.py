"""The projections official V4 checkpoints store in FP8, built in the model's `WeightFormat`.

"dense" builds a bias-free `nn.Linear` (its weight in the model's dtype); "shipped" an `Fp8BlockLinear`
holding the checkpoint's e4m3 bytes and e8m0 block scales. Both are called the same way (`layer(x)`, the
output in `x`'s dtype). What reads a part of a projection's weight goes through the functions here, which
take either: V4's grouped output projection `wo_a` (`grouped_projection`), and a rank's share of the output
rows (`project_rows`, `fp8_rows`) or of the input columns (`project_columns`) under parallelism — views of
the weight, no copies; a share is an equal contiguous one (`equal_share`), and an FP8 share must lie on
128-wide block bounds (`on_block_bounds`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepscout.model_runtime.v4.kernels.fp8_linear import fp8_linear
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model_config import WeightFormat
from deepscout.model_runtime.v4.weights.quant import FP8_BLOCK

Projection = nn.Linear | Fp8BlockLinear


def projection(in_features: int, out_features: int, weights: WeightFormat) -> Projection:
    """A bias-free `[out, in]` projection in `weights`' format (zeros/uninitialised: filled by a load)."""
    if weights == "shipped":
        return Fp8BlockLinear(in_features, out_features)
    return nn.Linear(in_features, out_features, bias=False)


def grouped_projection(
    x: torch.Tensor, layer: Projection, groups: int, rows: slice | None = None
) -> torch.Tensor:
    """`x` `[n, G, K]` → `[n, G, N/G]`: group g through rows `g·N/G … (g+1)·N/G` of the layer's weight
    (of its rows `rows` alone, when given: G consecutive groups of the layer's)."""
    rows = rows or slice(0, layer.weight.shape[0])
    if isinstance(layer, Fp8BlockLinear):
        weight, scale = fp8_rows(layer, rows)
        return fp8_linear(x, weight, scale, impl=layer.kernels, groups=groups)
    weight = layer.weight[rows].view(groups, -1, x.shape[-1])
    return torch.einsum("ngi,gri->ngr", x, weight)


def project_rows(x: torch.Tensor, layer: Projection, rows: slice) -> torch.Tensor:
    """`x` through the output rows `rows` of `layer` alone."""
    if isinstance(layer, Fp8BlockLinear):
        return fp8_linear(x, *fp8_rows(layer, rows), impl=layer.kernels)
    return F.linear(x, layer.weight[rows])


def project_columns(x: torch.Tensor, layer: Projection, columns: slice) -> torch.Tensor:
    """The part of `layer`'s output its input columns `columns` make, from `x` holding those inputs (the
    parts of disjoint columns sum to the output)."""
    if isinstance(layer, Fp8BlockLinear):
        scale = layer.scale[:, _blocks(columns)]
        return fp8_linear(x, layer.weight[:, columns], scale, impl=layer.kernels)
    return F.linear(x, layer.weight[:, columns])


def fp8_rows(layer: Fp8BlockLinear, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, block scales) views of an FP8 layer's output rows `rows`."""
    return layer.weight[rows], layer.scale[_blocks(rows)]


def equal_share(count: int, *, rank: int, world_size: int) -> slice | None:
    """Rank `rank`'s equal contiguous share of `count` things (heads, units, rows) over `world_size` ranks;
    None when they do not split evenly."""
    if count % world_size:
        return None
    per_rank = count // world_size
    return slice(rank * per_rank, (rank + 1) * per_rank)


def on_block_bounds(layer: Projection, part: slice) -> bool:
    """Whether `part` (rows or columns) of `layer` can be read on its own: any part of a plain weight, an
    FP8 one's only on 128-wide block bounds."""
    return not isinstance(layer, Fp8BlockLinear) or (
        part.start % FP8_BLOCK == 0 and part.stop % FP8_BLOCK == 0
    )


def _blocks(part: slice) -> slice:
    """The FP8 scale blocks covering `part` (on block bounds: exactly its own)."""
    return slice(part.start // FP8_BLOCK, -(-part.stop // FP8_BLOCK))
