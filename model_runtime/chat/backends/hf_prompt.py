"""The prompt of an embedded Hugging Face model: LangChain messages and bound tools → ChatML text.

What a call asks for decides the prompt and the JSON schema its output is decoded under: free text (no
schema), tool calls (the tool catalogue in the system turn; a JSON array of calls, or ``{"answer": ...}``
when calling is optional) or structured output (the schema as an instruction, then the object itself).
The wording of the tool catalogue lives in :mod:`.tool_prompts`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from deepscout.model_runtime.chat.backends import tool_prompts
from deepscout.model_runtime.chat.constrained import (
    cap_strings,
    dump_compact,
    strict_schema,
    tool_call_schema,
)
from deepscout.model_runtime.chat.embedded_base import OutputKind, required_tool
from deepscout.model_runtime.chat.message_text import content_text
from deepscout.model_runtime.chat.tool_spec import ToolSpec


@dataclass(frozen=True)
class ChatMLPrompt:
    """The prompt text of one call and, unless the output is free text, the schema it is decoded under."""

    text: str
    kind: OutputKind
    schema: dict[str, Any] | None = None
    tool_names: frozenset[str] = frozenset()


def chatml_prompt(
    messages: Sequence[BaseMessage],
    *,
    tools: Sequence[dict[str, Any]] | None,
    tool_choice: str | dict[str, Any] | bool | None,
    response_format: Mapping[str, Any] | None,
    max_argument_chars: int,
    max_parallel_calls: int,
) -> ChatMLPrompt:
    """The prompt for ``messages`` with the bound OpenAI-format ``tools``, ``tool_choice`` and
    ``response_format``; string arguments without a ``maxLength`` are capped at ``max_argument_chars``."""
    specs = [_tool_spec(tool, max_argument_chars) for tool in tools or []]
    required = required_tool(tool_choice, {spec.name for spec in specs})
    if isinstance(required, str):
        specs = [spec for spec in specs if spec.name == required]
    use_tools = bool(specs) and tool_choice != "none" and response_format is None
    system_extra = ""
    if use_tools:
        examples = {tool["function"]["name"]: _schema_examples(tool) for tool in tools or []}
        system_extra = tool_prompts.tools_system_prompt(specs, examples, allow_answer=not required)
    text = render_conversation(messages, system_extra)
    if response_format is not None:
        schema = strict_schema(response_format["schema"])
        instruction = tool_prompts.STRUCTURED_OUTPUT_INSTRUCTION.format(schema=dump_compact(schema))
        text += tool_prompts.chatml_turn("system", instruction) + tool_prompts.generation_prompt()
        return ChatMLPrompt(text, "structured", schema)
    text += tool_prompts.generation_prompt()
    if not use_tools:
        return ChatMLPrompt(text, "text")
    schema = tool_call_schema(specs, max_calls=max_parallel_calls, allow_answer=not required)
    return ChatMLPrompt(text, "tools", schema, frozenset(spec.name for spec in specs))


def render_conversation(messages: Sequence[BaseMessage], system_extra: str) -> str:
    """The ChatML turns of ``messages`` (a default system turn first when they have none), with
    ``system_extra`` appended to the system turn."""
    if not messages:
        raise ValueError("cannot generate from an empty message list")
    tool_names = {
        call["id"]: call["name"]
        for message in messages
        if isinstance(message, AIMessage)
        for call in message.tool_calls
    }
    parts: list[str] = []
    rest = list(messages)
    system = tool_prompts.DEFAULT_SYSTEM_PROMPT
    if isinstance(rest[0], SystemMessage):
        system = content_text(rest.pop(0).content)
    if system_extra:
        system = f"{system}\n\n{system_extra}"
    parts.append(tool_prompts.chatml_turn("system", system))
    for message in rest:
        text = content_text(message.content)
        if isinstance(message, SystemMessage):
            parts.append(tool_prompts.chatml_turn("system", text))
        elif isinstance(message, HumanMessage):
            parts.append(tool_prompts.chatml_turn("user", text))
        elif isinstance(message, AIMessage):
            parts.append(tool_prompts.chatml_turn("assistant", _assistant_text(message)))
        elif isinstance(message, ToolMessage):
            name = message.name or tool_names.get(message.tool_call_id, "tool")
            header = tool_prompts.TOOL_RESULT_HEADER.format(name=name, call_id=message.tool_call_id)
            parts.append(tool_prompts.chatml_turn("user", f"{header}\n{text}"))
        else:
            parts.append(tool_prompts.chatml_turn(message.type, text))
    return "".join(parts)


def _assistant_text(message: AIMessage) -> str:
    """An assistant turn as the model wrote it (its raw output), else its tool calls as the grammar would."""
    raw = message.response_metadata.get("raw_output")
    if isinstance(raw, str):
        return raw
    if message.tool_calls:
        return dump_compact(
            [{"name": call["name"], "arguments": call["args"]} for call in message.tool_calls]
        )
    return content_text(message.content)


def _tool_spec(tool: Mapping[str, Any], max_argument_chars: int) -> ToolSpec:
    function = tool["function"]
    declared = function.get("parameters") or {"type": "object", "properties": {}}
    parameters = cap_strings(strict_schema(declared), max_argument_chars)
    parameters.pop("examples", None)
    return ToolSpec(name=function["name"], description=function.get("description", ""), parameters=parameters)


def _schema_examples(tool: Mapping[str, Any]) -> list[dict[str, Any]]:
    examples = (tool["function"].get("parameters") or {}).get("examples", [])
    return [example for example in examples if isinstance(example, dict)]
