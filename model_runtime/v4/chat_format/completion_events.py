"""What the DSML output parser (:mod:`.dsml_parser`) produces: streaming events and the parsed turn.

``CompletionParser.feed`` returns events as soon as they are certain: reasoning and answer text deltas,
and per tool call a start, fragments of its arguments as JSON text, and a finish with the decoded call.
``ParsedCompletion`` is the whole assistant turn once the text has ended.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepscout.model_runtime.v4.chat_format.messages import AssistantTurn, ToolCall


@dataclass(frozen=True)
class ReasoningDelta:
    """Reasoning text (between ``<think>`` and ``</think>``) that became certain."""

    text: str


@dataclass(frozen=True)
class ContentDelta:
    """Answer text that became certain (no marker can begin in it any more)."""

    text: str


@dataclass(frozen=True)
class ToolCallStarted:
    """A tool call's ``invoke`` opened: its position in the block, its id and the tool's name."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgumentsDelta:
    """A fragment of the call's arguments as JSON text; the fragments of one call concatenate to it."""

    index: int
    text: str


@dataclass(frozen=True)
class ToolCallFinished:
    """A tool call closed; ``call`` holds its parsed arguments."""

    index: int
    call: ToolCall


ParseEvent = ReasoningDelta | ContentDelta | ToolCallStarted | ToolCallArgumentsDelta | ToolCallFinished


@dataclass(frozen=True)
class ParsedCompletion:
    """One generated assistant turn."""

    reasoning: str
    content: str
    tool_calls: tuple[ToolCall, ...]
    reasoning_closed: bool
    """False when thinking mode ended (end of text or EOS) before ``</think>``: there is no answer."""
    ended_with_eos: bool

    def to_turn(self) -> AssistantTurn:
        return AssistantTurn(content=self.content, reasoning=self.reasoning, tool_calls=self.tool_calls)
