"""``deepseek-v4:random-tiny`` behind the agent's chat-model interface: the output is noise; token
accounting, prefix reuse, structured output, streaming, deadlines and tool-call parsing are real."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from typing import Literal

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from pydantic import BaseModel

from deepscout.model_runtime.chat import (
    GenerationCancelled,
    GenerationDeadlineExceeded,
    ModelNotFetchedError,
    ToolCallOutputError,
    Usage,
    load_chat_model,
)
from deepscout.model_runtime.chat.backends.embedded_v4 import EmbeddedV4ChatModel
from deepscout.model_runtime.chat.embedded_base import GenerationOutcome
from deepscout.model_runtime.v4.chat_format.conversions import turns_from_langchain
from deepscout.model_runtime.v4.chat_format.render import ThinkMaxContextError, render_prompt
from deepscout.model_runtime.v4.runtime import V4Runtime
from deepscout.settings import Settings

D = "｜DSML｜"


@tool
def search(query: str, k: int = 5) -> str:
    """Search the local corpus."""
    return query


def test_registry_loads_random_tiny_and_rejects_a_missing_checkpoint(settings: Settings) -> None:
    model = load_chat_model("deepseek-v4:random-tiny", settings=settings)
    assert isinstance(model, EmbeddedV4ChatModel)
    assert model.context_window == 32_768
    assert model.serves_threads_concurrently  # concurrent calls batch in the engine
    with pytest.raises(ModelNotFetchedError, match=r"config\.json"):
        load_chat_model("deepseek-v4:/nonexistent/v4-checkpoint", settings=settings)


def test_multi_turn_accounting_and_prefix_reuse(tiny_chat: EmbeddedV4ChatModel, unique_system: str) -> None:
    messages: list[BaseMessage] = [SystemMessage(unique_system), HumanMessage("Who wrote Dune?")]
    first = tiny_chat.invoke(messages)
    prefill = first.response_metadata["prefill"]
    expected_ids = tiny_chat.runtime.tokenizer.encode(render_prompt(turns_from_langchain(messages)))
    assert prefill == {
        "prompt_tokens": len(expected_ids),
        "reused_tokens": 0,
        "computed_tokens": len(expected_ids),
    }
    assert tiny_chat.count_tokens(messages) == len(expected_ids)
    assert first.usage_metadata is not None
    assert first.usage_metadata["input_tokens"] == len(expected_ids)
    assert 1 <= first.usage_metadata["output_tokens"] <= 6

    messages += [first, HumanMessage("And when was it published?")]
    second = tiny_chat.invoke(messages)
    prefill2 = second.response_metadata["prefill"]
    assert prefill2["prompt_tokens"] == tiny_chat.count_tokens(messages)
    # the second call continues the first: the first prompt and what was generated (all but the last
    # token, which was sampled but never fed) are reused; only the rest is computed
    generated = first.usage_metadata["output_tokens"]
    assert prefill2["reused_tokens"] == prefill["prompt_tokens"] + generated - 1
    assert prefill2["computed_tokens"] == prefill2["prompt_tokens"] - prefill2["reused_tokens"]
    assert prefill2["computed_tokens"] <= prefill2["prompt_tokens"] - prefill["prompt_tokens"]

    messages += [second, HumanMessage("Thanks.")]
    third = tiny_chat.invoke(messages)
    assert third.response_metadata["prefill"]["reused_tokens"] >= prefill2["prompt_tokens"]


def test_streaming_matches_invoke_and_carries_the_counters(
    tiny_chat: EmbeddedV4ChatModel, unique_system: str
) -> None:
    messages = [SystemMessage(unique_system), HumanMessage("Name a desert planet.")]
    whole = tiny_chat.invoke(messages)
    chunks = list(tiny_chat.stream(messages))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert isinstance(merged, AIMessageChunk)
    assert merged.content == whole.content
    assert (
        merged.response_metadata["prefill"]["prompt_tokens"]
        == whole.response_metadata["prefill"]["prompt_tokens"]
    )
    counters = merged.response_metadata["prefill"]
    assert counters["computed_tokens"] == counters["prompt_tokens"] - counters["reused_tokens"]
    assert merged.usage_metadata is not None
    assert merged.usage_metadata["output_tokens"] == whole.usage_metadata["output_tokens"]  # type: ignore[index]


class Verdict(BaseModel):
    enough_evidence: bool
    confidence: Literal["low", "medium", "high"]


def test_structured_output_is_schema_valid_under_the_grammar(
    tiny_chat: EmbeddedV4ChatModel, unique_system: str
) -> None:
    tiny_chat.max_new_tokens = 32
    messages = [SystemMessage(unique_system), HumanMessage("Is the evidence enough?")]
    verdict = tiny_chat.with_structured_output(Verdict).invoke(messages)
    assert isinstance(verdict, Verdict)
    raw = tiny_chat.with_structured_output(Verdict, include_raw=True).invoke(messages)
    assert raw["raw"].response_metadata["finish_reason"] == "stop"


def test_deadline_stops_generation(tiny_chat: EmbeddedV4ChatModel, unique_system: str) -> None:
    messages = [SystemMessage(unique_system), HumanMessage("Write a long essay.")]
    with pytest.raises(GenerationDeadlineExceeded):
        tiny_chat.invoke(messages, deadline=time.monotonic())


def test_per_call_output_cap(tiny_chat: EmbeddedV4ChatModel, unique_system: str) -> None:
    messages = [SystemMessage(unique_system), HumanMessage("Write a long essay.")]
    reply = tiny_chat.invoke(messages, max_new_tokens=3)
    assert reply.usage_metadata is not None and reply.usage_metadata["output_tokens"] <= 3
    streamed = list(tiny_chat.stream(messages, max_new_tokens=2))
    assert streamed[-1].usage_metadata is not None and streamed[-1].usage_metadata["output_tokens"] <= 2


def test_a_stream_stopped_mid_decode_leaves_the_engine_usable(
    tiny_chat: EmbeddedV4ChatModel, unique_system: str
) -> None:
    tiny_chat.max_new_tokens = 400
    messages = [SystemMessage(unique_system), HumanMessage("Write a long essay.")]
    cancel = threading.Event()
    received = []
    with pytest.raises(GenerationCancelled):
        for chunk in tiny_chat.stream(messages, cancel=cancel):
            received.append(chunk)
            cancel.set()  # stop after the first streamed text
    assert received
    assert not tiny_chat.runtime.engine.has_unfinished()
    tiny_chat.max_new_tokens = 2
    after = tiny_chat.invoke(messages)
    assert after.usage_metadata is not None and after.usage_metadata["output_tokens"] >= 1


def test_think_max_needs_a_384k_context(tiny_runtime: V4Runtime) -> None:
    model = EmbeddedV4ChatModel.from_runtime(
        tiny_runtime, thinking=True, reasoning_effort="max", max_new_tokens=2
    )
    with pytest.raises(ThinkMaxContextError, match="384K"):
        model.invoke([HumanMessage("Prove it.")])


def _scripted(runtime: V4Runtime, text: str) -> Callable[..., Generator[int, None, GenerationOutcome]]:
    """Make the runtime 'generate' the token ids of ``text`` (then EOS), keeping its real bookkeeping."""
    ids = [*runtime.tokenizer.encode(text), runtime.tokenizer.special.eos]

    def stream_tokens(prompt_ids: list[int], **_: object) -> Generator[int, None, GenerationOutcome]:
        yield from ids
        return GenerationOutcome(
            token_ids=ids,
            finish_reason="stop",
            usage=Usage(
                prompt_tokens=len(prompt_ids),
                reused_tokens=0,
                computed_tokens=len(prompt_ids),
                output_tokens=len(ids),
            ),
            prefill_seconds=0.0,
            first_token_seconds=0.0,
            decode_seconds=0.0,
        )

    return stream_tokens


WELL_FORMED = (
    "Let me search.\n\n"
    f'<{D}tool_calls>\n<{D}invoke name="search">\n'
    f'<{D}parameter name="query" string="true">Dune author</{D}parameter>\n'
    f'<{D}parameter name="k" string="false">3</{D}parameter>\n'
    f"</{D}invoke>\n</{D}tool_calls>"
)


def test_dsml_tool_calls_become_langchain_tool_calls(
    tiny_chat: EmbeddedV4ChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_chat.runtime, "stream_tokens", _scripted(tiny_chat.runtime, WELL_FORMED))
    bound = tiny_chat.bind_tools([search])
    message = bound.invoke([HumanMessage("Who wrote Dune?")])
    assert isinstance(message, AIMessage)
    assert message.content == "Let me search."
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [
        ("search", {"query": "Dune author", "k": 3})
    ]
    assert message.response_metadata["finish_reason"] == "tool_calls"
    merged = None
    for chunk in bound.stream([HumanMessage("Who wrote Dune?")]):
        merged = chunk if merged is None else merged + chunk
    assert isinstance(merged, AIMessageChunk)
    assert [(call["name"], call["args"]) for call in merged.tool_calls] == [
        ("search", {"query": "Dune author", "k": 3})
    ]
    # the call renders back into the next prompt as the same DSML
    history = [HumanMessage("Who wrote Dune?"), message]
    assert WELL_FORMED in render_prompt(turns_from_langchain(history))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f'x\n\n<{D}tool_calls>\n<{D}invoke name="search">\n', "ended inside the tool-call block"),
        (
            f'\n\n<{D}tool_calls>\n<{D}invoke name="search">\n'
            f'<{D}parameter name="k" string="false">three</{D}parameter>\n</{D}invoke>\n</{D}tool_calls>',
            "is not JSON",
        ),
        (f'\n\n<{D}tool_calls>\n<{D}invoke name="fetch">\n</{D}invoke>\n</{D}tool_calls>', "unbound tool"),
    ],
)
def test_malformed_tool_calls_raise_clear_errors(
    tiny_chat: EmbeddedV4ChatModel, monkeypatch: pytest.MonkeyPatch, text: str, problem: str
) -> None:
    monkeypatch.setattr(tiny_chat.runtime, "stream_tokens", _scripted(tiny_chat.runtime, text))
    bound = tiny_chat.bind_tools([search])
    with pytest.raises(ToolCallOutputError, match=problem):
        bound.invoke([HumanMessage("Who wrote Dune?")])
    with pytest.raises(ToolCallOutputError, match=problem):
        list(bound.stream([HumanMessage("Who wrote Dune?")]))


def test_required_tool_call_missing_is_an_error(
    tiny_chat: EmbeddedV4ChatModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_chat.runtime, "stream_tokens", _scripted(tiny_chat.runtime, "No tools today."))
    with pytest.raises(ToolCallOutputError, match="tool call was required"):
        tiny_chat.bind_tools([search], tool_choice="any").invoke([HumanMessage("Search!")])


@tool
def mark(relevant: bool) -> str:
    """Mark the last document as relevant or not."""
    return str(relevant)


@pytest.mark.slow
def test_required_tool_call_is_decoded_under_the_dsml_grammar(
    tiny_chat: EmbeddedV4ChatModel, unique_system: str
) -> None:
    """Even random weights write a valid call when the DSML grammar constrains the decoding."""
    tiny_chat.max_new_tokens = 160
    bound = tiny_chat.bind_tools([search, mark], tool_choice="mark")
    messages: list[BaseMessage] = [SystemMessage(unique_system), HumanMessage("Is document 3 relevant?")]
    message = bound.invoke(messages)
    assert isinstance(message, AIMessage)
    assert message.tool_calls, message.response_metadata["raw_output"]
    assert {call["name"] for call in message.tool_calls} == {"mark"}
    assert all(isinstance(call["args"]["relevant"], bool) for call in message.tool_calls)
    assert message.response_metadata["raw_output"].startswith(f"\n\n<{D}tool_calls>\n")
    # the call and its result extend the conversation: the next turn reuses the whole first prompt
    first_prompt = message.response_metadata["prefill"]["prompt_tokens"]
    messages += [message, *[ToolMessage("ok", tool_call_id=call["id"]) for call in message.tool_calls]]
    tiny_chat.max_new_tokens = 4
    follow_up = tiny_chat.bind_tools([search, mark]).invoke(messages)
    assert follow_up.response_metadata["prefill"]["reused_tokens"] >= first_prompt


def test_stop_strings_end_the_text_and_the_generation(
    tiny_chat: EmbeddedV4ChatModel, unique_system: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_chat.max_new_tokens = 16
    messages = [SystemMessage(unique_system), HumanMessage("Say anything.")]
    free = tiny_chat.invoke(messages)
    stop = free.content[len(free.content) // 2 :][:2]  # a string the model is going to write
    assert stop
    cut = tiny_chat.invoke(messages, stop=[stop])
    assert cut.content == free.content[: free.content.index(stop)]
    assert cut.response_metadata["finish_reason"] == "stop"
    assert cut.usage_metadata is not None and free.usage_metadata is not None
    assert cut.usage_metadata["output_tokens"] < free.usage_metadata["output_tokens"]
    streamed = "".join(str(chunk.content) for chunk in tiny_chat.stream(messages, stop=[stop]))
    assert streamed == cut.content
    # a stop string split across tokens is found too, and never streamed in part
    monkeypatch.setattr(
        tiny_chat.runtime, "stream_tokens", _scripted(tiny_chat.runtime, '{"queries":["a"]} and on')
    )
    assert tiny_chat.invoke(messages, stop=["]}"]).content == '{"queries":["a"'
    chunks = [str(chunk.content) for chunk in tiny_chat.stream(messages, stop=["]}"])]
    assert "".join(chunks) == '{"queries":["a"'


def test_thinking_mode_reasoning_is_kept_apart_and_rendered_back(
    tiny_runtime: V4Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = EmbeddedV4ChatModel.from_runtime(tiny_runtime, thinking=True, max_new_tokens=64)
    text = "The novel is Dune; its author is Herbert.</think>Frank Herbert [1]."
    monkeypatch.setattr(tiny_runtime, "stream_tokens", _scripted(tiny_runtime, text))
    messages: list[BaseMessage] = [HumanMessage("Who wrote Dune?")]
    assert model.runtime.tokenizer.decode(model._plan(messages, {}, None).prompt_ids).endswith("<think>")
    reply = model.invoke(messages)
    assert reply.content == "Frank Herbert [1]."
    assert reply.additional_kwargs["reasoning_content"] == "The novel is Dune; its author is Herbert."
    merged = None
    for chunk in model.stream(messages):
        merged = chunk if merged is None else merged + chunk
    assert isinstance(merged, AIMessageChunk)
    assert merged.content == reply.content
    assert merged.additional_kwargs["reasoning_content"] == reply.additional_kwargs["reasoning_content"]
    # the next turn drops that reasoning (no tools bound) and opens the earlier turn with </think>
    follow = render_prompt(turns_from_langchain([*messages, reply, HumanMessage("When?")]), thinking=True)
    assert "Herbert.</think>" not in follow
    assert follow.endswith(
        "<｜Assistant｜></think>Frank Herbert [1].<｜end▁of▁sentence｜><｜User｜>When?<｜Assistant｜><think>"
    )
