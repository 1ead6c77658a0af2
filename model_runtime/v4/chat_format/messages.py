"""The conversation as the V4 chat format sees it: typed turns, tool specs and tool calls.

Backends convert LangChain messages into these; the renderer (:mod:`.render`) turns them into the
prompt text and the parser (:mod:`.dsml_parser`) turns generated text back into an assistant turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deepscout.errors import DeepscoutError


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool: arguments are decoded values (strings stay strings, others come from JSON)."""

    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass(frozen=True)
class SystemTurn:
    content: str


@dataclass(frozen=True)
class UserTurn:
    content: str


@dataclass(frozen=True)
class AssistantTurn:
    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ToolResultTurn:
    """The output of one tool call; V4 has no tool role, so it is written inside a user turn."""

    content: str
    tool_call_id: str = ""


Turn = SystemTurn | UserTurn | AssistantTurn | ToolResultTurn


class PromptEncodingError(DeepscoutError, ValueError):
    """The conversation cannot be written in the V4 format (the message says what to change)."""
