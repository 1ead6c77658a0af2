"""The V4 runtime takes where it runs and how it prefills from settings, read once at the entry point."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deepscout.model_runtime.v4.runtime import load_runtime
from deepscout.settings import V4Settings


def test_engine_follows_device_and_prefill_chunk() -> None:
    runtime = load_runtime("random-tiny", V4Settings(prefill_chunk=3000, kv_blocks=8))
    try:
        config = runtime.engine.config
        assert (config.device, config.prefill_chunk, config.max_tokens_per_step) == ("cpu", 3000, 3000)
        assert runtime.model.kernels == "reference"  # the fused kernels are for CUDA devices
    finally:
        runtime.close()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps", "cuda:0,gpu", "cuda:0,"])
def test_unknown_device_is_refused(device: str) -> None:
    with pytest.raises(ValidationError, match="device"):
        V4Settings(device=device)
