"""Loading one rank's shard: every dense tensor and, by whole experts, exactly its slice of each layer's
routed experts are read (no other expert's bytes), or, by units, its rows and columns of every expert; either
way they hold what the whole model holds there. Random shards: every rank draws the same dense weights and
holds only its share of the experts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice
from deepscout.model_runtime.v4.model.fp8_linear_module import Fp8BlockLinear
from deepscout.model_runtime.v4.model.moe import Expert, ExpertParallelism, MoE, MoeSharding
from deepscout.model_runtime.v4.model_config import WeightFormat
from deepscout.model_runtime.v4.parallel.expert_sharding import load_sharded_model, random_sharded_model
from deepscout.model_runtime.v4.parallel.rank_group import RankGroup
from deepscout.model_runtime.v4.weights.checkpoint import Checkpoint
from deepscout.model_runtime.v4.weights.loader import load_model
from tests.model_runtime.v4.parallel.conftest import ARGS

EXPERT = re.compile(r".+\.experts\.(\d+)\..+")


def _moe_layers(model: torch.nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


@pytest.mark.parametrize("weights", ["dense", "shipped"])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_reads_only_its_experts(
    checkpoint_dir: Path, weights: WeightFormat, rank: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    original = Checkpoint.read_stored

    def recording(self: Checkpoint, name: str) -> object:
        read.append(name)
        return original(self, name)

    monkeypatch.setattr(Checkpoint, "read_stored", recording)
    group = RankGroup(rank=rank, world_size=2, device=torch.device("cpu"), backend="gloo")
    model, report = load_sharded_model(checkpoint_dir, group, weights=weights, moe_sharding="experts")
    monkeypatch.undo()

    stored = Checkpoint(checkpoint_dir).weights
    mine = range(4 * rank, 4 * rank + 4)
    wanted = {n for n in stored if (m := EXPERT.fullmatch(n)) is None or int(m[1]) in mine}
    assert sorted(read) == sorted(wanted)
    assert report.stored_bytes == sum(stored[n].nbytes for n in wanted)
    n_layers = ARGS.num_hidden_layers + ARGS.num_mtp_layers
    assert report.skipped_experts == n_layers * 4 * 3  # 4 other experts x w1/w2/w3 per MoE layer

    whole, _ = load_model(checkpoint_dir, weights=weights)
    for ours, full in zip(_moe_layers(model), _moe_layers(whole), strict=True):
        assert len(ours.experts) == 4 and ours.experts.ids.start == 4 * rank
        assert ours.experts.is_stacked()
        for field, stack in vars(ours.experts.stacks).items():
            assert torch.equal(stack, getattr(full.experts.stacks, field)[4 * rank : 4 * rank + 4]), field
        # the tiny shared expert's 32 units split in two unless FP8 (which splits in whole 128-wide blocks)
        inter = ARGS.moe_intermediate_size
        shares = (
            [slice(0, inter // 2), slice(inter // 2, inter)]
            if weights == "dense"
            else [slice(0, inter), None]
        )
        assert ours.shared_units == shares[rank]
    # 2 of the 4 heads (one output group) each, unless FP8 rows would cut a scale block (64 rows of wq_b)
    per_rank = ARGS.num_attention_heads // 2
    heads = slice(per_rank * rank, per_rank * (rank + 1)) if weights == "dense" else slice(0, 2 * per_rank)
    assert all(layer.attn.heads == heads for layer in model.layers)
    half = ARGS.vocab_size // 2
    assert model.vocab_parallelism is not None and model.vocab_parallelism.rows == slice(
        half * rank, half * (rank + 1)
    )


def _units_of(stack: torch.Tensor, field: str, units: slice) -> torch.Tensor:
    """`units` of a whole stack: rows of w1/w3 and their scales, columns of w2 and its scales."""
    if not field.startswith("w2"):
        return stack[:, units]
    per_column = ARGS.moe_intermediate_size // stack.shape[2]  # 1, 2 (packed codes) or 32 (scale bytes)
    return stack[:, :, units.start // per_column : units.stop // per_column]


@pytest.mark.parametrize("weights", ["dense", "shipped"])
@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_holds_its_units_of_every_expert(
    checkpoint_dir: Path, weights: WeightFormat, rank: int
) -> None:
    group = RankGroup(rank=rank, world_size=2, device=torch.device("cpu"), backend="gloo")
    model, report = load_sharded_model(checkpoint_dir, group, weights=weights, moe_sharding="units")
    assert report.skipped_experts == 0
    assert report.stored_bytes == sum(w.nbytes for w in Checkpoint(checkpoint_dir).weights.values())
    whole, _ = load_model(checkpoint_dir, weights=weights)
    units = slice(32 * rank, 32 * rank + 32)
    for ours, full in zip(_moe_layers(model), _moe_layers(whole), strict=True):
        assert len(ours.experts) == ARGS.n_routed_experts and ours.experts.units == units
        assert ours.experts.is_stacked()
        for field, stack in vars(ours.experts.stacks).items():
            assert torch.equal(stack, _units_of(getattr(full.experts.stacks, field), field, units)), field


def _without_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value for name, value in state.items() if not EXPERT.fullmatch(name)}


@pytest.mark.parametrize("moe_sharding", ["units", "experts"])
@pytest.mark.parametrize("weights", ["dense", "shipped"])
def test_random_shards_hold_the_same_dense_weights_and_only_their_experts(
    weights: WeightFormat, moe_sharding: MoeSharding
) -> None:
    ranks = [
        random_sharded_model(
            ARGS,
            RankGroup(rank=r, world_size=2, device=torch.device("cpu"), backend="gloo"),
            seed=3,
            weights=weights,
            moe_sharding=moe_sharding,
        )
        for r in (0, 1)
    ]
    dense = [_without_experts(model.state_dict()) for model in ranks]
    assert dense[0].keys() == dense[1].keys()
    for name, value in dense[0].items():
        assert torch.equal(value, dense[1][name]), name
    for rank, model in enumerate(ranks):
        for moe in _moe_layers(model):
            if moe_sharding == "experts":
                assert len(moe.experts) == 4 and moe.experts.ids.start == 4 * rank
            else:
                assert len(moe.experts) == 8 and moe.experts.units == slice(32 * rank, 32 * rank + 32)
            assert all(stack.abs().sum() > 0 for stack in vars(moe.experts.stacks).values())


def _place(rank: int, world_size: int) -> ExpertParallelism:
    return ExpertParallelism(ExpertSlice(0, 1), rank=rank, world_size=world_size, reduce=lambda t: t)


def test_the_shared_expert_splits_evenly_or_stays_on_rank_0() -> None:
    assert [_place(r, 2).shared_units(2048) for r in (0, 1)] == [slice(0, 1024), slice(1024, 2048)]
    assert [_place(r, 4).shared_units(96) for r in range(4)] == [slice(24 * r, 24 * r + 24) for r in range(4)]
    assert [_place(r, 2).shared_units(33) for r in (0, 1)] == [slice(0, 33), None]


@pytest.mark.parametrize("weights", ["dense", "shipped"])
def test_the_ranks_shares_of_the_shared_expert_sum_to_it(weights: WeightFormat) -> None:
    """Each rank reads only its units' rows of w1/w3 and columns of w2 (FP8 blocks and their scales);
    the ranks' parts sum to the whole expert's output."""
    dim, inter = 256, 512
    expert = Expert(dim, inter, swiglu_limit=7.0, weights=weights)
    generator = torch.Generator().manual_seed(0)
    if weights == "shipped":
        for name, (n_in, n_out) in {"w1": (dim, inter), "w2": (inter, dim), "w3": (dim, inter)}.items():
            setattr(expert, name, Fp8BlockLinear.random(n_in, n_out, generator=generator))
    x = torch.randn(3, dim, generator=generator)
    whole = expert(x)
    parts = [expert(x, units=_place(r, 2).shared_units(inter)) for r in (0, 1)]
    torch.testing.assert_close(parts[0] + parts[1], whole, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(parts[0], whole, atol=1e-3)
