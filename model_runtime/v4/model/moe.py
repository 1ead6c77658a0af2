"""The V4 feed-forward: a mixture of SwiGLU experts behind a hash or score router, plus one shared expert.

The first layers route by a frozen token → experts table (`tid2eid`, "hash MoE"); the others by top-k of
the router's scores plus a per-expert bias. Routing decisions are made in float32. The routed experts keep
their official parameter names, but their weights live in one stacked tensor per projection, which the
grouped kernel (`kernels/grouped_moe.py`) reads in one launch for all experts of a step. With
`weights="shipped"` (`WeightFormat`) the routed experts stay MXFP4 (packed bytes and e8m0 scale bytes,
`experts.{e}.w1.weight` / `.scale`) and the shared expert FP8 (`Fp8BlockLinear`), as checkpoints store them.

Parallelism (`MoE.shard`, `MoeSharding`): a rank keeps either an equal share of every routed expert's
intermediate units (`RoutedExperts.unit_share`: rows of w1/w3, columns of w2, so every rank reads the same
bytes whatever the routing) or its `ExpertSlice` of whole experts (its modules numbered from 0,
`RoutedExperts.ids` naming the global ids), runs the pairs routed to what it holds, adds its share of the
shared expert (`ExpertParallelism.shared_units`) and sums the ranks' partial outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any, Literal

import torch
from torch import nn

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice, ExpertStacks
from deepscout.model_runtime.v4.kernels.fp8_linear import fp8_swiglu
from deepscout.model_runtime.v4.kernels.grouped_moe import grouped_moe, swiglu_activation
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks
from deepscout.model_runtime.v4.kernels.route_experts import route_experts
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model.projections import (
    equal_share,
    fp8_rows,
    on_block_bounds,
    project_columns,
    project_rows,
    projection,
)
from deepscout.model_runtime.v4.model.side_streams import side_chain
from deepscout.model_runtime.v4.model_config import ModelArgs, WeightFormat
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK


class Expert(nn.Module):
    """SwiGLU expert with clamped pre-activations: w2(silu(min(w1 x, l)) * clamp(w3 x, -l, l)), its
    projections built in the `weights` format (the shared expert's are FP8 in official checkpoints)."""

    def __init__(
        self, dim: int, inter_dim: int, swiglu_limit: float, weights: WeightFormat = "dense"
    ) -> None:
        super().__init__()
        self.limit = swiglu_limit
        self.w1 = projection(dim, inter_dim, weights)
        self.w2 = projection(inter_dim, dim, weights)
        self.w3 = projection(dim, inter_dim, weights)

    def forward(
        self, x: torch.Tensor, kernels: KernelImpl = "reference", units: slice | None = None
    ) -> torch.Tensor:
        """The expert's output; with `units` only the part through those intermediate units (rows of w1
        and w3, columns of w2: views, nothing copied), so parts over disjoint units sum to the output. FP8
        projections need `units` on 128-wide block bounds (`MoE.shard` keeps them so)."""
        w1, w2, w3 = self.w1, self.w2, self.w3
        units = units or slice(0, w1.weight.shape[0])
        if isinstance(w1, Fp8BlockLinear) and isinstance(w3, Fp8BlockLinear):  # both read in one launch
            h = fp8_swiglu(x, fp8_rows(w1, units), fp8_rows(w3, units), self.limit, impl=kernels)
        else:
            h = swiglu_activation(
                project_rows(x, w1, units), project_rows(x, w3, units), self.limit, impl=kernels
            )
        return project_columns(h, w2, units)


class Mxfp4Projection(nn.Module):
    """One routed expert's MXFP4 projection under the official names: `weight` the packed e2m1 bytes
    `[N, K/2]` and `scale` the e8m0 bytes `[N, K/32]`, both uint8 views into the layer's stacks."""

    weight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)


