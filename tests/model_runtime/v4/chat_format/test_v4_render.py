"""The V4 chat format, rendered exactly (expected strings written out by hand) and tokenized."""

from __future__ import annotations

import json

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
from deepscout.model_runtime.v4.chat_format.render import (
    PromptEncodingError,
    ThinkMaxContextError,
    encode_prompt,
    render_prompt,
    render_tools_section,
)
from deepscout.model_runtime.v4.chat_format.tokenizer import V4Tokenizer

B, E = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
U, A = "<｜User｜>", "<｜Assistant｜>"


def test_chat_and_thinking_openings() -> None:
    turns: list[Turn] = [SystemTurn("Be brief."), UserTurn("Hi")]
    assert render_prompt(turns) == f"{B}Be brief.{U}Hi{A}</think>"
    assert render_prompt(turns, thinking=True) == f"{B}Be brief.{U}Hi{A}<think>"


def test_earlier_reasoning_is_dropped_in_thinking_mode() -> None:
    turns: list[Turn] = [
        SystemTurn("S"),
        UserTurn("Q1"),
        AssistantTurn(content="A1", reasoning="R1"),
        UserTurn("Q2"),
    ]
    assert render_prompt(turns, thinking=True) == f"{B}S{U}Q1{A}</think>A1{E}{U}Q2{A}<think>"
    kept = render_prompt(turns, thinking=True, drop_thinking=False)
    assert kept == f"{B}S{U}Q1{A}<think>R1</think>A1{E}{U}Q2{A}<think>"
    assert render_prompt(turns) == f"{B}S{U}Q1{A}</think>A1{E}{U}Q2{A}</think>"


def test_multi_turn_with_tools_keeps_reasoning_and_merges_results(
    research_turns: list[Turn], search_tools: list[ToolSpec]
) -> None:
    prompt = render_prompt(research_turns, tools=search_tools, thinking=True)
    system = "You are a careful researcher.\n\n" + render_tools_section(search_tools)
    dsml = "｜DSML｜"
    conversation = (
        f"{U}Who wrote Dune, and when?{A}<think>"
        "I should search for the novel.</think>Searching.\n\n"
        f"<{dsml}tool_calls>\n"
        f'<{dsml}invoke name="search">\n'
        f'<{dsml}parameter name="query" string="true">Dune novel author</{dsml}parameter>\n'
        f'<{dsml}parameter name="k" string="false">3</{dsml}parameter>\n'
        f"</{dsml}invoke>\n"
        f'<{dsml}invoke name="read">\n'
        f'<{dsml}parameter name="source_id" string="false">7</{dsml}parameter>\n'
        f"</{dsml}invoke>\n"
        f"</{dsml}tool_calls>{E}"
        f"{U}<tool_result>hits: 7, 9</tool_result>\n\n"
        f"<tool_result>[1] Dune (1965) by Frank Herbert</tool_result>{A}<think>"
        f"The source says 1965.</think>Frank Herbert, 1965 [1].{E}"
        f"{U}Thanks. And the sequel?{A}<think>"
    )
    assert prompt == B + system + conversation


def test_tools_section_lists_each_schema_as_one_json_line(search_tools: list[ToolSpec]) -> None:
    section = render_tools_section(search_tools)
    assert section.startswith("## Tools\n\nYou have access to a set of tools")
    assert section.endswith(
        "You MUST strictly follow the above defined tool name and parameter schemas to invoke tool calls.\n"
    )
    lines = section.split("### Available Tool Schemas\n\n")[1].split("\n\nYou MUST")[0].split("\n")
    assert [json.loads(line) for line in lines] == [tool.schema() for tool in search_tools]


def test_tools_without_system_turn_get_an_empty_one(search_tools: list[ToolSpec]) -> None:
    prompt = render_prompt([UserTurn("Q")], tools=search_tools)
    assert prompt == f"{B}\n\n{render_tools_section(search_tools)}{U}Q{A}</think>"


def test_response_format_follows_the_last_user_text() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    prompt = render_prompt([SystemTurn("S"), UserTurn("Q")], response_format=schema)
    expected_user = (
        "Q\n\n## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n"
        '{"type": "object", "properties": {"answer": {"type": "string"}}}'
    )
    assert prompt == f"{B}S{U}{expected_user}{A}</think>"
    with pytest.raises(PromptEncodingError, match="user turn"):
        render_prompt([SystemTurn("S")], response_format=schema)


