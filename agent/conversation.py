"""The conversation a run opens with: system prompt, worked example, earlier turns of the thread, question.

A follow-up question in a thread builds on the turns before it: each earlier question and its answer are
replayed as a user and an assistant message, the answer followed by the titles of the sources it cited
(untrusted text, wrapped). They come before the new question, after the fixed prefix, so a model server
with prefix caching reuses the earlier turns' KV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from deepscout.agent import prompts
from deepscout.tools.untrusted import wrap_untrusted


@dataclass(frozen=True)
class PriorTurn:
    """An earlier turn of the thread: its question, the answer given, and the titles of its sources."""

    question: str
    answer: str
    source_titles: Sequence[str] = field(default_factory=tuple)


def opening(question: str, earlier: Sequence[PriorTurn] = ()) -> list[BaseMessage]:
    """The messages a run starts from (the same prefix for every run of a thread but its last turn)."""
    messages: list[BaseMessage] = [SystemMessage(content=prompts.SYSTEM_PROMPT)]
    for role, text in prompts.EXAMPLE_TURNS:
        messages.append(AIMessage(content=text) if role == "assistant" else HumanMessage(content=text))
    for turn in earlier:
        messages.append(HumanMessage(content=prompts.QUESTION.format(question=turn.question)))
        answer = turn.answer
        if turn.source_titles:
            titles = "\n".join(f"[{n}] {title}" for n, title in enumerate(turn.source_titles, start=1))
            answer += "\n" + wrap_untrusted(titles, origin="earlier turn", label="sources")
        messages.append(AIMessage(content=answer))
    messages.append(HumanMessage(content=prompts.QUESTION.format(question=question)))
    return messages
