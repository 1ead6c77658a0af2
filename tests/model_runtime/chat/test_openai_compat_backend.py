"""The openai: backend against a real HTTP server on loopback (see conftest.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from deepscout.model_runtime.chat import (
    ChatBackendError,
    GenerationCancelled,
    GenerationDeadlineExceeded,
    load_chat_model,
)


@tool
def search_corpus(query: str) -> str:
    """Search the local corpus for passages matching a keyword query."""
    return "Stanley Kubrick directed it."


@pytest.fixture
def server_env(chat_server, monkeypatch):
    monkeypatch.setenv("DEEPSCOUT_OPENAI_BASE_URL", chat_server.url)
    monkeypatch.setenv("DEEPSCOUT_OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("DEEPSCOUT_OPENAI_MAX_RETRIES", "0")
    return chat_server


def test_plain_answer_with_server_usage(server_env, settings):
    model = load_chat_model("openai:deepseek-v4-flash", settings=settings)
    assert model.context_window == 1_048_576
    reply = model.invoke([HumanMessage("hello there")])
    assert isinstance(reply, AIMessage)
    assert reply.content == "You said: hello there"
    assert reply.additional_kwargs["reasoning_content"].startswith("The user asked about hello")
    assert reply.usage_metadata == {"input_tokens": 5, "output_tokens": 5, "total_tokens": 10}
    assert reply.response_metadata["prefill"] == {
        "prompt_tokens": 5,
        "reused_tokens": 2,
        "computed_tokens": 3,
    }
    assert reply.response_metadata["finish_reason"] == "stop"
    request = server_env.requests[-1]
    assert request["model"] == "deepseek-v4-flash" and request["stream"] is True


def test_streaming_yields_reasoning_then_text_deltas(server_env, settings):
    model = load_chat_model("openai:deepseek-v4-flash", settings=settings)
    chunks = list(model.stream([HumanMessage("tell me more please")]))
    texts = [c.content for c in chunks if c.content]
    assert len(texts) >= 4 and "".join(texts) == "You said: tell me more please"
    assert any(c.additional_kwargs.get("reasoning_content") for c in chunks)
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert isinstance(total, AIMessageChunk) and total.usage_metadata["total_tokens"] == 12


def test_tool_call_round_trip_sends_reasoning_back(server_env, settings):
    model = load_chat_model("openai:deepseek-v4-flash", settings=settings).bind_tools([search_corpus])
    question = HumanMessage("who directed 2001")
    first = model.invoke([question])
    assert first.tool_calls == [
        {"name": "search_corpus", "args": {"query": "who directed 2001"}, "id": "call_1", "type": "tool_call"}
    ]
    assert first.response_metadata["finish_reason"] == "tool_calls"
    result = ToolMessage(search_corpus.invoke(first.tool_calls[0]["args"]), tool_call_id="call_1")
    second = model.invoke([question, first, result])
    assert second.content == "Per the tool: Stanley Kubrick directed it."
    sent = server_env.requests[-1]["messages"][1]
    assert (
        sent["role"] == "assistant"
        and sent["reasoning_content"] == first.additional_kwargs["reasoning_content"]
    )
    assert sent["tool_calls"][0]["function"]["name"] == "search_corpus"


def test_missing_reasoning_content_gets_the_servers_400(server_env, settings):
    model = load_chat_model("openai:deepseek-v4-flash", settings=settings).bind_tools([search_corpus])
    bare = AIMessage(
        content="", tool_calls=[{"name": "search_corpus", "args": {"query": "x"}, "id": "call_1"}]
    )
    with pytest.raises(ChatBackendError) as caught:
        model.invoke([HumanMessage("q"), bare, ToolMessage("r", tool_call_id="call_1")])
    assert caught.value.status_code == 400
    assert "reasoning_content" in str(caught.value)


def test_forced_tool_choice_is_refused_by_the_server_and_never_sent_in_thinking_mode(server_env, settings):
    raw = openai.OpenAI(base_url=server_env.url, api_key="k", max_retries=0)
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    with pytest.raises(openai.BadRequestError):
        raw.chat.completions.create(
            model="deepseek-v4-flash",
            messages=[{"role": "user", "content": "q"}],
            tools=tools,
            tool_choice="required",
        )
    model = load_chat_model("openai:deepseek-v4-flash", settings=settings)
    reply = model.bind_tools([search_corpus], tool_choice="any").invoke([HumanMessage("who directed 2001")])
    assert reply.tool_calls and "tool_choice" not in server_env.requests[-1]


def with_server(settings, **fields):
    """``settings`` with these ``settings.openai`` fields, as an entry point would have built them."""
    return settings.model_copy(update={"openai": settings.openai.model_copy(update=fields)})


def test_thinking_off_forces_tool_choice_and_structured_output(server_env, settings):
    configured = with_server(settings, thinking=False, reasoning_effort="max")
    model = load_chat_model("openai:deepseek-v4-pro", settings=configured)

    class Query(BaseModel):
        query: str

    parsed = model.with_structured_output(Query).invoke("kubrick films")
    assert parsed == Query(query="kubrick films")
    request = server_env.requests[-1]
    assert request["thinking"] == {"type": "disabled"} and request["reasoning_effort"] == "max"
    assert request["tool_choice"] == "required"
    assert "reasoning_content" not in server_env.requests[-1]["messages"][0]


def test_deadline_and_cancel_stop_a_slow_stream(server_env, settings):
    server_env.delay_per_chunk_s = 0.3
    model = load_chat_model("openai:deepseek-v4-flash", settings=settings)
    started = time.monotonic()
    with pytest.raises(GenerationDeadlineExceeded):
        model.invoke([HumanMessage("a long question with many words")], deadline=time.monotonic() + 0.5)
    assert time.monotonic() - started < 2.0
    cancel = threading.Event()
    threading.Timer(0.4, cancel.set).start()
    with pytest.raises(GenerationCancelled):
        model.invoke([HumanMessage("another long question")], cancel=cancel)


def test_unreachable_server_is_a_clear_error(settings):
    configured = with_server(settings, base_url="http://127.0.0.1:9/v1", max_retries=0)
    model = load_chat_model("openai:some-model", settings=configured)
    with pytest.raises(ChatBackendError, match=r"cannot reach http://127\.0\.0\.1:9/v1"):
        model.invoke("hi")


def test_async_invoke_and_v4_token_counts(server_env, settings):
    from deepscout.model_runtime.v4.chat_format.token_count import count_chat_tokens

    model = load_chat_model("openai:deepseek-v4-flash", settings=settings)
    reply = asyncio.run(model.ainvoke([HumanMessage("async hello")]))
    assert reply.content == "You said: async hello"
    messages = [HumanMessage("who directed 2001"), reply]
    expected = count_chat_tokens(
        [{"role": "user", "content": "who directed 2001"}, {"role": "assistant", "content": reply.content}],
        thinking=True,
    )
    assert model.count_tokens(messages) == expected > 5
    assert model.count_tokens(messages, tools=[search_corpus]) > expected


def test_per_call_output_cap_is_sent_as_max_tokens(server_env, settings):
    model = load_chat_model("openai:deepseek-v4-flash", settings=settings)
    model.invoke([HumanMessage("hello there")], max_new_tokens=7)
    assert server_env.requests[-1]["max_tokens"] == 7
    model.invoke([HumanMessage("hello there")])
    assert "max_tokens" not in server_env.requests[-1]
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.invoke([HumanMessage("hello there")], max_new_tokens=0)
