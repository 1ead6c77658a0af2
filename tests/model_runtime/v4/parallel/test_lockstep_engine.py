"""Only rank 0 drives the lockstep engine (refused before any collective)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepscout.model_runtime.v4.engine import Engine, EngineConfig
from deepscout.model_runtime.v4.parallel.lockstep_engine import LockstepEngine
from deepscout.model_runtime.v4.parallel.rank_group import RankGroup
from deepscout.model_runtime.v4.weights.loader import load_model


def _group(rank: int) -> RankGroup:
    return RankGroup(rank=rank, world_size=2, device=torch.device("cpu"), backend="gloo")


def test_other_ranks_cannot_drive(checkpoint_dir: Path) -> None:
    engine = Engine(load_model(checkpoint_dir)[0], EngineConfig(num_blocks=16))
    with pytest.raises(ValueError, match="driven from rank 0; rank 1 runs follow"):
        LockstepEngine(engine, _group(1))
