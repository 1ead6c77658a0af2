"""A served chat model answering chat completions directly: OpenAI messages and tools in, the model's
reply (text or tool calls in OpenAI's format; DSML underneath for V4) out."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import Runnable

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.chat import ChatModel, usage_of
from deepscout.ui.http_errors import ApiError
from deepscout.ui.openai_schemas import (
    DONE_FRAME,
    ChatCompletionRequest,
    ChatMessage,
    NamedToolChoice,
    chunk_frame,
    completion_body,
    completion_id,
    error_frame,
)
from deepscout.ui.thread_bridge import iterate_in_thread


def to_langchain(messages: list[ChatMessage]) -> list[BaseMessage]:
    converted: list[BaseMessage] = []
    for message in messages:
        text = message.text()
        if message.role in ("system", "developer"):
            converted.append(SystemMessage(content=text))
        elif message.role == "user":
            converted.append(HumanMessage(content=text))
        elif message.role == "assistant":
            calls = [
                {"name": call.function.name, "args": _arguments(call.function.arguments), "id": call.id}
                for call in message.tool_calls or []
            ]
            converted.append(AIMessage(content=text, tool_calls=calls))
        else:
            if not message.tool_call_id:
                raise ApiError(400, "a tool message needs tool_call_id")
            converted.append(ToolMessage(content=text, tool_call_id=message.tool_call_id))
    return converted


def _arguments(text: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise ApiError(400, f"tool call arguments are not JSON: {error}") from error
    if not isinstance(parsed, dict):
        raise ApiError(400, "tool call arguments must be a JSON object")
    return parsed


def _bound(model: ChatModel, request: ChatCompletionRequest) -> Runnable[Any, Any]:
    if not request.tools or request.tool_choice == "none":
        return model
    choice: str | None = None
    if isinstance(request.tool_choice, NamedToolChoice):
        choice = request.tool_choice.function.get("name")
        if choice not in {tool.function.name for tool in request.tools}:
            raise ApiError(400, f"tool_choice names {choice!r}, which is not among the tools")
    elif request.tool_choice == "required":
        choice = "required"
    return model.bind_tools([tool.model_dump() for tool in request.tools], tool_choice=choice)


def _openai_tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    return [
        {
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["args"])},
        }
        for call in message.tool_calls
    ]


def _limits(request: ChatCompletionRequest) -> dict[str, Any]:
    return {} if request.token_cap is None else {"max_new_tokens": request.token_cap}


async def complete(model: ChatModel, name: str, request: ChatCompletionRequest) -> dict[str, Any]:
    runnable = _bound(model, request)
    messages = to_langchain(request.messages)
    reply: AIMessage = await asyncio.to_thread(runnable.invoke, messages, **_limits(request))
    calls = _openai_tool_calls(reply)
    message: dict[str, Any] = {"role": "assistant", "content": None if calls else str(reply.content)}
    if calls:
        message["tool_calls"] = calls
    return completion_body(completion_id(), name, message, "tool_calls" if calls else "stop", usage_of(reply))


def stream(model: ChatModel, name: str, request: ChatCompletionRequest) -> AsyncIterator[str]:
    """The completion as SSE frames; the request is checked before the first frame."""
    return _frames(model, _bound(model, request), to_langchain(request.messages), name, request)


async def _frames(
    model: ChatModel,
    runnable: Runnable[Any, Any],
    messages: list[BaseMessage],
    name: str,
    request: ChatCompletionRequest,
) -> AsyncIterator[str]:
    ident = completion_id()
    stop = threading.Event()
    yield chunk_frame(ident, name, {"role": "assistant", "content": ""})
    total: AIMessageChunk | None = None
    streams_text = runnable is model  # with tools bound, text is known only once no call was made
    chunks = iterate_in_thread(lambda: runnable.stream(messages, cancel=stop, **_limits(request)), stop=stop)
    try:
        async for chunk in chunks:
            total = chunk if total is None else total + chunk
            if streams_text and isinstance(chunk.content, str) and chunk.content:
                yield chunk_frame(ident, name, {"content": chunk.content})
    except DeepscoutError as error:  # e.g. the prompt does not fit the model's window
        yield error_frame(str(error))
        yield DONE_FRAME
        return
    reply = AIMessage(
        content=total.content if total else "",
        tool_calls=total.tool_calls if total else [],
        response_metadata=total.response_metadata if total else {},
        usage_metadata=total.usage_metadata if total else None,
    )
    calls = _openai_tool_calls(reply)
    if calls:
        yield chunk_frame(ident, name, {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]})
    elif not streams_text and reply.content:
        yield chunk_frame(ident, name, {"content": str(reply.content)})
    yield chunk_frame(ident, name, {}, "tool_calls" if calls else "stop", usage_of(reply))
    yield DONE_FRAME
