"""One rank's DeepSeek-V4 model under expert parallelism: every dense weight (attention, shared expert,
norms, embedding, head, mHC) and its share of each MoE layer's routed experts.

The routed experts are shared out one of two ways (`MoeSharding`): by "units" (the default), each rank
holds every expert's equal share of intermediate units (rows of w1/w3, columns of w2), so each reads the
same bytes a step whatever the routing; or by "experts", each rank holds an equal slice of whole experts,
and a step waits for the rank that most of its tokens' experts are on (at one decode token, top-6 of 256 on
two ranks, the busier rank holds 3.94 of the 6 on average).

Beside the experts, each rank computes an equal share of what reads the most dense bytes a decode step,
from views of the weights it holds whole: every attention's query heads (`Attention.shard_heads`: its
`wq_b` rows, `wo_a` groups and `wo_b` columns, the partial outputs summed by one all-reduce; the keys,
compressors and indexer stay whole on every rank) and the vocabulary's logits (`VocabParallelism`: one
all-gather joins the shares).

Each MoE layer keeps the rank's share of the experts (`MoE.shard`), routes every token as the whole model
does, runs the pairs routed to what it holds, adds its share of the shared expert's intermediate units
(every rank holds the whole shared expert and reads only its share) and sums the ranks' outputs with one
all-reduce, so every rank ends each layer with the same hidden states (and the same logits).
Loading builds the model on the meta device, shards it there, then allocates and reads only what the rank
holds from the official-format shards, tensor by tensor (`weights/loader.py`); or (`random_sharded_model`)
allocates it on the rank's device and draws random weights there, as `DeepseekV4Model.random` does: the same
seed gives every rank the same dense weights (each rank draws as many expert values in the same order, so
the generators stay in step) — a model as large as the machine, with no checkpoint on disk.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice
from deepscout.model_runtime.v4.model.attention import Attention, AttnImpl
from deepscout.model_runtime.v4.model.moe import ExpertParallelism, MoE, MoeSharding
from deepscout.model_runtime.v4.model.projections import equal_share
from deepscout.model_runtime.v4.model.random_weights import fill_random_
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model, VocabParallelism
from deepscout.model_runtime.v4.model_config import ModelArgs, WeightFormat
from deepscout.model_runtime.v4.parallel.rank_group import RankGroup, expert_slice
from deepscout.model_runtime.v4.weights.loader import LoadReport, allocate_model, load_model
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK


def routed_share(
    args: ModelArgs, *, moe_sharding: MoeSharding, weights: WeightFormat, rank: int, world_size: int
) -> tuple[ExpertSlice, slice | None]:
    """The routed experts rank `rank` holds of every MoE layer of the model `args` describes, and the
    intermediate units it holds of each (None: whole experts), shared out by `moe_sharding`; raises
    ValueError where they do not share out that way (units: equal shares, on whole 32-wide MXFP4 scale
    blocks when `weights` is "shipped")."""
    n_experts, inter = args.n_routed_experts, args.moe_intermediate_size
    if moe_sharding == "experts":
        return expert_slice(n_experts, rank=rank, world_size=world_size), None
    units = equal_share(inter, rank=rank, world_size=world_size)
    block = FP4_BLOCK if weights == "shipped" else 1
    if units is None or (inter // world_size) % block:
        raise ValueError(
            f"sharing the routed experts' units needs moe_intermediate_size ({inter}) to split into "
            f"{world_size} equal shares" + (f" of whole {block}-wide MXFP4 blocks" if block > 1 else "")
        )
    return ExpertSlice(0, n_experts), units


def shard_model(model: DeepseekV4Model, group: RankGroup, *, moe_sharding: MoeSharding = "units") -> None:
    """Make `model` compute `group`'s rank's part (in place): every MoE layer (MTP layers too) its share of
    the routed experts (by `moe_sharding`) and of the shared expert, every attention its share of the query
    heads and the head its share of the vocabulary, where they split evenly."""
    experts, units = routed_share(
        model.args,
        moe_sharding=moe_sharding,
        weights=model.weight_format,
        rank=group.rank,
        world_size=group.world_size,
    )
    parallelism = ExpertParallelism(
        experts,
        rank=group.rank,
        world_size=group.world_size,
        reduce=group.all_reduce_sum,
        routed_units=units,
    )
    for module in model.modules():
        if isinstance(module, MoE):
            module.shard(parallelism)
        elif isinstance(module, Attention):
            module.shard_heads(rank=group.rank, world_size=group.world_size, reduce=group.all_reduce_sum)
    rows = equal_share(model.args.vocab_size, rank=group.rank, world_size=group.world_size)
    if rows is not None:
        model.vocab_parallelism = VocabParallelism(rows=rows, gather=group.gather_columns)


def load_sharded_model(
    directory: str | Path,
    group: RankGroup,
    *,
    dtype: torch.dtype = torch.float32,
    attn_impl: AttnImpl = "sparse",
    weights: WeightFormat = "dense",
    moe_sharding: MoeSharding = "units",
) -> tuple[DeepseekV4Model, LoadReport]:
    """This rank's model from a checkpoint directory (its share of the experts, by `moe_sharding`, and the
    dense weights read, nothing else), on the rank's device."""
    shard = partial(shard_model, group=group, moe_sharding=moe_sharding)
    model, report = load_model(directory, dtype=dtype, attn_impl=attn_impl, weights=weights, shard=shard)
    return model.to(group.device), report


def random_sharded_model(
    args: ModelArgs,
    group: RankGroup,
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    attn_impl: AttnImpl = "sparse",
    weights: WeightFormat = "dense",
    moe_sharding: MoeSharding = "units",
) -> DeepseekV4Model:
    """This rank's model with random weights drawn on its device (only its share of the experts, by
    `moe_sharding`, ever allocated)."""
    shard = partial(shard_model, group=group, moe_sharding=moe_sharding)
    model = allocate_model(
        args, dtype=dtype, attn_impl=attn_impl, weights=weights, shard=shard, device=group.device
    )
    fill_random_(model, args, torch.Generator(device=group.device).manual_seed(seed))
    return model.eval()