def test_tool_results_after_calls_open_the_next_assistant_turn() -> None:
    turns: list[Turn] = [
        UserTurn("Q"),
        AssistantTurn(tool_calls=(ToolCall("search", {"query": "q"}, id="a"),)),
        ToolResultTurn("out", tool_call_id="a"),
    ]
    prompt = render_prompt(turns, thinking=True)
    assert prompt.endswith(f"</｜DSML｜tool_calls>{E}{U}<tool_result>out</tool_result>{A}<think>")
    # no tools bound: the calling turn precedes the last user turn, so it is opened like a chat turn
    assert prompt.startswith(f"{B}{U}Q{A}</think>\n\n<｜DSML｜tool_calls>")


def test_think_max_prefix_and_context_check() -> None:
    turns: list[Turn] = [SystemTurn("S"), UserTurn("Q")]
    prompt = render_prompt(turns, thinking=True, reasoning_effort="max", context_window=1_048_576)
    assert prompt.startswith(f"{B}Reasoning Effort: Absolute maximum with no shortcuts permitted.\n")
    assert prompt.endswith(f"no assumption is left unchecked.\n\nS{U}Q{A}<think>")
    assert render_prompt(turns, thinking=True, reasoning_effort="high") == f"{B}S{U}Q{A}<think>"
    with pytest.raises(ThinkMaxContextError, match="384K"):
        render_prompt(turns, thinking=True, reasoning_effort="max", context_window=131_072)
    with pytest.raises(ThinkMaxContextError):
        render_prompt(turns, thinking=True, reasoning_effort="max")
    with pytest.raises(PromptEncodingError, match="thinking=True"):
        render_prompt(turns, reasoning_effort="max", context_window=1_048_576)


def test_unwritable_calls_are_rejected() -> None:
    bad_name = [UserTurn("Q"), AssistantTurn(tool_calls=(ToolCall('se"arch', {}),)), UserTurn("x")]
    with pytest.raises(PromptEncodingError, match="tool name"):
        render_prompt(bad_name)
    bad_value = [
        UserTurn("Q"),
        AssistantTurn(tool_calls=(ToolCall("search", {"query": "a</｜DSML｜parameter>"}),)),
        UserTurn("x"),
    ]
    with pytest.raises(PromptEncodingError, match="DSML"):
        render_prompt(bad_value)
    with pytest.raises(PromptEncodingError, match="reasoning_effort"):
        render_prompt([UserTurn("Q")], reasoning_effort="low")  # type: ignore[arg-type]


def test_token_ids_of_a_multi_turn_prompt(
    v4_tokenizer: V4Tokenizer, research_turns: list[Turn], search_tools: list[ToolSpec]
) -> None:
    ids = encode_prompt(v4_tokenizer, research_turns, tools=search_tools, thinking=True)
    special = v4_tokenizer.special
    assert ids[0] == special.bos
    assert ids.count(special.bos) == 1
    assert ids.count(special.user) == 3
    assert ids.count(special.assistant) == 3
    assert ids.count(special.eos) == 2
    assert ids[-2:] == [special.assistant, special.think_start]
    # every user marker is followed, later, by an assistant marker before the next user marker
    user_at = [i for i, t in enumerate(ids) if t == special.user]
    assistant_at = [i for i, t in enumerate(ids) if t == special.assistant]
    assert all(u < a for u, a in zip(user_at, assistant_at, strict=True))
    # DSML markers: 9 in the tools section's instructions, 2 + (2 + 2*2) + (2 + 2*1) in the calls
    assert ids.count(special.dsml) == 9 + 12
    # thinking: two reasoning blocks kept (tools are defined) and the final opening
    assert ids.count(special.think_start) >= 3
    assert v4_tokenizer.decode(ids) == render_prompt(research_turns, tools=search_tools, thinking=True)


def test_append_only_conversation_extends_the_token_prefix(
    v4_tokenizer: V4Tokenizer, research_turns: list[Turn], search_tools: list[ToolSpec]
) -> None:
    """With tools bound, a later turn's prompt starts with the earlier prompt's tokens (prefix reuse)."""
    first = encode_prompt(v4_tokenizer, research_turns[:2], tools=search_tools, thinking=True)
    later = encode_prompt(v4_tokenizer, research_turns, tools=search_tools, thinking=True)
    assert later[: len(first)] == first
