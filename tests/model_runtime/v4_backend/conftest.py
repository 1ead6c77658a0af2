"""The ``deepseek-v4:random-tiny`` chat model shared by the V4 backend tests (loaded once per session)."""

from __future__ import annotations

import pytest

from deepscout.model_runtime.chat.backends.embedded_v4 import EmbeddedV4ChatModel
from deepscout.model_runtime.v4.runtime import V4Runtime, load_runtime
from deepscout.settings import V4Settings


@pytest.fixture(scope="session")
def tiny_runtime() -> V4Runtime:
    return load_runtime("random-tiny", V4Settings())


@pytest.fixture
def tiny_chat(tiny_runtime: V4Runtime) -> EmbeddedV4ChatModel:
    return EmbeddedV4ChatModel.from_runtime(
        tiny_runtime, model_name="deepseek-v4:random-tiny", max_new_tokens=6, structured_retries=0
    )


@pytest.fixture
def unique_system(request: pytest.FixtureRequest) -> str:
    """A system prompt no other test shares (so no cached session of another test matches it), the
    same on every run (so the random model's output, and the test, are deterministic)."""
    return f"You are a research assistant ({request.node.name})."
