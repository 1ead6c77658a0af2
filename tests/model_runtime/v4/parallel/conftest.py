"""Shared for the expert-parallel tests: a tiny official-format checkpoint (8 routed experts, shapes that fit
the shipped formats) and the request that exercises it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, tiny
from deepscout.model_runtime.v4.weights.synthetic import write_checkpoint

# 64 units: two ranks' shares of every routed expert lie on whole 32-wide MXFP4 blocks
ARGS = tiny(
    (LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA),
    o_lora_rank=128,
    sliding_window=16,
    moe_intermediate_size=64,
)
PROMPT = torch.randint(2, ARGS.vocab_size, (40,), generator=torch.Generator().manual_seed(5)).tolist()


@pytest.fixture(scope="package")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("v4_ep")
    write_checkpoint(DeepseekV4Model.random(ARGS, seed=3), directory, max_shard_bytes=1 << 20)
    return directory
