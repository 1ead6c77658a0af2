"""Checkpoint segments: the rendered text is unchanged, and segments marked ``checkpoint`` end where the
next round (more documents before the instruction) and a structured retry (a response format after the
text) diverge from this prompt."""

from __future__ import annotations

from itertools import accumulate

from deepscout.model_runtime.v4.chat_format.messages import (
    AssistantTurn,
    SystemTurn,
    Turn,
    UserTurn,
)
from deepscout.model_runtime.v4.chat_format.render import render_prompt, render_prompt_segments

B, U, A = "<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"
SCHEMA = {"type": "object", "properties": {"next_queries": {"type": "array"}}}


def _round(documents: int, instruction: str) -> list[Turn]:
    docs: list[Turn] = [UserTurn(f"[{n}] Document {n}.") for n in range(1, documents + 1)]
    return [SystemTurn("S"), UserTurn("Who wrote Dune?"), *docs, UserTurn(instruction)]


def _checkpoint_texts(turns: list[Turn], **options: object) -> list[str]:
    """The prompt text up to each checkpoint."""
    segments = render_prompt_segments(turns, **options)  # type: ignore[arg-type]
    ends = accumulate(segment.text for segment in segments)
    return [text for text, segment in zip(ends, segments, strict=True) if segment.checkpoint]


def test_checkpoints_end_before_the_last_part_and_after_the_user_text() -> None:
    turns = _round(2, "Reflect.")
    text = render_prompt(turns)
    assert text == f"{B}S{U}Who wrote Dune?\n\n[1] Document 1.\n\n[2] Document 2.\n\nReflect.{A}</think>"
    before_instruction, after_text = _checkpoint_texts(turns)
    assert before_instruction == f"{B}S{U}Who wrote Dune?\n\n[1] Document 1.\n\n[2] Document 2."
    assert after_text == before_instruction + "\n\nReflect."
    # the next round and a structured retry share this prompt's text up to these checkpoints
    assert render_prompt(_round(3, "Reflect again.")).startswith(before_instruction + "\n\n[3]")
    retry = render_prompt(turns, response_format=SCHEMA)
    assert retry.startswith(after_text + "\n\n## Response Format")


def test_a_structured_prompt_marks_the_same_places() -> None:
    turns = _round(2, "Reflect.")
    assert _checkpoint_texts(turns, response_format=SCHEMA) == _checkpoint_texts(turns)
    text = render_prompt(turns, response_format=SCHEMA)
    segments = render_prompt_segments(turns, response_format=SCHEMA)
    assert "".join(segment.text for segment in segments) == text


def test_a_single_part_turn_is_marked_after_its_text_only() -> None:
    turns: list[Turn] = [SystemTurn("S"), UserTurn("Hi")]
    assert _checkpoint_texts(turns, thinking=True) == [f"{B}S{U}Hi"]
    assert render_prompt(turns, thinking=True) == f"{B}S{U}Hi{A}<think>"


def test_only_the_last_user_turn_is_marked(research_turns: list[Turn]) -> None:
    """Earlier turns are shared by every later prompt: the session or the prefix cache covers them."""
    turns = research_turns[:5]  # ends with two tool results, put in call order: "hits" first
    text = render_prompt(turns, thinking=True)
    assert _checkpoint_texts(turns, thinking=True) == [
        text.split("\n\n<tool_result>[1] Dune")[0],
        text.removesuffix(f"{A}<think>"),
    ]
    assert _checkpoint_texts(turns, thinking=True)[0].endswith("<tool_result>hits: 7, 9</tool_result>")
    answered: list[Turn] = [*turns, AssistantTurn("Frank Herbert."), UserTurn("And the sequel?")]
    assert _checkpoint_texts(answered) == [render_prompt(answered).removesuffix(f"{A}</think>")]
