"""Model calls that must yield a typed object (the plan, the reflection), with usage recorded.

A call first lets the model reply freely: the transcript's worked example shows the exact JSON, and a
small model follows an example far better than a schema (measured on SmolLM2-135M over HotpotQA
questions: 4/4 useful plans free-running after the example, 0/6 under the schema instruction, which it
copied into its queries). The reply is parsed leniently (first JSON object, brackets balanced) and
validated; only when that fails does the call fall back to the backend's schema-constrained decoding,
whose output is always valid.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from pydantic import BaseModel, ValidationError

from deepscout.model_runtime.chat import GenerationDeadlineExceeded, Usage, usage_of

if TYPE_CHECKING:
    from deepscout.model_runtime.chat import ChatModel

Schema = TypeVar("Schema", bound=BaseModel)
_CLOSERS = {"{": "}", "[": "]"}


@dataclass(frozen=True)
class CallsUsage:
    """What the model calls of one step spent: their tokens, and the first one's time to first token."""

    tokens: Usage
    first_token_s: float | None = None


class UsageRecorder(BaseCallbackHandler):
    """Collects the prefill counters, token usage and first-token times of the model calls under it."""

    def __init__(self) -> None:
        self.messages: list[BaseMessage] = []

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                message = getattr(generation, "message", None)
                if message is not None:
                    self.messages.append(message)

    def usage(self) -> CallsUsage:
        """The tokens of every call under the recorder, and the first call's time to its first token."""
        tokens = sum((usage_of(message) for message in self.messages), Usage())
        first_token_s = next(
            (
                float(timings["first_token_s"])
                for timings in (message.response_metadata.get("timings") or {} for message in self.messages)
                if timings.get("first_token_s") is not None
            ),
            None,
        )
        return CallsUsage(tokens, first_token_s)


def balance_json(text: str) -> str:
    """The first JSON object in ``text`` with wrong or missing closing brackets and quotes repaired."""
    start = text.find("{")
    if start < 0:
        return text
    stack: list[str] = []
    out: list[str] = []
    in_string = escaped = False
    for char in text[start:]:
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif char in "]}":
            if not stack:
                break
            char = stack.pop()
        out.append(char)
        if not stack:
            return "".join(out)
    if in_string:
        out.append('"')
    out.extend(reversed(stack))
    return "".join(out)


def parse_lenient(schema: type[Schema], text: str) -> Schema | None:
    """``text`` as ``schema`` if it holds a (repairable) JSON object that validates, else None."""
    try:
        return schema.model_validate(json.loads(balance_json(text)))
    except (ValueError, ValidationError):
        return None


def structured_call(
    model: ChatModel,
    schema: type[Schema],
    messages: Sequence[BaseMessage],
    *,
    max_tokens: int,
    deadline: float,
    cancel: threading.Event,
    stop: Sequence[str] = ("]}",),
) -> tuple[Schema, CallsUsage]:
    """``schema`` from the model: a free reply parsed leniently, else schema-constrained decoding.

    ``stop`` ends the free reply where the object closes (the default suits objects whose last field is
    a list, as the plan and the reflection are; the cut brackets are restored by :func:`balance_json`),
    so a model that would chat on after the JSON spends no time doing so.
    Raises the backend's ``GenerationDeadlineExceeded``, ``GenerationCancelled`` and
    ``StructuredOutputError`` unchanged.
    """
    recorder = UsageRecorder()
    config: dict[str, Any] = {"callbacks": [recorder]}
    reply = model.invoke(
        list(messages),
        config,  # type: ignore[arg-type]
        stop=list(stop) or None,
        deadline=deadline,
        cancel=cancel,
        max_new_tokens=max_tokens,
    )
    parsed = parse_lenient(schema, str(reply.content))
    if parsed is None and time.monotonic() >= deadline:
        raise GenerationDeadlineExceeded("the deadline passed before the schema-constrained retry")
    if parsed is None:
        runnable = model.with_structured_output(schema)
        result = runnable.invoke(
            list(messages),
            config,  # type: ignore[arg-type]
            deadline=deadline,
            cancel=cancel,
            max_new_tokens=max_tokens,
        )
        parsed = result if isinstance(result, schema) else schema.model_validate(result)
    return parsed, recorder.usage()
