"""Load a DeepSeek-V4 checkpoint directory (official names, BF16/FP8/MXFP4) into our model, streaming.

Every tensor the model holds (parameters and the persistent ``tid2eid`` tables) is matched by its official
name, checked against the shape config.json implies and the kind of dtype it needs, then read from its
shard through mmap, dequantised if stored as FP8/MXFP4, and copied into place; nothing else of the
checkpoint is held in memory (see :mod:`deepscout.model_runtime.v4.weights.safetensors_stream`). All names,
shapes and dtypes are checked before the first byte of tensor data is read, so a mismatched config fails
in a second, not after minutes of loading.

A model built with ``weights="shipped"`` (:data:`~deepscout.model_runtime.v4.model_config.WeightFormat`)
holds the FP8 projections and MXFP4 experts as stored: their bytes (weight and e8m0 scale) are copied as
they are, never dequantised. Such a weight must be stored in that format with e8m0 scales; anything else
(a BF16 or V3-style float-scaled checkpoint, FP8 experts) is refused before loading, naming the tensor
and ``weights="dense"``, which loads every format.

The variant comes from config.json alone (:mod:`.checkpoint_variant`): for DeepSeek-V4-Flash-0731 the model
is built without MTP layers and the DSpark drafter's tensors under ``mtp.*`` are claimed, shape-checked and
skipped with one log line (:mod:`.dspark_drafter`), never loaded into MTP layers; every other tensor must
still have its place in the model.

Expert parallelism: a model whose MoE layers hold only a slice of the routed experts (``MoE.shard``, applied
through ``load_model(shard=...)`` before anything is allocated) loads only those experts' tensors, under
their global names, and all the dense ones; the other experts' tensors are set aside unread
(``LoadReport.skipped_experts``). One holding only some intermediate units of every expert reads each
expert's tensors and keeps its part (``HeldPart``: rows of w1/w3, columns of w2, with their scale blocks).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice
from deepscout.model_runtime.v4.model.attention import AttnImpl
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model.moe import Mxfp4Projection, RoutedExperts
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import ModelArgs, WeightFormat
from deepscout.model_runtime.v4.weights.checkpoint import Checkpoint, StoredWeight
from deepscout.model_runtime.v4.weights.checkpoint_errors import (
    CheckpointError,
    MissingTensorsError,
    TensorDtypeError,
    TensorShapeError,
    UnexpectedTensorsError,
    dtype_name,
)
from deepscout.model_runtime.v4.weights.checkpoint_variant import CheckpointVariant, detect_variant
from deepscout.model_runtime.v4.weights.dspark_drafter import DSparkDrafter, SkippedDrafter
from deepscout.model_runtime.v4.weights.quant import QuantFormat, QuantizedTensor

logger = logging.getLogger(__name__)

#: Tensors the official code's state dict holds twice (each MTP block refers to the shared embedding and
#: head), so a checkpoint may carry ``mtp.{k}.embed.weight`` / ``mtp.{k}.head.weight``. They are accepted
#: (shape checked) and not read; the model uses the shared tensors.
SHARED_ALIASES = (
    (re.compile(r"mtp\.\d+\.embed\.weight"), "embed.weight"),
    (re.compile(r"mtp\.\d+\.head\.weight"), "head.weight"),
)


def _alias_of(name: str) -> str | None:
    return next((target for pattern, target in SHARED_ALIASES if pattern.fullmatch(name)), None)


@dataclass(frozen=True)
class LoadReport:
    """What a load read: tensor counts by stored format, bytes read from the shards, seconds taken; the
    checkpoint's variant and the drafter tensors it skipped (DeepSeek-V4-Flash-0731); the routed-expert
    tensors left unread because another rank holds them (expert parallelism)."""

    directory: Path
    tensors: int
    stored_bytes: int
    formats: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    variant: CheckpointVariant = CheckpointVariant.V4
    skipped_drafter: SkippedDrafter | None = None
    skipped_experts: int = 0


@dataclass(frozen=True)
class ShippedTarget:
    """A weight the model keeps as stored: its format, data and scale buffers, and its logical shape."""

    format: QuantFormat
    data: torch.Tensor
    scale: torch.Tensor
    shape: tuple[int, ...]

    def copy_stored_(self, value: QuantizedTensor) -> None:
        """Copy the stored bytes as they are (e8m0 scales and packed FP4 reinterpreted, not converted)."""
        self.data.copy_(value.data if self.format == "fp8_block" else value.data.view(torch.uint8))
        self.scale.copy_(value.scale.view(self.scale.dtype))


def shipped_targets(model: nn.Module) -> dict[str, ShippedTarget]:
    """The weights ``model`` keeps in a shipped format, by official name (``P.weight``; its scale ``P.scale``
    is part of the target)."""
    found: dict[str, ShippedTarget] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Fp8BlockLinear):
            shape = (module.out_features, module.in_features)
            found[f"{prefix}.weight"] = ShippedTarget("fp8_block", module.weight, module.scale, shape)
        elif isinstance(module, Mxfp4Projection):
            rows, half = module.weight.shape
            found[f"{prefix}.weight"] = ShippedTarget("mxfp4", module.weight, module.scale, (rows, 2 * half))
    return found


@dataclass(frozen=True)
class HeldPart:
    """The part of a stored routed-expert weight `[N, K]` that a model holding only some of each expert's
    intermediate units (`RoutedExperts.unit_share`) keeps: `units` of the `whole` rows (w1, w3: `dim` 0)
    or columns (w2: `dim` 1)."""

    dim: int
    units: slice
    whole: int

    def whole_shape(self, held: tuple[int, ...]) -> tuple[int, ...]:
        """The stored shape of a weight whose part has shape `held`."""
        return tuple(self.whole if d == self.dim else n for d, n in enumerate(held))

    def of(self, weight: torch.Tensor) -> torch.Tensor:
        """The part of a (dequantised or plain) weight: a view."""
        return weight.narrow(self.dim, self.units.start, self.units.stop - self.units.start)

    def of_stored(self, value: QuantizedTensor) -> QuantizedTensor:
        """The part of a stored quantised weight: its bytes and scales (views, on whole scale blocks)."""
        start, length = self.units.start, self.units.stop - self.units.start
        per_element = value.shape[self.dim] // value.data.shape[self.dim]  # weights a stored element holds
        block = value.block[self.dim]
        if start % block or length % block:
            raise CheckpointError(f"units [{start}, {self.units.stop}) cut a {block}-wide scale block")
        data = value.data.narrow(self.dim, start // per_element, length // per_element)
        scale = value.scale.narrow(self.dim, start // block, length // block)
        shape = tuple(length if d == self.dim else n for d, n in enumerate(value.shape))
        return QuantizedTensor(value.format, data, scale, shape)


def held_parts(model: DeepseekV4Model) -> dict[str, HeldPart]:
    """The checkpoint names of the routed-expert weights `model` holds only some units of, with the part."""
    whole = model.args.moe_intermediate_size
    parts = {}
    for prefix, module in model.named_modules():
        if isinstance(module, RoutedExperts) and module.units != slice(0, whole):
            for expert in range(module.ids.start, module.ids.stop):
                for projection, dim in (("w1", 0), ("w2", 1), ("w3", 0)):
                    parts[f"{prefix}.{expert}.{projection}.weight"] = HeldPart(dim, module.units, whole)
    return parts


_E8M0_SCALES = (torch.float8_e8m0fnu, torch.uint8)


def check_compatible(
    targets: dict[str, torch.Tensor],
    checkpoint: Checkpoint,
    *,
    skipped: Collection[str] = (),
    shipped: Mapping[str, ShippedTarget] | None = None,
    parts: Mapping[str, HeldPart] | None = None,
) -> None:
    """Raise if the checkpoint's tensors do not fit the model exactly (names, shapes, dtype kinds); the
    ``skipped`` tensors (already recognised and checked elsewhere) are set aside. ``shipped`` targets (by
    weight name, their scales not in ``targets``) must be stored in their format with e8m0 scales. A target
    in ``parts`` holds that part of its stored weight."""
    shipped = shipped or {}
    parts = parts or {}

    def whole(name: str, held: tuple[int, ...]) -> tuple[int, ...]:
        return parts[name].whole_shape(held) if name in parts else held

    stored = checkpoint.weights
    expected = set(targets) | set(shipped)
    missing = sorted(expected - set(stored))
    if missing:
        raise MissingTensorsError(missing)
    extra = sorted(set(stored) - expected - set(skipped))
    aliases = {name: alias for name in extra if (alias := _alias_of(name)) in targets}
    unexpected = [name for name in extra if name not in aliases]
    if unexpected:
        raise UnexpectedTensorsError(unexpected)
    for name, target_name in aliases.items():
        if stored[name].shape != tuple(targets[target_name].shape):
            raise TensorShapeError(name, stored[name].shape, tuple(targets[target_name].shape))
    for name, ship in shipped.items():
        held = stored[name]
        if held.shape != whole(name, ship.shape):
            raise TensorShapeError(name, held.shape, whole(name, ship.shape))
        if held.format != ship.format or held.scale is None or held.scale.dtype not in _E8M0_SCALES:
            scale = f" + {dtype_name(held.scale.dtype)} scale" if held.scale is not None else ""
            found = dtype_name(held.data.dtype) + scale
            raise TensorDtypeError(
                name, found, [f"{ship.format} with e8m0 scales"],
                why='the model keeps this weight as shipped (weights="shipped"); load with weights="dense"',
            )  # fmt: skip
    for name, target in targets.items():
        weight: StoredWeight = stored[name]
        if weight.shape != whole(name, tuple(target.shape)):
            raise TensorShapeError(name, weight.shape, whole(name, tuple(target.shape)))
        if target.is_floating_point() and not weight.is_floating:
            raise TensorDtypeError(
                name, dtype_name(weight.data.dtype), ["bfloat16", "float32", "float8_e4m3fn + scale"],
                why="the model holds a floating-point weight here",
            )  # fmt: skip
        if not target.is_floating_point() and weight.is_floating:
            raise TensorDtypeError(
                name, dtype_name(weight.data.dtype), ["int32", "int64"], why="it is an index table"
            )


_EXPERT_TENSOR = re.compile(r"(.+\.experts)\.(\d+)\.(.+)")
"""A routed expert's tensor: (its layer's `RoutedExperts` prefix, the expert's index, the rest)."""


