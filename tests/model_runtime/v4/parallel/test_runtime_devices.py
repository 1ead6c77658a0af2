"""Several devices in the runtime's settings run a checkpoint expert-parallel behind the same runtime API:
two CPU ranks (gloo) generate what one process generates, and close shuts the ranks down."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest

from deepscout.model_runtime.chat import GenerationControl
from deepscout.model_runtime.chat.embedded_base import GenerationOutcome
from deepscout.model_runtime.v4.chat_format.tokenizer import load_v4_tokenizer
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.runtime import V4Runtime, load_runtime, random_tiny_args
from deepscout.model_runtime.v4.weights.synthetic import write_checkpoint
from deepscout.settings import V4Settings


def _greedy(runtime: V4Runtime, prompt: list[int]) -> list[int]:
    stream: Generator[int, None, GenerationOutcome] = runtime.stream_tokens(
        prompt, max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0, control=GenerationControl(), guide=None
    )
    return list(stream)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("v4_runtime_ep")
    args = random_tiny_args(load_v4_tokenizer().vocab_size)
    write_checkpoint(DeepseekV4Model.random(args, seed=2), directory, max_shard_bytes=64 << 20)
    return directory


def test_two_cpu_ranks_serve_what_one_process_serves(checkpoint: Path) -> None:
    prompt = list(range(100, 160))
    single = load_runtime(str(checkpoint), V4Settings(kv_blocks=8))
    try:
        expected = _greedy(single, prompt)
    finally:
        single.close()
    parallel = load_runtime(str(checkpoint), V4Settings(kv_blocks=8, device="cpu,cpu"))
    try:
        assert parallel.engine.config.device == "cpu"
        assert _greedy(parallel, prompt) == expected
    finally:
        parallel.close()


def test_random_tiny_stays_on_one_device() -> None:
    with pytest.raises(ValueError, match="random-tiny runs on one device"):
        load_runtime("random-tiny", V4Settings(device="cuda:0,cuda:1"))
