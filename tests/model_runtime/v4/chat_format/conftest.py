"""Shared fixtures of the V4 encoding tests: the real tokenizer and a multi-turn research conversation."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from deepscout.model_runtime.chat.tool_spec import ToolSpec
from deepscout.model_runtime.v4.chat_format.messages import (
    AssistantTurn,
    SystemTurn,
    ToolCall,
    ToolResultTurn,
    Turn,
    UserTurn,
)
from deepscout.model_runtime.v4.chat_format.tokenizer import V4Tokenizer, load_v4_tokenizer


@pytest.fixture(scope="session")
def v4_tokenizer() -> V4Tokenizer:
    return load_v4_tokenizer()


@pytest.fixture
def search_tools() -> list[ToolSpec]:
    return [
        ToolSpec(
            name="search",
            description="Search the local corpus.",
            parameters={
                "type": "object",
                "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
                "required": ["query"],
            },
        ),
        ToolSpec(
            name="read",
            description="Read a document.",
            parameters={"type": "object", "properties": {"source_id": {"type": "integer"}}},
        ),
    ]


@pytest.fixture
def research_turns() -> list[Turn]:
    """System, question, a thinking turn with two calls, their results (out of order), a follow-up."""
    return [
        SystemTurn("You are a careful researcher."),
        UserTurn("Who wrote Dune, and when?"),
        AssistantTurn(
            content="Searching.",
            reasoning="I should search for the novel.",
            tool_calls=(
                ToolCall("search", {"query": "Dune novel author", "k": 3}, id="c1"),
                ToolCall("read", {"source_id": 7}, id="c2"),
            ),
        ),
        ToolResultTurn("[1] Dune (1965) by Frank Herbert", tool_call_id="c2"),
        ToolResultTurn("hits: 7, 9", tool_call_id="c1"),
        AssistantTurn(content="Frank Herbert, 1965 [1].", reasoning="The source says 1965."),
        UserTurn("Thanks. And the sequel?"),
    ]


@pytest.fixture
def counter_ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"
