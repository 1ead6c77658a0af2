"""The server's model service: one loaded model per served spec, shared by concurrent sessions that the
model batches (``deepseek-v4:random-tiny`` here: its engine steps run every session's sequence at once)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from deepscout.model_runtime.chat import BackendRegistry, usage_of
from deepscout.model_runtime.chat.backends.embedded_v4 import EmbeddedV4ChatModel
from deepscout.model_runtime.v4.engine_loop import EngineClosedError
from deepscout.settings import Settings
from deepscout.ui.http_errors import ApiError
from deepscout.ui.model_service import ModelService

SPEC = "deepseek-v4:random-tiny"


def test_concurrent_sessions_share_one_model_and_its_batched_steps(settings: Settings) -> None:
    service = ModelService(settings, served=[SPEC], registry=BackendRegistry())
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: service.get(SPEC), range(4)))
    model = models[0]
    assert isinstance(model, EmbeddedV4ChatModel)
    assert all(m is model for m in models) and service.loaded() == [SPEC]
    assert model.serves_threads_concurrently

    engine = model.runtime.engine
    before = engine.steps
    sessions = [[SystemMessage(f"Session {i}."), HumanMessage(f"Question {i}?")] for i in range(6)]
    with ThreadPoolExecutor(len(sessions)) as pool:
        replies = list(pool.map(lambda m: service.get(SPEC).invoke(m, max_new_tokens=8), sessions))
    tokens = sum(usage_of(reply).output_tokens for reply in replies)
    assert tokens == 6 * 8
    assert engine.steps - before <= tokens // 3

    service.close()  # the server's shutdown: the engine thread stops and later calls fail in one line
    assert service.loaded() == []
    with pytest.raises(EngineClosedError):
        model.invoke(sessions[0], max_new_tokens=2)

    with pytest.raises(ApiError, match="not served"):
        service.get("deepseek-v4:/some/path")