class Mxfp4Expert(nn.Module):
    """A routed expert kept in MXFP4: its three projections' packed bytes and scales (run by the layer's
    grouped kernel, never on its own)."""

    def __init__(self, stacks: Mxfp4ExpertStacks, index: int) -> None:
        super().__init__()
        for name in ("w1", "w2", "w3"):
            packed, scale = getattr(stacks, name)[index], getattr(stacks, f"{name}_scale")[index]
            self.add_module(name, Mxfp4Projection(packed, scale))


_STACK_FIELDS = {
    "w1": ("w1", "weight"),
    "w2": ("w2", "weight"),
    "w3": ("w3", "weight"),
    "w1_scale": ("w1", "scale"),
    "w2_scale": ("w2", "scale"),
    "w3_scale": ("w3", "scale"),
}
"""Stack field → (expert projection, tensor name) of the expert tensors it holds, one row per expert."""


def mxfp4_stacks(n_experts: int, dim: int, inter_dim: int) -> Mxfp4ExpertStacks:
    """Zero MXFP4 stacks (packed bytes and scale bytes in uint8) on the current default device."""

    def stack(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        packed = torch.zeros(n_experts, rows, cols // 2, dtype=torch.uint8)
        return packed, torch.zeros(n_experts, rows, cols // FP4_BLOCK, dtype=torch.uint8)

    (w1, s1), (w2, s2), (w3, s3) = stack(inter_dim, dim), stack(dim, inter_dim), stack(inter_dim, dim)
    return Mxfp4ExpertStacks(w1, w2, w3, s1, s2, s3)


class RoutedExperts(nn.ModuleList):
    """The routed experts under their official names (`experts.{e}.w1.weight`, ...), each expert's tensors
    views into one stacked tensor per projection (`stacks`): "dense" float `ExpertStacks` behind per-expert
    `nn.Linear`s, or "shipped" `Mxfp4ExpertStacks` behind per-expert packed `weight` and `scale` buffers
    (uint8, so casts leave them alone).

    The stacks are built once and the views kept through whatever moves or converts the weights:
    `.to()`/`.cuda()`/`.half()`/`to_empty()` convert each stack once (`_apply`); `load_state_dict` and
    in-place copies write through the views; a deep copy, an unpickling or a `load_state_dict(assign=True)`
    re-stacks (one copy).

    `ids` are the global expert ids held (all of them, unless `sliced` for expert parallelism): module `i`
    is expert `ids.start + i`; `units` the intermediate units of each expert held (all of them, unless
    `unit_share`d), counted in the whole expert's."""

    stacks: ExpertStacks | Mxfp4ExpertStacks

    def __init__(
        self, n_experts: int, dim: int, inter_dim: int, swiglu_limit: float, weights: WeightFormat = "dense"
    ) -> None:
        if weights == "shipped":  # the experts' buffers are views into the stacks from the start
            packed = mxfp4_stacks(n_experts, dim, inter_dim)
            super().__init__(Mxfp4Expert(packed, e) for e in range(n_experts))
            self.stacks = packed
        else:
            super().__init__(Expert(dim, inter_dim, swiglu_limit) for _ in range(n_experts))
            self.stacks = self._stack()
            self._point_experts()
        self.limit = swiglu_limit
        self.ids = ExpertSlice(0, n_experts)
        self.units = slice(0, inter_dim)
        self.register_load_state_dict_post_hook(_restack_after_load)

    def sliced(self, ids: ExpertSlice) -> RoutedExperts:
        """Only the experts `ids` (counted in those held here: global ids when all are): their rows of the
        stacks copied (on the meta device: nothing allocated), the experts' tensors views into them."""
        if ids.start < 0 or ids.stop > len(self) or ids.count < 1:
            raise ValueError(f"experts [{ids.start}, {ids.stop}) are not within the {len(self)} held")
        _, inter, _ = self.stacks.w1.shape
        kept = self._kept(ids.count, inter, lambda stack, _field: stack[ids.start : ids.stop])
        kept.ids = ExpertSlice(self.ids.start + ids.start, ids.count)
        kept.units = self.units
        return kept

    def unit_share(self, units: slice) -> RoutedExperts:
        """Every expert's intermediate `units` only (counted in those held here): their rows of w1/w3 and
        columns of w2 copied (MXFP4 on whole 32-wide scale blocks; on the meta device nothing is allocated),
        the experts' tensors views into them. The parts over disjoint units sum to the layer's output."""
        _, inter, _ = self.stacks.w1.shape
        block = FP4_BLOCK if self._packed() else 1
        if not 0 <= units.start < units.stop <= inter or units.start % block or units.stop % block:
            raise ValueError(
                f"units [{units.start}, {units.stop}) are not within the {inter} held on {block}-wide bounds"
            )
        kept = self._kept(len(self), units.stop - units.start, partial(_unit_part, units=units, inter=inter))
        kept.ids = self.ids
        kept.units = slice(self.units.start + units.start, self.units.start + units.stop)
        return kept

    def _kept(
        self, n_experts: int, inter: int, part: Callable[[torch.Tensor, str], torch.Tensor]
    ) -> RoutedExperts:
        """Experts of this layer holding `part(stack, field)` of each stack (copied), the experts' tensors
        views into them."""
        packed_hidden = self.stacks.w1.shape[2]
        hidden = packed_hidden * 2 if self._packed() else packed_hidden
        weights: WeightFormat = "shipped" if self._packed() else "dense"
        with torch.device("meta"):
            kept = RoutedExperts(n_experts, hidden, inter, self.limit, weights)
        with torch.no_grad():
            stacks = {f: part(getattr(self.stacks, f), f).clone() for f in self._fields()}
            kept.stacks = type(self.stacks)(**stacks)
        kept._point_experts()
        return kept

    def _fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(Mxfp4ExpertStacks if self._packed() else ExpertStacks))

    def _packed(self) -> bool:
        return isinstance(self[0], Mxfp4Expert)

    def _tensors(self, field: str) -> list[torch.Tensor]:
        projection_name, tensor = _STACK_FIELDS[field]
        return [getattr(getattr(expert, projection_name), tensor) for expert in self]

    def _stack(self) -> ExpertStacks | Mxfp4ExpertStacks:
        with torch.no_grad():
            stacked = {field: torch.stack(self._tensors(field)) for field in self._fields()}
        return Mxfp4ExpertStacks(**stacked) if self._packed() else ExpertStacks(**stacked)

    def _point_experts(self) -> None:
        """Make every expert's tensors views into the stacks."""
        for field in self._fields():
            projection_name, tensor = _STACK_FIELDS[field]
            stack = getattr(self.stacks, field)
            for index, expert in enumerate(self):
                owner = getattr(expert, projection_name)
                old = getattr(owner, tensor)
                if isinstance(old, nn.Parameter):
                    setattr(owner, tensor, nn.Parameter(stack[index], requires_grad=old.requires_grad))
                else:
                    setattr(owner, tensor, stack[index])

    def set_stacks(self, stacks: ExpertStacks | Mxfp4ExpertStacks) -> None:
        """Hold `stacks` (no copy) in place of the current ones: same kind, shapes and dtypes."""
        if type(stacks) is not type(self.stacks):
            raise TypeError(f"stacks must be {type(self.stacks).__name__}, got {type(stacks).__name__}")
        for field in self._fields():
            old, new = getattr(self.stacks, field), getattr(stacks, field)
            if (new.shape, new.dtype) != (old.shape, old.dtype):
                want, got = f"{old.dtype} {list(old.shape)}", f"{new.dtype} {list(new.shape)}"
                raise ValueError(f"stacks.{field} must be {want}, got {got}")
        self.stacks = stacks
        self._point_experts()

    def is_stacked(self) -> bool:
        """Whether every expert's tensors are still views into the stacks."""
        for field in self._fields():
            stack = getattr(self.stacks, field)
            step = stack[0].numel() * stack.element_size()
            for index, tensor in enumerate(self._tensors(field)):
                if tensor.device != stack.device or tensor.data_ptr() != stack.data_ptr() + index * step:
                    return False
        return True

    def ensure_stacked(self) -> None:
        """Re-stack (one copy per stacked tensor) if something replaced the experts' tensors."""
        if not self.is_stacked():
            self.stacks = self._stack()
            self._point_experts()

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> RoutedExperts:
        with torch.no_grad():
            self.stacks = self.stacks.map(fn)
        self._point_experts()
        return self

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.ensure_stacked()


class Gate(nn.Module):
    """Router. Hash layers pick experts by the frozen `tid2eid[token]` table; others by top-k of
    score + bias. Either way the weights are the picked experts' scores, normalised, times the route scale.

    `arrivals` is the counter `route_experts`' single Triton launch counts its programs with (see
    `kernels/route_experts.py`): not saved, zero between launches. Whatever (re)places it leaves it zero:
    `_apply` zeroes it (`to_empty`, `.to(device)`), and the loader allocates unsaved buffers zeroed."""

    tid2eid: torch.Tensor
    arrivals: torch.Tensor

    def __init__(self, args: ModelArgs, hash_routed: bool) -> None:
        super().__init__()
        self.hash_routed = hash_routed
        self.top_k = args.num_experts_per_tok
        self.score_func = args.scoring_func
        self.route_scale = args.routed_scaling_factor
        self.weight = nn.Parameter(torch.zeros(args.n_routed_experts, args.hidden_size))
        self.bias: nn.Parameter | None = None
        if hash_routed:
            self.register_buffer(
                "tid2eid", torch.zeros(args.vocab_size, self.top_k, dtype=torch.long), persistent=True
            )
        else:
            self.bias = nn.Parameter(torch.zeros(args.n_routed_experts, dtype=torch.float32))
        self.register_buffer("arrivals", torch.zeros(1, dtype=torch.int32), persistent=False)

    def forward(
        self, x: torch.Tensor, token_ids: torch.Tensor, kernels: KernelImpl = "reference"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (weights `[n, k]`, expert indices `[n, k]`)."""
        return route_experts(
            x,
            self.weight,  # float32 (a cast model keeps it so) or the model's dtype
            score_func=self.score_func,
            top_k=self.top_k,
            scale=self.route_scale,
            bias=None if self.hash_routed else self.bias,
            hashed=self.tid2eid[token_ids] if self.hash_routed else None,
            arrivals=self.arrivals,
            impl=kernels,
        )

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Gate:
        super()._apply(fn, recurse)
        with torch.no_grad():
            self.arrivals.zero_()
        return self


def _unit_part(stack: torch.Tensor, field: str, *, units: slice, inter: int) -> torch.Tensor:
    """The intermediate `units` (of `inter`) of one stack: rows of w1/w3 and their scales, columns of w2
    and its scales, in the stack's own columns (a packed byte holds two weights, a scale byte 32)."""
    if field.startswith("w2"):
        per_column = inter // stack.shape[2]
        return stack[:, :, units.start // per_column : units.stop // per_column]
    return stack[:, units]


def _restack_after_load(module: nn.Module, _incompatible_keys: object) -> None:
    assert isinstance(module, RoutedExperts)
    module.ensure_stacked()


MoeSharding = Literal["units", "experts"]
"""How ranks share a MoE layer's routed experts: "units", every rank an equal share of every expert's
intermediate units (each reads the same bytes a step, whatever the routing); "experts", every rank an equal
slice of whole experts (a step waits for the rank that most of its tokens' experts are on)."""


@dataclass(frozen=True)
class ExpertParallelism:
    """One rank's part in a MoE layer: the routed experts it holds (`experts`) and, when the ranks share
    every expert's units, the intermediate units of each it holds (`routed_units`; None: whole experts), its
    place (`rank` of `world_size`) for its share of the shared expert, and `reduce`, the sum of all ranks'
    partial outputs (an all-reduce: every rank gets the same sum)."""

    experts: ExpertSlice
    rank: int
    world_size: int
    reduce: Callable[[torch.Tensor], torch.Tensor]
    routed_units: slice | None = None

    def shared_units(self, inter: int) -> slice | None:
        """The shared expert's intermediate units this rank computes: an equal contiguous share, so the
        busiest rank reads only its share of the shared expert's weights; all of them on rank 0 (None
        elsewhere) when `inter` does not split evenly."""
        share = equal_share(inter, rank=self.rank, world_size=self.world_size)
        if share is None:
            return slice(0, inter) if self.rank == 0 else None
        return share


class MoE(nn.Module):
    """Routed experts plus one always-on shared expert; `kernels` picks the routed experts' path. With
    `weights="shipped"` the routed experts stay MXFP4 and the shared expert FP8, as checkpoints store them.
    After `shard` it computes one rank's part and returns the ranks' sum."""

    def __init__(self, args: ModelArgs, hash_routed: bool, weights: WeightFormat = "dense") -> None:
        super().__init__()
        self.gate = Gate(args, hash_routed)
        dim, inter, limit = args.hidden_size, args.moe_intermediate_size, args.swiglu_limit
        self.experts = RoutedExperts(args.n_routed_experts, dim, inter, limit, weights)
        self.shared_experts = Expert(dim, inter, limit, weights)
        self.parallelism: ExpertParallelism | None = None
        self.shared_units: slice | None = None  # after `shard`: this rank's units of the shared expert

    def shard(self, parallelism: ExpertParallelism) -> None:
        """Keep only `parallelism.experts` of the routed experts (see `RoutedExperts.sliced`) and of each
        only `parallelism.routed_units` (`RoutedExperts.unit_share`), and compute this rank's part from now
        on."""
        if parallelism.experts != self.experts.ids:
            self.experts = self.experts.sliced(parallelism.experts)
        if parallelism.routed_units is not None:
            self.experts = self.experts.unit_share(parallelism.routed_units)
        self.parallelism = parallelism
        shared = self.shared_experts
        self.shared_units = parallelism.shared_units(shared.w1.weight.shape[0])
        if self.shared_units is not None and not all(
            on_block_bounds(layer, self.shared_units) for layer in (shared.w1, shared.w2, shared.w3)
        ):
            self.shared_units = slice(0, shared.w1.weight.shape[0]) if parallelism.rank == 0 else None

    def forward(
        self,
        x: torch.Tensor,
        token_ids: torch.Tensor,
        kernels: KernelImpl = "reference",
        route_stream: torch.cuda.Stream | None = None,
    ) -> torch.Tensor:
        """The layer's output for `x`; the routing on `route_stream` when given (`side_streams.py`), beside
        the shared expert."""
        with side_chain(route_stream) as routed:
            weights, indices = self.gate(x, token_ids, kernels)
        experts, limit, ep = self.experts, self.experts.limit, self.parallelism
        if ep is None:
            shared = self.shared_experts(x, kernels)
            routed.join()
            return grouped_moe(x, weights, indices, experts.stacks, limit, impl=kernels, add=shared)
        units = self.shared_units
        shared = None if units is None else self.shared_experts(x, kernels, units)
        routed.join()
        # this rank's part in float32: one rounding to x's dtype after the ranks' sum, not one per part
        part = grouped_moe(
            x,
            weights,
            indices,
            experts.stacks,
            limit,
            impl=kernels,
            experts=experts.ids,
            add=shared,
            out_dtype=torch.float32,
        )
        return ep.reduce(part).to(x.dtype)
