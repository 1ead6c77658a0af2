"""The DeepSeek-V4 chat format (DeepSeek's ``encoding_dsv4``): conversation → prompt text → token ids.

Layout (``⟨BOS⟩`` etc. are single special tokens)::

    ⟨BOS⟩[Think Max instruction]{system}[\\n\\n## Tools ...]<｜User｜>{user}<｜Assistant｜><think>
        {reasoning}</think>{answer}[\\n\\n<｜DSML｜tool_calls>...</｜DSML｜tool_calls>]⟨EOS⟩
    <｜User｜><tool_result>{output}</tool_result>\\n\\n<tool_result>...</tool_result><｜Assistant｜><think>

- Thinking mode opens the assistant turn with ``<think>``; chat mode closes it at once with ``</think>``.
- V4 has no tool role: tool results (ordered as the preceding assistant called them) and any user text
  that follows them are joined with blank lines inside one user turn; consecutive user turns merge too.
- In thinking mode the reasoning of assistant turns before the last user turn is dropped (and those turns
  are opened with ``</think>``), unless tools are defined: then every turn keeps its reasoning.
- Tools are listed as JSON in the system prompt after the format's instructions; a call is a DSML block
  whose parameters are written raw with ``string="true"`` or as JSON with ``string="false"``.
- Think Max (``reasoning_effort="max"``) puts an instruction before the system prompt and needs a
  context window of at least 384K tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, Unpack

from deepscout.model_runtime.chat.tool_spec import ToolSpec
from deepscout.model_runtime.v4.chat_format import dsml_markers as tags
from deepscout.model_runtime.v4.chat_format.messages import (
    AssistantTurn,
    PromptEncodingError,
    SystemTurn,
    ToolCall,
    ToolResultTurn,
    Turn,
    UserTurn,
)
from deepscout.model_runtime.v4.chat_format.tokenizer import (
    ASSISTANT,
    BOS,
    DSML,
    EOS,
    THINK_END,
    THINK_START,
    USER,
    V4Tokenizer,
)

ReasoningEffort = Literal["high", "max"]

THINK_MAX_MIN_CONTEXT = 384 * 1024
"""Think Max needs at least this context window (DeepSeek's guidance for V4)."""


REASONING_EFFORT_MAX_INSTRUCTION = (
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to resolve the "
    "root cause, rigorously stress-testing your logic against all potential paths, edge cases, and "
    "adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n"
)

_TOOLS_SECTION = f"""## Tools

You have access to a set of tools to help answer the user's question. You can invoke tools by writing a \
"<{DSML}tool_calls>" block like the following:

<{DSML}tool_calls>
<{DSML}invoke name="$TOOL_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$TOOL_NAME2">
...
</{DSML}invoke>
</{DSML}tool_calls>

String parameters should be specified as is and set `string="true"`. For all other types (numbers, \
booleans, arrays, objects), pass the value in JSON format and set `string="false"`.

If thinking_mode is enabled (triggered by {THINK_START}), you MUST output your complete reasoning inside \
{THINK_START}...{THINK_END} BEFORE any tool calls or final response.

Otherwise, output directly after {THINK_END} with tool calls or final response.

### Available Tool Schemas

{{tool_schemas}}

You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.
"""

_RESPONSE_FORMAT_SECTION = (
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n{schema}"
)


class ThinkMaxContextError(PromptEncodingError):
    """Think Max was asked for with a context window below 384K tokens."""


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_tools_section(tools: Sequence[ToolSpec]) -> str:
    """The system-prompt section that teaches DSML and lists the tool schemas, one JSON per line."""
    schemas = "\n".join(_to_json(tool.schema()) for tool in tools)
    return _TOOLS_SECTION.replace("{tool_schemas}", schemas)


def _check_attribute(kind: str, value: str) -> None:
    if not value or any(char in value for char in '"<>\n') or DSML in value:
        raise PromptEncodingError(
            f"{kind} {value!r} cannot be written in DSML: it must be non-empty and free of quotes, "
            "angle brackets, newlines and the DSML marker"
        )


def render_tool_call(call: ToolCall) -> str:
    """One ``<｜DSML｜invoke>`` element: strings raw with ``string="true"``, other values as JSON."""
    _check_attribute("tool name", call.name)
    parameters = []
    for key, value in call.arguments.items():
        _check_attribute(f"parameter name of tool {call.name!r}", key)
        is_string = isinstance(value, str)
        text = value if is_string else _to_json(value)
        if DSML in text or EOS in text:
            raise PromptEncodingError(
                f"argument {key!r} of tool {call.name!r} contains a DSML or end-of-sentence marker, "
                "which the format cannot carry inside a parameter"
            )
        flag = "true" if is_string else "false"
        parameters.append(f'{tags.PARAMETER_OPEN}{key}" string="{flag}">{text}{tags.PARAMETER_CLOSE}')
    return f'{tags.INVOKE_OPEN}{call.name}">\n' + "\n".join(parameters) + f"\n{tags.INVOKE_CLOSE}"


def render_tool_calls(calls: Sequence[ToolCall]) -> str:
    """The tool-call block an assistant turn ends with (separator included)."""
    invokes = "\n".join(render_tool_call(call) for call in calls)
    return f"{tags.TOOL_CALLS_SEPARATOR}{tags.TOOL_CALLS_OPEN}\n{invokes}\n{tags.TOOL_CALLS_CLOSE}"


def render_assistant_turn(turn: AssistantTurn, *, with_reasoning: bool) -> str:
    """An assistant turn as the model writes it: ``{reasoning}</think>`` (thinking) + text + calls + EOS."""
    reasoning = f"{turn.reasoning}{THINK_END}" if with_reasoning else ""
    calls = render_tool_calls(turn.tool_calls) if turn.tool_calls else ""
    return f"{reasoning}{turn.content}{calls}{EOS}"


@dataclass
class _UserBlock:
    """Consecutive user and tool-result turns, merged into one V4 user turn."""

    parts: list[str | ToolResultTurn]

    def pieces(self) -> list[str]:
        """The rendered turn, one piece per part: the first opens the turn, the others their blank line."""
        texts = [
            part if isinstance(part, str) else f"<tool_result>{part.content}</tool_result>"
            for part in self.parts
        ]
        return [USER + texts[0], *("\n\n" + text for text in texts[1:])]


_Item = SystemTurn | AssistantTurn | _UserBlock


def _sort_tool_results(block: _UserBlock, *, call_order_for: dict[str, int]) -> None:
    results = [part for part in block.parts if isinstance(part, ToolResultTurn)]
    if len(results) < 2 or not call_order_for:
        return
    ordered = iter(sorted(results, key=lambda result: call_order_for.get(result.tool_call_id, 0)))
    block.parts = [next(ordered) if isinstance(part, ToolResultTurn) else part for part in block.parts]


def _call_orders(turns: Sequence[Turn]) -> list[dict[str, int]]:
    """For each turn, the tool-call order of the last assistant turn with calls before it."""
    orders: list[dict[str, int]] = []
    current: dict[str, int] = {}
    for turn in turns:
        if isinstance(turn, AssistantTurn) and turn.tool_calls:
            current = {call.id: i for i, call in enumerate(turn.tool_calls) if call.id}
        orders.append(current)
    return orders


def _merge(turns: Sequence[Turn]) -> list[_Item]:
    items: list[_Item] = []
    orders = _call_orders(turns)
    block_orders: list[tuple[_UserBlock, dict[str, int]]] = []
    for turn, order in zip(turns, orders, strict=True):
        if isinstance(turn, (SystemTurn, AssistantTurn)):
            items.append(turn)
            continue
        part: str | ToolResultTurn = turn.content if isinstance(turn, UserTurn) else turn
        if items and isinstance(items[-1], _UserBlock):
            items[-1].parts.append(part)
        else:
            block = _UserBlock([part])
            items.append(block)
            block_orders.append((block, order))
    for block, order in block_orders:
        _sort_tool_results(block, call_order_for=order)
    return items


@dataclass(frozen=True)
class PromptSegment:
    """A piece of the prompt; an assistant turn's text (from its reasoning to its EOS) is one segment."""

    text: str
    assistant_turn: int | None = None
    """Index in ``turns`` of the assistant turn this segment renders (None for everything else)."""
    checkpoint: bool = False
    """A later prompt likely shares the text up to this segment's end (set on user text only)."""


class PromptOptions(TypedDict, total=False):
    """The keyword options of :func:`render_prompt_segments` (defaults and meaning there), which
    :func:`render_prompt` and :func:`encode_prompt` pass on unchanged."""

    tools: Sequence[ToolSpec]
    thinking: bool
    reasoning_effort: ReasoningEffort | None
    context_window: int | None
    drop_thinking: bool
    response_format: dict[str, Any] | None


def render_prompt_segments(
    turns: Sequence[Turn],
    *,
    tools: Sequence[ToolSpec] = (),
    thinking: bool = False,
    reasoning_effort: ReasoningEffort | None = None,
    context_window: int | None = None,
    drop_thinking: bool = True,
    response_format: dict[str, Any] | None = None,
) -> list[PromptSegment]:
    """The V4 prompt text for ``turns``, ending with the assistant opening when a user turn is last.

    ``tools`` are written into the first system turn, or into an empty system turn placed first when the
    conversation has none. ``response_format`` (a JSON schema the answer must follow) is written after
    the last user turn's text, as the format does for a developer turn, so the conversation before it
    stays a shared token prefix. ``reasoning_effort="max"`` (Think Max) requires ``thinking=True`` and a
    ``context_window`` of at least 384K tokens.

    Segments end where a later prompt is likely to diverge from this one, marked ``checkpoint``: in the
    last user turn after the text of its next-to-last part (the next round adds parts before the last,
    the instruction) and after its text (a retry adds a response format, the next turn an answer).
    """
    if reasoning_effort not in (None, "high", "max"):
        raise PromptEncodingError(f"reasoning_effort must be 'high', 'max' or None, got {reasoning_effort!r}")
    if reasoning_effort == "max":
        if not thinking:
            raise PromptEncodingError("Think Max (reasoning_effort='max') needs thinking=True")
        if context_window is None or context_window < THINK_MAX_MIN_CONTEXT:
            raise ThinkMaxContextError(
                f"Think Max needs a context window of at least {THINK_MAX_MIN_CONTEXT:,} tokens (384K); "
                f"got {context_window}: raise the context window or use reasoning_effort='high'"
            )
    if not turns and not tools:
        raise PromptEncodingError("cannot render an empty conversation")

    items = _merge(turns)
    system_extra = "\n\n" + render_tools_section(tools) if tools else ""
    system_index = 0 if items and isinstance(items[0], SystemTurn) else None
    if system_extra and system_index is None:
        items.insert(0, SystemTurn(""))
        system_index = 0

    keep_all_reasoning = not drop_thinking or bool(tools)
    last_user = max((i for i, item in enumerate(items) if isinstance(item, _UserBlock)), default=-1)
    last_block = items[last_user] if last_user >= 0 else None
    shared_parts = len(last_block.parts) if isinstance(last_block, _UserBlock) else 0
    checkpoints = range(max(shared_parts - 2, 0), shared_parts)  # the last user turn's parts they follow
    if response_format is not None:
        if not isinstance(last_block, _UserBlock):
            raise PromptEncodingError("a response format needs a user turn to follow")
        section = _RESPONSE_FORMAT_SECTION.format(schema=_to_json(response_format))
        items[last_user] = _UserBlock([*last_block.parts, section])

    turn_index = {id(turn): i for i, turn in enumerate(turns) if isinstance(turn, AssistantTurn)}
    pieces = [BOS]
    if reasoning_effort == "max":
        pieces.append(REASONING_EFFORT_MAX_INSTRUCTION)
    segments: list[PromptSegment] = []
    for index, item in enumerate(items):
        if isinstance(item, SystemTurn):
            pieces.append(item.content + (system_extra if index == system_index else ""))
        elif isinstance(item, AssistantTurn):
            with_reasoning = thinking and (keep_all_reasoning or index > last_user)
            segments.append(PromptSegment("".join(pieces)))
            pieces = []
            text = render_assistant_turn(item, with_reasoning=with_reasoning)
            segments.append(PromptSegment(text, turn_index[id(item)]))
        else:
            for part, piece in enumerate(item.pieces()):
                pieces.append(piece)
                if index == last_user and part in checkpoints:
                    segments.append(PromptSegment("".join(pieces), checkpoint=True))
                    pieces = []
            following = items[index + 1] if index + 1 < len(items) else None
            if following is None or isinstance(following, AssistantTurn):
                opens_thinking = thinking and (keep_all_reasoning or index >= last_user)
                pieces.append(ASSISTANT + (THINK_START if opens_thinking else THINK_END))
    segments.append(PromptSegment("".join(pieces)))
    return [segment for segment in segments if segment.text]


def render_prompt(turns: Sequence[Turn], **options: Unpack[PromptOptions]) -> str:
    """The V4 prompt text for ``turns`` (see :func:`render_prompt_segments` for the options)."""
    return "".join(segment.text for segment in render_prompt_segments(turns, **options))


def encode_prompt(
    tokenizer: V4Tokenizer, turns: Sequence[Turn], **options: Unpack[PromptOptions]
) -> list[int]:
    """Token ids of :func:`render_prompt` (the BOS and role markers encode to their single ids)."""
    return tokenizer.encode(render_prompt(turns, **options))
