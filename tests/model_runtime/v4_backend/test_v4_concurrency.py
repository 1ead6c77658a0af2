"""Concurrent calls on one ``deepseek-v4:random-tiny`` runtime decode together in the engine's batched steps:
same greedy output as alone, one cancelled call leaves the others whole, one failing request fails alone."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from deepscout.model_runtime.chat import GenerationCancelled
from deepscout.model_runtime.chat.backends.embedded_v4 import TOKEN_IDS_KEY, EmbeddedV4ChatModel
from deepscout.model_runtime.v4.engine import GenerationRequest, SamplingParams
from deepscout.model_runtime.v4.engine_loop import EngineClosedError
from deepscout.model_runtime.v4.runtime import V4Runtime, load_runtime
from deepscout.settings import V4Settings

CALLS = 8


def _conversations(name: str) -> list[list[BaseMessage]]:
    return [
        [SystemMessage(f"You are assistant {i} ({name})."), HumanMessage(f"Question number {i}?")]
        for i in range(CALLS)
    ]


def _chat(runtime: V4Runtime, max_new_tokens: int) -> EmbeddedV4ChatModel:
    return EmbeddedV4ChatModel.from_runtime(runtime, max_new_tokens=max_new_tokens, structured_retries=0)


def _ids(message: AIMessage) -> list[int]:
    return list(message.response_metadata[TOKEN_IDS_KEY])


@pytest.fixture
def fresh_runtime() -> Iterator[V4Runtime]:
    runtime = load_runtime("random-tiny", V4Settings())
    yield runtime
    runtime.close()


def test_concurrent_calls_batch_into_shared_steps_with_the_same_output(
    tiny_runtime: V4Runtime, fresh_runtime: V4Runtime, unique_system: str
) -> None:
    conversations = _conversations(unique_system)
    alone = [_ids(_chat(tiny_runtime, 8).invoke(messages)) for messages in conversations]

    model = _chat(fresh_runtime, 8)
    before = fresh_runtime.engine.steps
    with ThreadPoolExecutor(CALLS) as pool:
        together = [_ids(reply) for reply in pool.map(model.invoke, conversations)]
    steps = fresh_runtime.engine.steps - before

    assert together == alone
    generated = sum(len(ids) for ids in together)
    assert generated == CALLS * 8
    assert steps <= generated // 3, f"{steps} engine steps for {generated} tokens: the calls did not batch"


def test_cancelling_one_call_leaves_the_others_intact(fresh_runtime: V4Runtime, unique_system: str) -> None:
    conversations = _conversations(unique_system)
    model = _chat(fresh_runtime, 24)
    alone = [_ids(model.invoke(messages)) for messages in conversations[1:]]

    cancel = threading.Event()

    def cancelled_stream() -> None:
        for _ in model.stream(conversations[0], cancel=cancel):
            cancel.set()

    with ThreadPoolExecutor(CALLS) as pool:
        victim = pool.submit(cancelled_stream)
        others = [pool.submit(model.invoke, messages) for messages in conversations[1:]]
        with pytest.raises(GenerationCancelled):
            victim.result()
        assert [_ids(future.result()) for future in others] == alone
    assert not fresh_runtime.engine.has_unfinished()


def test_a_failing_request_fails_alone_and_close_stops_the_loop(fresh_runtime: V4Runtime) -> None:
    eos = fresh_runtime.tokenizer.special.eos

    def broken(generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("grammar state lost")

    def request(processor: object = None) -> GenerationRequest:
        sampling = SamplingParams(logits_processor=processor)  # type: ignore[arg-type]
        return GenerationRequest(
            prompt_ids=[1, 2, 3], max_new_tokens=5, sampling=sampling, stop_token_ids=[eos]
        )

    loop = fresh_runtime.loop
    good, bad = loop.submit(request()), loop.submit(request(broken))
    refused = loop.submit(GenerationRequest(prompt_ids=[], max_new_tokens=5))
    with pytest.raises(RuntimeError, match="grammar state lost"):
        list(bad)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        list(refused)
    outputs = list(good)
    assert outputs[-1].finished and len(outputs[-1].token_ids) >= 1

    fresh_runtime.close()
    with pytest.raises(EngineClosedError):
        loop.submit(request())
