"""Helpers for the agent tests: a scripted chat model and a small corpus in a temporary database."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import BaseModel, Field, PrivateAttr

from deepscout.model_runtime.chat import ChatModel, GenerationControl, StructuredOutputError

DOCUMENTS = [
    ("Dracula", "Dracula is an 1897 Gothic horror novel by the Irish author Bram Stoker."),
    ("Bram Stoker", "Abraham Stoker was an Irish author, born in Clontarf, Dublin, in 1847."),
    ("River Liffey", "The Liffey is a river in Ireland which flows through the centre of Dublin."),
    ("Clontarf", "Clontarf is a coastal suburb on the northside of Dublin, Ireland."),
    ("Frankenstein", "Frankenstein is an 1818 novel written by the English author Mary Shelley."),
    ("Mary Shelley", "Mary Shelley was an English novelist who was born in Somers Town, London."),
]


def _words(messages: Sequence[BaseMessage]) -> list[str]:
    words: list[str] = []
    for message in messages:
        words.append(f"<{message.type}>")
        words.extend(str(message.content).split())
    return words


class ScriptedChatModel(ChatModel):
    """Replies with scripted texts in order; counts whitespace tokens; reports prefix reuse like the
    embedded backend (tokens shared with the previous prompt are "reused"). A reply may be a callable
    taking the prompt messages; ``delays`` maps a reply's index to seconds of "decoding" before it,
    which a ``deadline`` interrupts like the real backends do."""

    replies: list[str | Callable[[list[BaseMessage]], str]]
    delays: dict[int, float] = Field(default_factory=dict)
    max_new_tokens: int = 512
    _index: int = PrivateAttr(default=0)
    _cached: list[str] = PrivateAttr(default_factory=list)
    prompts: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        return len(_words(messages)) + 2

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        control = GenerationControl.from_kwargs(kwargs)
        self.prompts.append(list(messages))
        words = _words(messages)
        reused = 0
        while reused < min(len(words), len(self._cached)) and words[reused] == self._cached[reused]:
            reused += 1
        if self._index >= len(self.replies):
            raise AssertionError(f"the script has no reply #{self._index + 1}")
        reply = self.replies[self._index]
        ends = time.monotonic() + self.delays.get(self._index, 0.0)
        self._index += 1  # an interrupted reply is used up, as an abandoned generation is
        while time.monotonic() < ends:
            control.check("decode")
            time.sleep(0.01)
        control.check("decode")
        text = reply(list(messages)) if callable(reply) else reply
        self._cached = words + text.split()
        prompt = len(words)
        prefill = {"prompt_tokens": prompt, "reused_tokens": reused, "computed_tokens": prompt - reused}
        output = len(text.split())
        message = AIMessage(
            content=text,
            response_metadata={"prefill": prefill, "timings": {"first_token_s": 0.001}},
            usage_metadata={"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        def parse(message: AIMessage) -> BaseModel:
            try:
                return schema.model_validate_json(str(message.content))
            except ValueError as error:
                output = str(message.content)
                raise StructuredOutputError(str(error), attempts=1, last_output=output) from error

        return self | RunnableLambda(parse)

    @property
    def calls(self) -> int:
        return self._index


@pytest.fixture
def small_corpus(settings) -> Iterator[Any]:
    """A migrated database in the temporary home holding DOCUMENTS as collection ``demo``."""
    from deepscout.memory.corpus import CorpusIndex
    from deepscout.memory.db import open_database
    from deepscout.memory.schemas import CorpusDocument

    database = open_database(settings)
    CorpusIndex(database.session_factory).add(
        [CorpusDocument(doc_id=title, title=title, text=text) for title, text in DOCUMENTS], collection="demo"
    )
    yield database
    database.dispose()


@pytest.fixture
def checkpoint_file(settings) -> Path:
    from deepscout.agent.graph import CHECKPOINT_FILE

    return Path(settings.home) / CHECKPOINT_FILE


@pytest.fixture
def scripted() -> Callable[..., ScriptedChatModel]:
    """Builds a ScriptedChatModel: ``scripted(replies, delays={index: seconds})``."""

    def build(replies: list[Any], **fields: Any) -> ScriptedChatModel:
        return ScriptedChatModel(replies=replies, **fields)

    return build