def _held_experts(model: nn.Module) -> dict[str, ExpertSlice]:
    """Each routed-experts module's prefix → the global expert ids it holds."""
    return {prefix: m.ids for prefix, m in model.named_modules() if isinstance(m, RoutedExperts)}


def _global_name(name: str, held: Mapping[str, ExpertSlice]) -> str:
    """A model tensor's checkpoint name: a routed expert's module index made its global expert id."""
    match = _EXPERT_TENSOR.fullmatch(name)
    if match is None or match[1] not in held:
        return name
    return f"{match[1]}.{held[match[1]].start + int(match[2])}.{match[3]}"


def _other_ranks_experts(
    names: Collection[str], held: Mapping[str, ExpertSlice], n_experts: int
) -> list[str]:
    """The checkpoint weights of routed experts (ids below `n_experts`) that the model does not hold."""
    found = []
    for name in names:
        match = _EXPERT_TENSOR.fullmatch(name)
        if match is not None and match[1] in held:
            expert, ids = int(match[2]), held[match[1]]
            if expert < n_experts and not ids.start <= expert < ids.stop:
                found.append(name)
    return found


def load_weights(model: DeepseekV4Model, checkpoint: Checkpoint) -> LoadReport:
    """Copy every checkpoint tensor into ``model`` (in each parameter's own dtype; a shipped weight's bytes
    as stored), one tensor at a time; closes the checkpoint's mappings when done. A DSpark drafter
    (DeepSeek-V4-Flash-0731) is skipped, and refused when ``model`` has MTP layers it could be mistaken
    for. A model holding only some routed experts reads only theirs (see the module docstring)."""
    start = time.perf_counter()
    variant = checkpoint.variant.variant
    drafter = _claim_drafter(variant, model, checkpoint)
    held = _held_experts(model)
    shipped = {_global_name(n, held): t for n, t in shipped_targets(model).items()}
    shipped_tensors = {n for w in shipped for n in (w, f"{w.removesuffix('.weight')}.scale")}
    model_tensors = model.state_dict(keep_vars=True).items()
    targets = {g: t for n, t in model_tensors if (g := _global_name(n, held)) not in shipped_tensors}
    others = _other_ranks_experts(checkpoint.weights, held, model.args.n_routed_experts)
    skipped = [*(drafter.names if drafter else ()), *others]
    parts = held_parts(model)
    check_compatible(targets, checkpoint, skipped=skipped, shipped=shipped, parts=parts)
    if drafter is not None:
        logger.info(drafter.log_line())
    formats: Counter[str] = Counter()
    stored_bytes = 0
    with torch.no_grad():
        for name in [*targets, *shipped]:
            weight = checkpoint.weights[name]
            value = checkpoint.read_stored(name)
            part = parts.get(name)
            if name in shipped:
                assert isinstance(value, QuantizedTensor)
                shipped[name].copy_stored_(value if part is None else part.of_stored(value))
            else:
                if isinstance(value, QuantizedTensor):
                    value = value.dequantize(targets[name].dtype)
                targets[name].copy_(value if part is None else part.of(value))
            del value
            formats[weight.format if weight.format != "plain" else dtype_name(weight.data.dtype)] += 1
            stored_bytes += weight.nbytes
    checkpoint.close()
    return LoadReport(
        directory=checkpoint.directory,
        tensors=len(targets) + len(shipped),
        stored_bytes=stored_bytes,
        formats=dict(sorted(formats.items())),
        seconds=time.perf_counter() - start,
        variant=variant,
        skipped_drafter=drafter,
        skipped_experts=len(others),
    )


