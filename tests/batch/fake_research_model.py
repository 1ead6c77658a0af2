"""A fake chat model for batch tests, importable by tests and by the subprocess driver script.

It answers every free-form call with ``answer_for(marker)``, where the marker is the first ``Q<n>``
token of the prompt (each test question carries one), so each record's answer can be checked against its
question. Structured calls get a minimal valid object (the agent then forms its own queries). Every call
"decodes" for ``delay_s`` (interrupted by a deadline like the real backends), reports its tokens with
prefix reuse against the previous prompt, and may fail transiently (HTTP 429) on chosen markers.
"""

from __future__ import annotations

import re
import threading
import time
import typing
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import BaseModel, Field, PrivateAttr

from deepscout.model_runtime.chat import BackendRegistry, ChatModel, GenerationControl, Usage
from deepscout.model_runtime.chat.exceptions import ChatBackendError
from deepscout.model_runtime.chat.usage import usage_fields

MARKER = re.compile(r"\bQ\d+\b")


def answer_for(marker: str) -> str:
    """The fake's answer to the question carrying ``marker`` (grounded in the marker's document)."""
    return f"{marker} is about topic number {marker[1:]} [1]."


def _minimal(schema: type[BaseModel], marker: str) -> BaseModel:
    """A valid ``schema`` object: required lists hold one query about ``marker``, other fields a filler."""
    data: dict[str, Any] = {}
    for name, field in schema.model_fields.items():
        if field.is_required():
            origin = typing.get_origin(field.annotation) or field.annotation
            fillers: dict[Any, Any] = {list: [f"{marker} topic"], str: "x", bool: True, int: 0, float: 0.0}
            data[name] = fillers.get(origin)
    return schema.model_validate(data)


class BatchFakeModel(ChatModel):
    delay_s: float = 0.0
    context_window: int = 32_768
    fail_markers: dict[str, int] = Field(default_factory=dict)
    """Marker → how many calls for it fail with HTTP 429 before it succeeds."""
    _previous: list[str] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _failures: dict[str, int] = PrivateAttr(default_factory=dict)

    @property
    def serves_threads_concurrently(self) -> bool:
        return True

    @property
    def _llm_type(self) -> str:
        return "batch-fake"

    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        return sum(len(str(message.content).split()) + 4 for message in messages)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        control = GenerationControl.from_kwargs(kwargs)
        words = " ".join(str(message.content) for message in messages).split()
        found = MARKER.findall(" ".join(words))
        marker = found[0] if found else "none"
        with self._lock:
            failed = self._failures.get(marker, 0)
            if failed < self.fail_markers.get(marker, 0):
                self._failures[marker] = failed + 1
                raise ChatBackendError("rate limited (test)", status_code=429)
            reused = 0
            while reused < min(len(words), len(self._previous)) and words[reused] == self._previous[reused]:
                reused += 1
            self._previous = words
        ends = time.monotonic() + self.delay_s
        while time.monotonic() < ends:
            control.check("decode")
            time.sleep(0.005)
        text = answer_for(marker)
        usage = Usage(
            prompt_tokens=len(words),
            reused_tokens=reused,
            computed_tokens=len(words) - reused,
            output_tokens=4,
        )
        return ChatResult(
            generations=[ChatGeneration(message=AIMessage(content=text, **usage_fields(usage)))]
        )

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        def build(message: AIMessage) -> BaseModel:
            found = MARKER.findall(str(message.content))
            return _minimal(schema, found[0] if found else "Q0")

        return self | RunnableLambda(build)


def fake_registry(**fields: Any) -> BackendRegistry:
    """A registry where ``fake`` loads a new :class:`BatchFakeModel` with ``fields``."""
    registry = BackendRegistry()
    registry.register("fake", lambda argument, settings: BatchFakeModel(**fields), takes_argument=False)
    return registry


DOCUMENTS = [(f"Topic {n}", f"Q{n} is about topic number {n}, a subject of record {n}.") for n in range(40)]
