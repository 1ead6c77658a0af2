"""``deepseek-v4:random-tiny`` marks where later prompts diverge (before the instruction, after the user
text), so the next round and a structured retry reuse the engine's state up to there."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel

from deepscout.model_runtime.chat.backends.embedded_v4 import EmbeddedV4ChatModel
from deepscout.model_runtime.chat.embedded_base import GenerationOutcome

BLOCK = 128


class Verdict(BaseModel):
    enough_evidence: bool


def _document(n: int) -> HumanMessage:
    sentences = (
        f"Passage {n}.{i}: the desert planet Arrakis is the only source of spice." for i in range(40)
    )
    return HumanMessage(" ".join(sentences))


def _record(chat: EmbeddedV4ChatModel, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record each engine request's checkpoints and usage."""
    calls: list[dict[str, Any]] = []
    serve = chat.runtime.stream_tokens

    def stream_tokens(prompt_ids: Sequence[int], **options: Any) -> Generator[int, None, GenerationOutcome]:
        outcome = yield from serve(prompt_ids, **options)
        calls.append({"checkpoints": options["checkpoints"], "usage": outcome.usage})
        return outcome

    monkeypatch.setattr(chat.runtime, "stream_tokens", stream_tokens)
    return calls


def test_the_next_round_and_a_structured_retry_reuse_up_to_the_checkpoints(
    tiny_chat: EmbeddedV4ChatModel, unique_system: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _record(tiny_chat, monkeypatch)
    tiny_chat.max_new_tokens = 24
    opening: list[BaseMessage] = [SystemMessage(unique_system), HumanMessage("Which planet makes spice?")]
    searched = ", ".join(f"spice source {i}" for i in range(40))  # more than a block: the instruction
    instruction = f"Searched so far: {searched}. Is what was read enough evidence? Reply in JSON"
    first_round = [*opening, _document(1), HumanMessage(instruction)]
    tiny_chat.invoke(first_round)
    before_instruction, after_text = calls[0]["checkpoints"]
    assert calls[0]["usage"].prompt_tokens - after_text == 2  # the assistant opening follows
    assert before_instruction > 3 * BLOCK and after_text - before_instruction > BLOCK

    tiny_chat.with_structured_output(Verdict).invoke(first_round)
    assert calls[1]["checkpoints"] == (before_instruction, after_text)
    assert calls[1]["usage"].reused_tokens == after_text // BLOCK * BLOCK

    tiny_chat.invoke([*opening, _document(1), _document(2), HumanMessage(instruction + " again")])
    assert calls[2]["usage"].reused_tokens == before_instruction // BLOCK * BLOCK