def _claim_drafter(
    variant: CheckpointVariant, model: DeepseekV4Model, checkpoint: Checkpoint
) -> SkippedDrafter | None:
    if variant is not CheckpointVariant.V4_0731_DSPARK:
        return None
    if model.args.num_mtp_layers:
        raise CheckpointError(
            f"{variant.label}: mtp.* holds a DSpark drafter, not MTP layers; build the model with "
            "num_nextn_predict_layers=0 (backbone_args / load_model do)"
        )
    return DSparkDrafter.from_config(checkpoint.config).claim(
        checkpoint.weights, model.args, label=variant.label
    )


def backbone_args(config: dict[str, Any]) -> ModelArgs:
    """The ModelArgs of the model to build for ``config`` (its variant checked first): as config.json says,
    but without MTP layers for DeepSeek-V4-Flash-0731, whose ``mtp.*`` tensors are a DSpark drafter."""
    variant = detect_variant(config).variant
    args = ModelArgs.from_dict(config)
    if variant is CheckpointVariant.V4_0731_DSPARK:
        return args.with_(num_nextn_predict_layers=0, mtp_layer_types=())
    return args


def load_model(
    directory: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    attn_impl: AttnImpl = "sparse",
    release_after_bytes: int = 64 << 20,
    weights: WeightFormat = "dense",
    shard: Callable[[DeepseekV4Model], None] | None = None,
) -> tuple[DeepseekV4Model, LoadReport]:
    """Build the model config.json describes and load its weights (dequantised to ``dtype``, or with
    ``weights="shipped"`` the FP8/MXFP4 ones kept as stored; norms, sinks, biases and mHC parameters stay
    float32 as the model keeps them). ``shard`` is passed to ``allocate_model``."""
    checkpoint = Checkpoint(directory, release_after_bytes=release_after_bytes)
    args = backbone_args(checkpoint.config)
    model = allocate_model(args, dtype=dtype, attn_impl=attn_impl, weights=weights, shard=shard)
    report = load_weights(model, checkpoint)
    return model.eval(), report


