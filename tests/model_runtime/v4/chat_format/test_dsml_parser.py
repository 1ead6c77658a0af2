"""The streaming DSML parser: round trips with the renderer, chunking independence, malformed output."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Sequence

import pytest

from deepscout.model_runtime.v4.chat_format.completion_events import (
    ContentDelta,
    ParsedCompletion,
    ParseEvent,
    ReasoningDelta,
    ToolCallArgumentsDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from deepscout.model_runtime.v4.chat_format.dsml_parser import (
    CompletionParser,
    DSMLParseError,
    parse_completion,
)
from deepscout.model_runtime.v4.chat_format.messages import AssistantTurn, ToolCall
from deepscout.model_runtime.v4.chat_format.render import render_assistant_turn

D = "｜DSML｜"
EOS = "<｜end▁of▁sentence｜>"

CALLS = (
    ToolCall(
        "search",
        {
            "query": 'Dune "1965" <novel> & 北京\nsecond line',
            "k": 3,
            "exact": False,
            "filters": {"year": [1965, 1966], "lang": None},
            "numeric_string": "123",
            "empty": "",
        },
        id="call_0",
    ),
    ToolCall("read", {"source_id": 7}, id="call_1"),
    ToolCall("noop", {}, id="call_2"),
)

TURNS = [
    AssistantTurn(content="Searching now.", reasoning="Think: search first.\n\nThen read.", tool_calls=CALLS),
    AssistantTurn(content="Only text, with <tags> and a trailing blank line\n\n", reasoning="r"),
    AssistantTurn(content="", reasoning="", tool_calls=(ToolCall("read", {"source_id": 7}, id="call_0"),)),
    AssistantTurn(content="Answer [1].\n", reasoning="short"),
]


def _ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def _feed(text: str, chunks: Sequence[int] | None) -> tuple[list[ParseEvent], ParsedCompletion]:
    parser = CompletionParser(thinking=True, call_id=_ids())
    events: list[ParseEvent] = []
    if chunks is None:
        events += parser.feed(text)
    else:
        start = 0
        for size in chunks:
            events += parser.feed(text[start : start + size])
            start += size
        events += parser.feed(text[start:])
    last, result = parser.finish()
    return events + last, result


def _merged(events: list[ParseEvent]) -> list[ParseEvent]:
    """Join consecutive deltas of one kind, so events compare independently of chunking."""
    merged: list[ParseEvent] = []
    for event in events:
        previous = merged[-1] if merged else None
        if isinstance(event, ReasoningDelta) and isinstance(previous, ReasoningDelta):
            merged[-1] = ReasoningDelta(previous.text + event.text)
        elif isinstance(event, ContentDelta) and isinstance(previous, ContentDelta):
            merged[-1] = ContentDelta(previous.text + event.text)
        elif (
            isinstance(event, ToolCallArgumentsDelta)
            and isinstance(previous, ToolCallArgumentsDelta)
            and previous.index == event.index
        ):
            merged[-1] = ToolCallArgumentsDelta(event.index, previous.text + event.text)
        else:
            merged.append(event)
    return merged


@pytest.mark.parametrize("turn", TURNS)
def test_render_then_parse_round_trips(turn: AssistantTurn) -> None:
    text = render_assistant_turn(turn, with_reasoning=True)
    parsed = parse_completion(text, thinking=True, call_id=_ids())
    assert parsed.to_turn() == turn
    assert parsed.ended_with_eos and parsed.reasoning_closed


def test_chat_mode_round_trip_without_eos() -> None:
    turn = AssistantTurn(content="Plain answer.", tool_calls=CALLS[:1])
    text = render_assistant_turn(turn, with_reasoning=False).removesuffix(EOS)
    parsed = parse_completion(text, thinking=False, call_id=_ids())
    assert parsed.to_turn() == turn
    assert not parsed.ended_with_eos


@pytest.mark.parametrize("turn", TURNS)
def test_streaming_is_independent_of_chunking(turn: AssistantTurn) -> None:
    text = render_assistant_turn(turn, with_reasoning=True)
    whole_events, whole = _feed(text, None)
    by_char_events, by_char = _feed(text, [1] * len(text))
    assert by_char == whole
    assert _merged(by_char_events) == _merged(whole_events)
    for seed in range(20):
        rng = random.Random(seed)
        sizes = [rng.randint(1, 12) for _ in range(len(text))]
        events, result = _feed(text, sizes)
        assert result == whole
        assert _merged(events) == _merged(whole_events)


def test_events_describe_the_calls_incrementally() -> None:
    text = render_assistant_turn(TURNS[0], with_reasoning=True)
    events, result = _feed(text, [3] * len(text))
    started = [event for event in events if isinstance(event, ToolCallStarted)]
    finished = [event for event in events if isinstance(event, ToolCallFinished)]
    assert [(event.index, event.name) for event in started] == [(0, "search"), (1, "read"), (2, "noop")]
    assert [event.call for event in finished] == list(result.tool_calls)
    for index, call in enumerate(result.tool_calls):
        fragments = [e.text for e in events if isinstance(e, ToolCallArgumentsDelta) and e.index == index]
        assert len(fragments) > 1 or not call.arguments
        assert json.loads("".join(fragments)) == call.arguments
    # each call starts before its arguments stream and finishes after them
    kinds = [type(event).__name__ for event in events]
    assert kinds.index("ToolCallStarted") < kinds.index("ToolCallArgumentsDelta")
    assert kinds.index("ContentDelta") < kinds.index("ToolCallStarted")


def test_unclosed_reasoning_is_reported_not_raised() -> None:
    parsed = parse_completion("still thinking about </thi", thinking=True)
    assert parsed.reasoning == "still thinking about </thi"
    assert not parsed.reasoning_closed and parsed.content == "" and parsed.tool_calls == ()


def test_block_without_separator_and_whitespace_variants_parse() -> None:
    text = (
        f'x</think>Answer<{D}tool_calls>  <{D}invoke name="read">\n\n'
        f'<{D}parameter name="source_id" string="false"> 7 </{D}parameter></{D}invoke>\n'
        f"</{D}tool_calls>\n{EOS}"
    )
    parsed = parse_completion(text, thinking=True)
    assert parsed.content == "Answer"
    assert [(call.name, call.arguments) for call in parsed.tool_calls] == [("read", {"source_id": 7})]


MALFORMED = {
    "block never closed": f'</think>t\n\n<{D}tool_calls>\n<{D}invoke name="read">\n',
    "invoke without name": f"</think>\n\n<{D}tool_calls>\n<{D}invoke>\n</{D}invoke>\n</{D}tool_calls>",
    "parameter without string flag": (
        f'</think>\n\n<{D}tool_calls>\n<{D}invoke name="read">\n'
        f'<{D}parameter name="source_id">7</{D}parameter>\n</{D}invoke>\n</{D}tool_calls>'
    ),
    "non-JSON value": (
        f'</think>\n\n<{D}tool_calls>\n<{D}invoke name="read">\n'
        f'<{D}parameter name="source_id" string="false">seven</{D}parameter>\n</{D}invoke>\n</{D}tool_calls>'
    ),
    "duplicate parameter": (
        f'</think>\n\n<{D}tool_calls>\n<{D}invoke name="read">\n'
        f'<{D}parameter name="a" string="true">1</{D}parameter>\n'
        f'<{D}parameter name="a" string="true">2</{D}parameter>\n</{D}invoke>\n</{D}tool_calls>'
    ),
    "DSML outside a block": f'</think>text <{D}invoke name="read">\n</{D}invoke>',
    "text after the block": f"</think>\n\n<{D}tool_calls>\n</{D}tool_calls> and more",
    "EOS inside a parameter": (
        f'</think>\n\n<{D}tool_calls>\n<{D}invoke name="read">\n<{D}parameter name="a" string="true">1{EOS}'
    ),
    "block inside reasoning": f'reasoning\n\n<{D}tool_calls>\n<{D}invoke name="read">',
    "invoke not closed": f'</think>\n\n<{D}tool_calls>\n<{D}invoke name="read">\n</{D}tool_calls>',
    "parameter not closed": (
        f'</think>\n\n<{D}tool_calls>\n<{D}invoke name="read">\n'
        f'<{D}parameter name="a" string="true">1\n</{D}invoke>\n</{D}tool_calls>'
    ),
    "endless tool name": f'</think>\n\n<{D}tool_calls>\n<{D}invoke name="{"x" * 600}',
    "text after EOS": f"</think>done{EOS}more",
    "truncated opening tag": f"</think>answer\n\n<{D}tool_c",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_output_raises_a_clear_error(name: str) -> None:
    text = MALFORMED[name]
    with pytest.raises(DSMLParseError) as whole:
        _feed(text, None)
    with pytest.raises(DSMLParseError) as by_char:
        _feed(text, [1] * len(text))
    assert whole.value.position == by_char.value.position
    assert 0 <= whole.value.position <= len(text)
    assert "malformed DeepSeek-V4 output at character" in str(whole.value)


def test_without_tools_dsml_is_answer_text() -> None:
    text = f'r</think>see <{D}invoke name="x"> here{EOS}'
    parsed = parse_completion(text, thinking=True, tool_calls=False)
    assert parsed.content == f'see <{D}invoke name="x"> here'
    assert parsed.tool_calls == () and parsed.ended_with_eos
    with pytest.raises(DSMLParseError):
        parse_completion(text, thinking=True)
