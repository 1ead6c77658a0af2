"""Rank 0's lockstep engine refuses what cannot be replicated on every rank, before any collective."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepscout.model_runtime.v4.engine import (
    Engine,
    EngineConfig,
    GenerationRequest,
    RequestError,
    SamplingParams,
)
from deepscout.model_runtime.v4.parallel.lockstep_engine import LockstepEngine
from deepscout.model_runtime.v4.parallel.rank_group import RankGroup
from deepscout.model_runtime.v4.weights.loader import load_model
from tests.model_runtime.v4.parallel.conftest import PROMPT


def _group(rank: int) -> RankGroup:
    return RankGroup(rank=rank, world_size=2, device=torch.device("cpu"), backend="gloo")


def test_logits_processors_and_other_ranks_are_refused(checkpoint_dir: Path) -> None:
    engine = Engine(load_model(checkpoint_dir)[0], EngineConfig(num_blocks=16))
    with pytest.raises(ValueError, match="driven from rank 0; rank 1 runs follow"):
        LockstepEngine(engine, _group(1))
    lockstep = LockstepEngine(engine, _group(0))
    processor = SamplingParams(logits_processor=lambda _, logits: logits)
    with pytest.raises(RequestError, match="logits_processor cannot run on every rank"):
        lockstep.add_request(GenerationRequest(prompt_ids=PROMPT, sampling=processor))
    assert not engine.has_unfinished()
