"""LangChain messages and OpenAI-format message dicts → V4 turns; LangChain/OpenAI tools → tool specs."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from deepscout.model_runtime.chat.message_text import content_text
from deepscout.model_runtime.chat.tool_spec import ToolSpec
from deepscout.model_runtime.v4.chat_format.messages import (
    AssistantTurn,
    PromptEncodingError,
    SystemTurn,
    ToolCall,
    ToolResultTurn,
    Turn,
    UserTurn,
)

REASONING_KEY = "reasoning_content"
"""Where an AIMessage keeps its reasoning (``additional_kwargs``), as the DeepSeek API names it."""


def turns_from_langchain(messages: Sequence[BaseMessage]) -> list[Turn]:
    """V4 turns of a LangChain conversation (reasoning from ``additional_kwargs['reasoning_content']``)."""
    turns: list[Turn] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            turns.append(SystemTurn(content_text(message.content)))
        elif isinstance(message, HumanMessage):
            turns.append(UserTurn(content_text(message.content)))
        elif isinstance(message, AIMessage):
            calls = tuple(
                ToolCall(name=call["name"], arguments=dict(call["args"]), id=call.get("id") or "")
                for call in message.tool_calls
            )
            reasoning = message.additional_kwargs.get(REASONING_KEY) or ""
            turns.append(AssistantTurn(content_text(message.content), str(reasoning), calls))
        elif isinstance(message, ToolMessage):
            turns.append(ToolResultTurn(content_text(message.content), tool_call_id=message.tool_call_id))
        else:
            raise PromptEncodingError(
                f"the V4 chat format has no place for a {type(message).__name__} ({message.type!r}); "
                "use system, human, AI and tool messages"
            )
    return turns


def tool_specs(tools: Sequence[Any]) -> list[ToolSpec]:
    """Tool specs of LangChain tools, pydantic classes, functions or OpenAI tool dicts."""
    specs = []
    for tool in tools:
        function = convert_to_openai_tool(tool)["function"]
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        specs.append(ToolSpec(function["name"], function.get("description", ""), parameters))
    return specs


def turns_from_openai(messages: Sequence[Mapping[str, Any]]) -> list[Turn]:
    """V4 turns of OpenAI chat-completions messages (``developer`` is treated as ``system``)."""
    turns: list[Turn] = []
    for message in messages:
        role = message.get("role")
        content = content_text(message.get("content"))
        if role in ("system", "developer"):
            turns.append(SystemTurn(content))
        elif role == "user":
            turns.append(UserTurn(content))
        elif role == "assistant":
            calls = []
            for call in message.get("tool_calls") or []:
                function = call["function"]
                arguments = function.get("arguments") or "{}"
                parsed = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
                calls.append(ToolCall(function["name"], parsed, id=call.get("id") or ""))
            reasoning = str(message.get(REASONING_KEY) or "")
            turns.append(AssistantTurn(content, reasoning, tuple(calls)))
        elif role == "tool":
            turns.append(ToolResultTurn(content, tool_call_id=str(message.get("tool_call_id") or "")))
        else:
            raise PromptEncodingError(f"unknown message role {role!r}; use system, user, assistant or tool")
    return turns
