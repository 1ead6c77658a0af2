"""Loading one rank's shard: every dense tensor and exactly its slice of each layer's routed experts are
read (no other expert's bytes), and they hold what the whole model holds for those experts. Random shards:
every rank draws the same dense weights and holds only its experts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from deepscout.model_runtime.v4.model.moe import MoE
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
    model, report = load_sharded_model(checkpoint_dir, group, weights=weights)
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
        assert ours.parallelism is not None and ours.parallelism.adds_shared == (rank == 0)


def _without_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value for name, value in state.items() if not EXPERT.fullmatch(name)}


@pytest.mark.parametrize("weights", ["dense", "shipped"])
def test_random_shards_hold_the_same_dense_weights_and_only_their_experts(weights: WeightFormat) -> None:
    ranks = [
        random_sharded_model(
            ARGS,
            RankGroup(rank=r, world_size=2, device=torch.device("cpu"), backend="gloo"),
            seed=3,
            weights=weights,
        )
        for r in (0, 1)
    ]
    dense = [_without_experts(model.state_dict()) for model in ranks]
    assert dense[0].keys() == dense[1].keys()
    for name, value in dense[0].items():
        assert torch.equal(value, dense[1][name]), name
    for rank, model in enumerate(ranks):
        for moe in _moe_layers(model):
            assert len(moe.experts) == 4 and moe.experts.ids.start == 4 * rank
            assert all(stack.abs().sum() > 0 for stack in vars(moe.experts.stacks).values())
