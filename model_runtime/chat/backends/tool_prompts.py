"""Prompt text for embedded models: the ChatML turns, the tool catalogue and the tool-calling examples.

Small models produce *valid* calls under the grammar whatever the prompt says, but *useful* calls only
when the prompt shows what a good call looks like: short keyword queries, one fact per call, parallel
calls for independent facts. A tool's own examples come from its argument schema's ``examples``
(pydantic: ``model_config = ConfigDict(json_schema_extra={"examples": [{"query": "..."}]})``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deepscout.model_runtime.chat.constrained import (
    ANSWER_KEY,
    dump_compact,
)
from deepscout.model_runtime.chat.tool_spec import ToolSpec

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"

TOOLS_HEADER = """You can use tools. Reply with JSON only, nothing else.
To call tools, reply with a JSON array of calls: [{"name":"TOOL","arguments":{...}}].
Put several calls in one array when they are independent; they run in parallel.
Write each query with the names and key words of the user's question, one fact per query."""

ANSWER_INSTRUCTION = f"""When the results above already contain the answer, reply {{"{ANSWER_KEY}":"..."}} \
with the answer in one or two sentences instead of calling a tool."""

REQUIRED_INSTRUCTION = "You must call at least one tool now."

TOOL_RESULT_HEADER = "Result of tool {name} (call {call_id}):"


def tool_catalogue(tools: Sequence[ToolSpec], examples: dict[str, list[dict[str, Any]]]) -> str:
    """Tools as signatures (``name(arg: type, ...)``) with their descriptions, then any example calls."""
    lines = ["Tools:"]
    for tool in tools:
        properties = tool.parameters.get("properties", {})
        signature = ", ".join(f"{name}: {_type_name(schema)}" for name, schema in properties.items())
        lines.append(f"- {tool.name}({signature}): {tool.description.strip()}")
        for name, schema in properties.items():
            if isinstance(schema, dict) and schema.get("description"):
                lines.append(f"  where {name} is {schema['description'].strip()}")
        for example in examples.get(tool.name, [])[:2]:
            lines.append(f"  example call: {dump_compact([{'name': tool.name, 'arguments': example}])}")
    return "\n".join(lines)


def _type_name(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "enum" in schema:
        return " | ".join(dump_compact(value) for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list[{_type_name(schema.get('items'))}]"
    return str(kind)


def tools_system_prompt(
    tools: Sequence[ToolSpec], examples: dict[str, list[dict[str, Any]]], *, allow_answer: bool
) -> str:
    parts = [TOOLS_HEADER, tool_catalogue(tools, examples)]
    parts.append(ANSWER_INSTRUCTION if allow_answer else REQUIRED_INSTRUCTION)
    return "\n\n".join(parts)


STRUCTURED_OUTPUT_INSTRUCTION = "Reply with one JSON object that follows this schema, nothing else: {schema}"


def chatml_turn(role: str, content: str) -> str:
    return f"{TURN_START}{role}\n{content}{TURN_END}\n"


def generation_prompt() -> str:
    return f"{TURN_START}assistant\n"
