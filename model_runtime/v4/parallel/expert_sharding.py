"""One rank's DeepSeek-V4 model under expert parallelism: every dense weight (attention, shared expert,
norms, embedding, head, mHC) and only its slice of each MoE layer's routed experts.

Beside the experts, each rank computes an equal share of what reads the most dense bytes a decode step,
from views of the weights it holds whole: every attention's query heads (`Attention.shard_heads`: its
`wq_b` rows, `wo_a` groups and `wo_b` columns, the partial outputs summed by one all-reduce; the keys,
compressors and indexer stay whole on every rank) and the vocabulary's logits (`VocabParallelism`: one
all-gather joins the shares).

Each MoE layer keeps the rank's experts (`MoE.shard`), routes every token as the whole model does, runs the
pairs routed to its experts, adds its share of the shared expert's intermediate units (every rank holds the
whole shared expert and reads only its share) and sums the ranks' outputs with one all-reduce, so every rank
ends each layer with the same hidden states (and the same logits).
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

from deepscout.model_runtime.v4.model.attention import Attention, AttnImpl
from deepscout.model_runtime.v4.model.moe import ExpertParallelism, MoE
from deepscout.model_runtime.v4.model.projections import equal_share
from deepscout.model_runtime.v4.model.random_weights import fill_random_
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model, VocabParallelism
from deepscout.model_runtime.v4.model_config import ModelArgs, WeightFormat
from deepscout.model_runtime.v4.parallel.rank_group import RankGroup
from deepscout.model_runtime.v4.weights.loader import LoadReport, allocate_model, load_model


def shard_model(model: DeepseekV4Model, group: RankGroup) -> None:
    """Make `model` compute `group`'s rank's part (in place): every MoE layer (MTP layers too) its experts
    and its share of the shared expert, every attention its share of the query heads and the head its share
    of the vocabulary, where they split evenly."""
    parallelism = ExpertParallelism(
        experts=group.experts(model.args.n_routed_experts),
        rank=group.rank,
        world_size=group.world_size,
        reduce=group.all_reduce_sum,
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
) -> tuple[DeepseekV4Model, LoadReport]:
    """This rank's model from a checkpoint directory (its experts and the dense weights read, nothing
    else), on the rank's device."""
    shard = partial(shard_model, group=group)
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
) -> DeepseekV4Model:
    """This rank's model with random weights drawn on its device (only its experts ever allocated)."""
    shard = partial(shard_model, group=group)
    model = allocate_model(
        args, dtype=dtype, attn_impl=attn_impl, weights=weights, shard=shard, device=group.device
    )
    fill_random_(model, args, torch.Generator(device=group.device).manual_seed(seed))
    return model.eval()
