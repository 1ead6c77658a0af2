"""The OpenAI-compatible endpoints under the ``openai`` client: the agent (``deepscout-agent``) with
citations as url_citation annotations and steps as reasoning_content, and served models directly
(SmolLM2 and the embedded DeepSeek-V4 runtime), streaming and not, with tool calls."""

from __future__ import annotations

from typing import Any

import pytest
from openai import APIError, BadRequestError, NotFoundError, OpenAI

from deepscout.model_runtime.chat import BackendRegistry
from deepscout.settings import ServerSettings, Settings

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]


def client_for(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)


def test_the_agent_answers_with_url_citations_and_reasoning(live_server) -> None:
    client = client_for(live_server)
    assert [model.id for model in client.models.list()] == ["deepscout-agent", "fake"]
    reply = client.chat.completions.create(
        model="deepscout-agent", messages=[{"role": "user", "content": "Who wrote Dracula?"}]
    )
    message = reply.choices[0].message
    assert message.content == "Bram Stoker wrote Dracula [1]."
    extra = message.model_extra or {}
    assert "Read [1]" in extra["reasoning_content"]
    (annotation,) = message.annotations or []
    assert annotation.type == "url_citation"
    cited = annotation.url_citation
    assert message.content[cited.start_index : cited.end_index] == "[1]"
    assert cited.url.startswith(f"{live_server}/v1/sources/")
    import httpx

    assert httpx.get(cited.url).json()["title"] == cited.title


def test_the_agent_streams_reasoning_then_answer_tokens_then_annotations(live_server) -> None:
    client = client_for(live_server)
    stream = client.chat.completions.create(
        model="deepscout-agent", messages=[{"role": "user", "content": "Who wrote Dracula?"}], stream=True
    )
    reasoning, content, annotations, finish = [], [], [], None
    for chunk in stream:
        delta = chunk.choices[0].delta
        extra = delta.model_extra or {}
        if extra.get("reasoning_content"):
            reasoning.append(extra["reasoning_content"])
        if delta.content:
            assert reasoning, "the steps come before the answer"
            content.append(delta.content)
        annotations.extend(extra.get("annotations") or [])
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(content) == "Bram Stoker wrote Dracula [1]." and len(content) > 1
    assert annotations[0]["type"] == "url_citation" and finish == "stop"


def test_unlisted_models_are_refused_by_the_client(live_server) -> None:
    with pytest.raises(NotFoundError, match="not served"):
        client_for(live_server).chat.completions.create(model="hf:/tmp", messages=ASK_WEATHER)


def _check_model(client: OpenAI, name: str) -> None:
    plain = client.chat.completions.create(model=name, messages=ASK_WEATHER, max_tokens=8)
    assert plain.choices[0].message.content and plain.usage and plain.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model=name, messages=ASK_WEATHER, max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) and chunks[-1].choices[0].finish_reason
    forced = {"type": "function", "function": {"name": "get_weather"}}
    called = client.chat.completions.create(
        model=name, messages=ASK_WEATHER, tools=[WEATHER_TOOL], tool_choice=forced, max_tokens=48
    )
    (call,) = called.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and called.choices[0].finish_reason == "tool_calls"
    streamed = client.chat.completions.create(
        model=name, messages=ASK_WEATHER, tools=[WEATHER_TOOL], tool_choice=forced, max_tokens=48, stream=True
    )
    calls = [call for chunk in streamed for call in chunk.choices[0].delta.tool_calls or []]
    assert calls and calls[0].function and calls[0].function.name == "get_weather"


@pytest.mark.slow
def test_smollm2_and_the_v4_runtime_serve_openai_clients(serve_app, tmp_path, corpus, own_smollm2) -> None:
    settings = Settings(
        home=tmp_path / "home",
        model="smollm2",
        server=ServerSettings(models=["smollm2", "deepseek-v4:random-tiny"]),
    )
    registry = BackendRegistry()
    registry.register("smollm2", lambda argument, settings: own_smollm2(), takes_argument=False)
    client = client_for(serve_app(settings, registry))
    agent = client.chat.completions.create(
        model="deepscout-agent", messages=[{"role": "user", "content": "Who wrote Dracula?"}]
    )
    assert (
        agent.choices[0].message.content
        and "Read [1]" in (agent.choices[0].message.model_extra or {})["reasoning_content"]
    )
    _check_model(client, "smollm2")
    _check_model(client, "deepseek-v4:random-tiny")


def test_a_deliberate_error_is_a_4xx_or_an_error_event_once_streaming(
    serve_app, make_settings, registry
) -> None:
    client = client_for(serve_app(make_settings(), registry))  # no corpus in this home
    question = [{"role": "user", "content": "Who wrote Dracula?"}]
    with pytest.raises(BadRequestError, match="corpus"):
        client.chat.completions.create(model="deepscout-agent", messages=question)
    with pytest.raises(APIError, match="corpus"):
        list(client.chat.completions.create(model="deepscout-agent", messages=question, stream=True))
