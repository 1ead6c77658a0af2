"""The embedded SmolLM2 backend for real: KV-session reuse, deadlines, streaming, constrained tool calls.

All slow (a real 135M model on the CPU); the model is fetched and converted once per machine by the
``smollm2_chat_model`` session fixture in tests/conftest.py. Each test uses its own system prompt so the
shared session pool does not couple tests.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from deepscout.model_runtime.chat import (
    ContextOverflowError,
    GenerationCancelled,
    GenerationDeadlineExceeded,
    StructuredOutputError,
)

pytestmark = pytest.mark.slow


def fresh_system() -> SystemMessage:
    return SystemMessage(f"You are a concise assistant. Session {uuid.uuid4().hex[:8]}.")


class SearchArgs(BaseModel):
    query: str = Field(description="keywords naming the entity and the fact sought")


@tool(args_schema=SearchArgs)
def search_corpus(query: str) -> str:
    """Search the local corpus; returns the best passages with their source ids."""
    return ""


class ReadArgs(BaseModel):
    source_id: int = Field(description="the id of a source listed in earlier search results")


@tool(args_schema=ReadArgs)
def read_document(source_id: int) -> str:
    """Read a whole stored document by its source id."""
    return ""


def test_append_only_conversation_prefills_only_new_tokens(smollm2_chat_model):
    model = smollm2_chat_model.model_copy(update={"max_new_tokens": 8})
    history = [fresh_system(), HumanMessage("Name one colour of the rainbow.")]
    first = model.invoke(history)
    prefill = first.response_metadata["prefill"]
    assert prefill["computed_tokens"] == prefill["prompt_tokens"] - prefill["reused_tokens"]
    assert prefill["reused_tokens"] < 10  # only the ChatML system header can be shared with other sessions
    assert first.usage_metadata["input_tokens"] == prefill["prompt_tokens"]

    history += [first, HumanMessage("Name another one.")]
    second = model.invoke(history)
    reuse = second.response_metadata["prefill"]
    assert reuse["reused_tokens"] >= prefill["prompt_tokens"]
    assert reuse["computed_tokens"] <= 20
    assert reuse["prompt_tokens"] == model.count_tokens(history)

    # The prompt changes mid-way: continue from the longest common prefix (the system turn), no further.
    edited = [history[0], HumanMessage("Name one planet."), first, HumanMessage("Name another one.")]
    third = model.invoke(edited)
    branch = third.response_metadata["prefill"]
    system_tokens = model.count_tokens([history[0]]) - 3  # minus "<|im_start|>assistant\n"
    assert system_tokens <= branch["reused_tokens"] < prefill["prompt_tokens"]

    # Reusing the cache changes nothing: a cold prefill of the same prompt gives the same greedy answer.
    model._generator.pool.clear()
    cold = model.invoke(history)
    assert cold.response_metadata["prefill"]["reused_tokens"] == 0
    assert cold.content == second.content


def test_deadline_stops_decode_and_prefill_promptly(smollm2_chat_model):
    model = smollm2_chat_model.model_copy(update={"max_new_tokens": 400})
    story = [fresh_system(), HumanMessage("Write a very long story about a dragon and a lighthouse.")]
    # On a shared CPU one step can take seconds; the deadline may overrun by about one step, not more.
    timings = model.model_copy(update={"max_new_tokens": 4}).invoke(story).response_metadata["timings"]
    step = timings["decode_s"] / max(timings["decode_tokens"] - 1, 1)
    started = time.monotonic()
    with pytest.raises(GenerationDeadlineExceeded, match="decode"):
        model.invoke(story, deadline=time.monotonic() + 2.0)
    assert time.monotonic() - started < 2.0 + max(1.0, 4 * step)

    # Prefill speed here and now, from a prompt of other text (so nothing of it is reused below).
    probe = [fresh_system(), HumanMessage(" ".join(["Waves broke on the rocks below the cliff."] * 30))]
    measured = model.model_copy(update={"max_new_tokens": 1}).invoke(probe).response_metadata
    chunk_s = (
        measured["timings"]["prefill_s"] / measured["prefill"]["computed_tokens"] * model.prefill_chunk_tokens
    )
    # A prompt of about 12 chunks against a deadline of about 2: the prefill cannot finish in time, on an idle
    # machine or a loaded one. The first chunk always starts; the chunk in flight finishes, then it stops.
    long_prompt = [fresh_system(), HumanMessage(" ".join(["The lighthouse keeper counted the waves."] * 375))]
    budget = 2 * chunk_s
    started = time.monotonic()
    with pytest.raises(GenerationDeadlineExceeded, match="prefill"):
        model.invoke(long_prompt, deadline=time.monotonic() + budget)
    elapsed = time.monotonic() - started
    # What was prefilled before the deadline stays cached: the retry continues from it.
    retry = model.model_copy(update={"max_new_tokens": 1}).invoke(long_prompt).response_metadata
    assert model.prefill_chunk_tokens <= retry["prefill"]["reused_tokens"] < retry["prefill"]["prompt_tokens"]
    assert elapsed < budget + max(1.0, 3 * chunk_s)


def test_cancel_event_stops_generation(smollm2_chat_model):
    model = smollm2_chat_model.model_copy(update={"max_new_tokens": 400})
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(GenerationCancelled):
        model.invoke([fresh_system(), HumanMessage("Tell me a long story.")], cancel=cancel)
    assert time.monotonic() - started < 1.0 + 3.0


def test_streaming_matches_invoke(smollm2_chat_model):
    model = smollm2_chat_model.model_copy(update={"max_new_tokens": 12})
    messages = [fresh_system(), HumanMessage("Say hello to the world.")]
    chunks = list(model.stream(messages))
    texts = [chunk.content for chunk in chunks if chunk.content]
    assert len(texts) >= 3
    assert chunks[-1].usage_metadata["output_tokens"] >= len(texts)
    assert "".join(texts) == model.invoke(messages).content


def test_constrained_tool_calls_are_schema_valid_for_20_questions(smollm2_chat_model, hotpotqa_dir):
    questions = [row["question"] for row in json.loads((hotpotqa_dir / "hotpotqa_train.json").read_text())][
        :20
    ]
    model = smollm2_chat_model.bind_tools([search_corpus, read_document], tool_choice="any")
    system = SystemMessage("You are a research assistant. Find the facts needed to answer the question.")
    for question in questions:
        reply = model.invoke([system, HumanMessage(question)])
        assert reply.response_metadata["attempts"] == 1, reply.response_metadata["raw_output"]
        assert 1 <= len(reply.tool_calls) <= smollm2_chat_model.max_parallel_tool_calls
        for call in reply.tool_calls:
            schema = {"search_corpus": SearchArgs, "read_document": ReadArgs}[call["name"]]
            schema.model_validate(call["args"])
            assert call["id"].startswith("call_")


def test_optional_tools_allow_a_final_answer_or_calls(smollm2_chat_model):
    model = smollm2_chat_model.bind_tools([search_corpus])
    reply = model.invoke([fresh_system(), HumanMessage("Who wrote Hamlet?")])
    assert reply.tool_calls or (isinstance(reply.content, str) and reply.content)
    for call in reply.tool_calls:
        SearchArgs.model_validate(call["args"])


def test_structured_output_and_bounded_retry(smollm2_chat_model):
    class City(BaseModel):
        name: str
        country: str

    city = smollm2_chat_model.with_structured_output(City).invoke("Paris is the capital of which country?")
    assert isinstance(city, City)

    starved = smollm2_chat_model.model_copy(update={"max_new_tokens": 3, "structured_retries": 1})
    with pytest.raises(StructuredOutputError) as caught:
        starved.with_structured_output(City).invoke("Paris is the capital of which country?")
    assert caught.value.attempts == 2


def test_prompt_over_the_context_window_is_refused(smollm2_chat_model):
    assert smollm2_chat_model.context_window == 8192
    with pytest.raises(ContextOverflowError, match="8192"):
        smollm2_chat_model.invoke([HumanMessage("word " * 9000)])


def test_hf_folder_spec_loads_a_local_folder(smollm2_chat_model, settings):
    from deepscout.model_runtime.chat import load_chat_model

    model = load_chat_model(f"hf:{smollm2_chat_model.model_path}", settings=settings)
    assert model.model_name == "hf:smollm2-135m-instruct" and model.context_window == 8192
    # Loading builds the model: no process-wide cache hands back the one already loaded (who needs
    # the same model twice keeps the instance).
    assert model._runtime is not smollm2_chat_model._runtime
    assert model.count_tokens([HumanMessage("hello")]) == smollm2_chat_model.count_tokens(
        [HumanMessage("hello")]
    )
