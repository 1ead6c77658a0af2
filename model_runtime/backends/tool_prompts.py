"""Prompt text for embedded models: the ChatML turns, the tool catalogue and the tool-calling examples.

Small models produce *valid* calls under the grammar whatever the prompt says, but *useful* calls only
when the prompt shows what a good call looks like: short keyword queries, one fact per call, parallel
calls for independent facts. A tool's own examples come from its argument schema's ``examples``
(pydantic: ``model_config = ConfigDict(json_schema_extra={"examples": [{"query": "..."}]})``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deepscout.model_runtime.constrained import ANSWER_KEY, ToolSpec, dump_compact

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"

TOOLS_HEADER = """You can use tools. Reply with JSON only, nothing else.
To call tools, reply with a JSON array of calls: [{"name":"TOOL","arguments":{...}}].
Put several calls in one array when they are independent; they run in parallel.
Use short keyword queries that name the entity and the fact you need, not the whole question."""

ANSWER_INSTRUCTION = f"""When the results above already contain the answer, reply {{"{ANSWER_KEY}":"..."}} \
with the answer in one or two sentences instead of calling a tool."""

REQUIRED_INSTRUCTION = "You must call at least one tool now."

GENERIC_EXAMPLE = """Example of good parallel calls for the question "Which river flows through the \
birthplace of the author of Dracula?":
[{"name":"search","arguments":{"query":"Dracula author"}},\
{"name":"search","arguments":{"query":"Bram Stoker birthplace"}}]"""

TOOL_RESULT_HEADER = "Result of tool {name} (call {call_id}):"


def tool_catalogue(tools: Sequence[ToolSpec], examples: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["Tools:"]
    for tool in tools:
        lines.append(f"- {tool.name}: {tool.description.strip()}")
        lines.append(f"  arguments schema: {dump_compact(tool.parameters)}")
        for example in examples.get(tool.name, [])[:2]:
            lines.append(f"  example call: {dump_compact([{'name': tool.name, 'arguments': example}])}")
    return "\n".join(lines)


def tools_system_prompt(
    tools: Sequence[ToolSpec], examples: dict[str, list[dict[str, Any]]], *, allow_answer: bool
) -> str:
    parts = [TOOLS_HEADER, tool_catalogue(tools, examples)]
    if not any(examples.values()):
        parts.append(GENERIC_EXAMPLE)
    parts.append(ANSWER_INSTRUCTION if allow_answer else REQUIRED_INSTRUCTION)
    return "\n\n".join(parts)


STRUCTURED_OUTPUT_INSTRUCTION = "Reply with one JSON object that follows this schema, nothing else: {schema}"


def chatml_turn(role: str, content: str) -> str:
    return f"{TURN_START}{role}\n{content}{TURN_END}\n"


def generation_prompt() -> str:
    return f"{TURN_START}assistant\n"
