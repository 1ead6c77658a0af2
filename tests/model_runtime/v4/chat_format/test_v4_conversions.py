"""LangChain and OpenAI-format conversations render to the same V4 prompt as the typed turns."""

from __future__ import annotations

import json

import pytest
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from deepscout.model_runtime.chat.tool_spec import ToolSpec
from deepscout.model_runtime.v4.chat_format.conversions import (
    tool_specs,
    turns_from_langchain,
    turns_from_openai,
)
from deepscout.model_runtime.v4.chat_format.messages import (
    Turn,
)
from deepscout.model_runtime.v4.chat_format.render import PromptEncodingError, render_prompt
from deepscout.model_runtime.v4.chat_format.token_count import count_chat_tokens
from deepscout.model_runtime.v4.chat_format.tokenizer import V4Tokenizer


@tool
def search(query: str, k: int = 5) -> str:
    """Search the local corpus."""
    return query * k


def _langchain_conversation() -> list:
    return [
        SystemMessage("You are a careful researcher."),
        HumanMessage("Who wrote Dune, and when?"),
        AIMessage(
            "Searching.",
            additional_kwargs={"reasoning_content": "I should search for the novel."},
            tool_calls=[
                {"name": "search", "args": {"query": "Dune novel author", "k": 3}, "id": "c1"},
                {"name": "read", "args": {"source_id": 7}, "id": "c2"},
            ],
        ),
        ToolMessage("[1] Dune (1965) by Frank Herbert", tool_call_id="c2"),
        ToolMessage("hits: 7, 9", tool_call_id="c1"),
        AIMessage(
            "Frank Herbert, 1965 [1].", additional_kwargs={"reasoning_content": "The source says 1965."}
        ),
        HumanMessage("Thanks. And the sequel?"),
    ]


def _openai_conversation() -> list[dict]:
    return [
        {"role": "system", "content": "You are a careful researcher."},
        {"role": "user", "content": [{"type": "text", "text": "Who wrote Dune, and when?"}]},
        {
            "role": "assistant",
            "content": "Searching.",
            "reasoning_content": "I should search for the novel.",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {
                        "name": "search",
                        "arguments": json.dumps({"query": "Dune novel author", "k": 3}),
                    },
                },
                {
                    "id": "c2",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"source_id": 7}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "c2", "content": "[1] Dune (1965) by Frank Herbert"},
        {"role": "tool", "tool_call_id": "c1", "content": "hits: 7, 9"},
        {
            "role": "assistant",
            "content": "Frank Herbert, 1965 [1].",
            "reasoning_content": "The source says 1965.",
        },
        {"role": "user", "content": "Thanks. And the sequel?"},
    ]


def test_langchain_and_openai_conversations_match_the_typed_turns(
    research_turns: list[Turn], search_tools: list[ToolSpec]
) -> None:
    assert turns_from_langchain(_langchain_conversation()) == research_turns
    assert turns_from_openai(_openai_conversation()) == research_turns


def test_tool_specs_from_langchain_tools_and_openai_dicts(search_tools: list[ToolSpec]) -> None:
    (spec,) = tool_specs([search])
    assert spec.name == "search" and spec.description == "Search the local corpus."
    assert set(spec.parameters["properties"]) == {"query", "k"}
    openai_tools = [{"type": "function", "function": t.schema()} for t in search_tools]
    assert tool_specs(openai_tools) == search_tools


def test_count_chat_tokens_counts_the_rendered_prompt(
    v4_tokenizer: V4Tokenizer, research_turns: list[Turn], search_tools: list[ToolSpec]
) -> None:
    openai_tools = [{"type": "function", "function": t.schema()} for t in search_tools]
    counted = count_chat_tokens(_openai_conversation(), tools=openai_tools, thinking=True)
    expected = v4_tokenizer.encode(render_prompt(research_turns, tools=search_tools, thinking=True))
    assert counted == len(expected)
    assert count_chat_tokens(_openai_conversation()) < counted


def test_unsupported_messages_are_rejected() -> None:
    with pytest.raises(PromptEncodingError, match="ChatMessage"):
        turns_from_langchain([ChatMessage(content="x", role="critic")])
    with pytest.raises(PromptEncodingError, match="role"):
        turns_from_openai([{"role": "critic", "content": "x"}])
