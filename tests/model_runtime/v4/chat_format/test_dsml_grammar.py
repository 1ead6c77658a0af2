"""The DSML tool-call grammar accepts exactly the renderer's blocks (checked token by token, llguidance)."""

from __future__ import annotations

import llguidance
import pytest

from deepscout.model_runtime.chat.tool_spec import ToolSpec
from deepscout.model_runtime.v4.chat_format.dsml_grammar import tool_calls_grammar
from deepscout.model_runtime.v4.chat_format.messages import (
    ToolCall,
)
from deepscout.model_runtime.v4.chat_format.render import render_tool_calls
from deepscout.model_runtime.v4.chat_format.tokenizer import V4Tokenizer

TOOLS = [
    ToolSpec(
        "search",
        "Search.",
        {
            "type": "object",
            "properties": {
                "query": {"type": "string", "maxLength": 80},
                "k": {"type": "integer", "minimum": 1},
                "filters": {
                    "type": "object",
                    "properties": {"year": {"type": "integer"}},
                    "additionalProperties": False,
                },
            },
            "required": ["query"],
        },
    ),
    ToolSpec("now", "The time.", {"type": "object", "properties": {}}),
]


@pytest.fixture(scope="module")
def ll_tokenizer(v4_tokenizer: V4Tokenizer) -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(v4_tokenizer.to_json(), n_vocab=129280, eos_token=v4_tokenizer.special.eos)


def _accepts(ll_tokenizer: llguidance.LLTokenizer, tokenizer: V4Tokenizer, grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(ll_tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    if matcher.is_error():
        raise AssertionError(matcher.get_error())
    return all(matcher.consume_token(t) for t in tokenizer.encode(text)) and matcher.is_accepting()


@pytest.mark.parametrize(
    "calls",
    [
        [ToolCall("search", {"query": "Dune author"})],
        [ToolCall("search", {"query": "Dune", "k": 3, "filters": {"year": 1965}}), ToolCall("now", {})],
        [ToolCall("now", {}), ToolCall("search", {"query": "x", "filters": {}})],
    ],
)
def test_rendered_calls_are_in_the_grammar(
    ll_tokenizer: llguidance.LLTokenizer, v4_tokenizer: V4Tokenizer, calls: list[ToolCall]
) -> None:
    grammar = tool_calls_grammar(TOOLS)
    assert _accepts(ll_tokenizer, v4_tokenizer, grammar, render_tool_calls(calls))


@pytest.mark.parametrize(
    "calls",
    [
        [ToolCall("fetch", {"url": "x"})],  # unknown tool
        [ToolCall("search", {"k": 3})],  # required parameter missing
        [ToolCall("search", {"query": "x", "k": "three"})],  # wrong type
        [ToolCall("search", {"k": 3, "query": "x"})],  # parameters out of schema order
        [ToolCall("search", {"query": "a<b"})],  # '<' cannot appear in a raw string value
    ],
)
def test_invalid_calls_are_outside_the_grammar(
    ll_tokenizer: llguidance.LLTokenizer, v4_tokenizer: V4Tokenizer, calls: list[ToolCall]
) -> None:
    grammar = tool_calls_grammar(TOOLS)
    assert not _accepts(ll_tokenizer, v4_tokenizer, grammar, render_tool_calls(calls))


def test_a_grammar_needs_tools() -> None:
    with pytest.raises(ValueError, match="at least one tool"):
        tool_calls_grammar([])


def test_the_number_of_calls_is_bounded(
    ll_tokenizer: llguidance.LLTokenizer, v4_tokenizer: V4Tokenizer
) -> None:
    grammar = tool_calls_grammar(TOOLS, max_calls=2)
    two = render_tool_calls([ToolCall("now", {}), ToolCall("now", {})])
    three = render_tool_calls([ToolCall("now", {})] * 3)
    assert _accepts(ll_tokenizer, v4_tokenizer, grammar, two)
    assert not _accepts(ll_tokenizer, v4_tokenizer, grammar, three)
