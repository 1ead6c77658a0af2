"""A Lark grammar (llguidance dialect) of a DSML tool-call block for a given tool set.

Decoding under it makes a model write exactly what :func:`.render.render_tool_calls` writes: the
block with one to ``max_calls`` invokes of the given tools, each parameter in schema order (required
ones always, optional ones optionally), strings raw with ``string="true"`` (no ``<``, bounded length) and
every other value as JSON valid for its schema with ``string="false"``. Used when a call is required.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from deepscout.model_runtime.chat.tool_spec import ToolSpec
from deepscout.model_runtime.v4.chat_format import dsml_markers as tags

DEFAULT_MAX_STRING_CHARS = 256
DEFAULT_MAX_CALLS = 4


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _parameter_rule(name: str, schema: dict[str, Any], max_string_chars: int) -> str:
    if schema.get("type") == "string" and not ({"enum", "const", "pattern", "format"} & schema.keys()):
        limit = min(int(schema.get("maxLength", max_string_chars)), max_string_chars)
        low = int(schema.get("minLength", 0))
        value = f"/[^<]{{{low},{limit}}}/"
        flag = "true"
    else:
        value = f"%json {json.dumps(schema, ensure_ascii=False)}"
        flag = "false"
    opening = _literal(f'{tags.PARAMETER_OPEN}{name}" string="{flag}">')
    return f"{opening} {value} {_literal(tags.PARAMETER_CLOSE + chr(10))}"


def tool_calls_grammar(
    tools: Sequence[ToolSpec],
    *,
    max_calls: int = DEFAULT_MAX_CALLS,
    max_string_chars: int = DEFAULT_MAX_STRING_CHARS,
) -> str:
    """The grammar of a tool-call block (separator included) of 1..``max_calls`` calls of ``tools``."""
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    if max_calls < 1:
        raise ValueError(f"max_calls must be at least 1, got {max_calls}")
    lines = [
        # Each separator belongs to the literal before it: llguidance's lexer does not backtrack out of a
        # lexeme, so "\n" followed by either an invoke or the closing tag must not be two choices.
        "start: "
        + _literal(f"{tags.TOOL_CALLS_SEPARATOR}{tags.TOOL_CALLS_OPEN}\n")
        + f" invoke{{1,{max_calls}}} "
        + _literal(tags.TOOL_CALLS_CLOSE),
        "invoke: " + " | ".join(f"invoke_{index}" for index in range(len(tools))),
    ]
    for index, tool in enumerate(tools):
        properties: dict[str, Any] = dict(tool.parameters.get("properties") or {})
        required = set(tool.parameters.get("required") or [])
        opening = _literal(f'{tags.INVOKE_OPEN}{tool.name}">\n')
        if not properties:
            lines.append(f"invoke_{index}: {opening} {_literal(f'{chr(10)}{tags.INVOKE_CLOSE}{chr(10)}')}")
            continue
        parts = []
        for position, (name, schema) in enumerate(properties.items()):
            rule = f"p_{index}_{position}"
            lines.append(f"{rule}: {_parameter_rule(name, dict(schema), max_string_chars)}")
            parts.append(rule if name in required else f"{rule}?")
        lines.append(f"invoke_{index}: {opening} {' '.join(parts)} {_literal(tags.INVOKE_CLOSE + chr(10))}")
    return "\n".join(lines) + "\n"