def allocate_model(
    args: ModelArgs,
    *,
    dtype: torch.dtype = torch.float32,
    attn_impl: AttnImpl = "sparse",
    weights: WeightFormat = "dense",
    shard: Callable[[DeepseekV4Model], None] | None = None,
    device: torch.device | str = "cpu",
) -> DeepseekV4Model:
    """The model with *uninitialised* parameters and stored buffers allocated once on ``device``, directly
    in their final dtypes and formats (no float32 detour, no random init); the buffers a checkpoint does not
    hold zeroed, then those derived from ``args`` computed as usual. The model is built on the meta device
    and ``shard`` edits it there (expert parallelism keeps one rank's experts), so only what it leaves is
    ever allocated. Only for filling: by ``load_weights``, which refuses a checkpoint that does not cover
    every parameter, or by ``fill_random_``."""
    with torch.device("meta"):
        model = DeepseekV4Model(args, attn_impl=attn_impl, weights=weights)
    if shard is not None:
        shard(model)
    model.cast(dtype)  # on the meta device: decides each parameter's dtype, allocates nothing
    for module in model.modules():
        if isinstance(module, RoutedExperts) and module.stacks.w1.is_meta:
            module.to_empty(device=device)  # one tensor per stacked projection, the experts' weights views
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.is_meta:
                empty = torch.empty(param.shape, dtype=param.dtype, device=device)
                module.register_parameter(name, nn.Parameter(empty, requires_grad=param.requires_grad))
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:  # a checkpoint fills the stored ones; the others (state, counters) start at 0
                kept = name not in module._non_persistent_buffers_set
                alloc = torch.empty_like if kept else torch.zeros_like
                module.register_buffer(name, alloc(buffer, device=device), persistent=kept)
    model.compute_buffers(device)
    return model
