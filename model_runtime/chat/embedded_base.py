"""What the embedded backends (Hugging Face models, our DeepSeek-V4 runtime) share around their decoders.

A call is planned once (:meth:`EmbeddedChatModel._plan`: the prompt ids, what kind of output is asked for,
the grammar), then decoded by the backend in single attempts (:meth:`EmbeddedChatModel._attempt`). This
class holds the rest once: the room left for output in the context window, the bounded retry of output
that must be valid (sampled at :data:`RETRY_TEMPERATURE` after a greedy first attempt), the message with
its metadata and :class:`~deepscout.model_runtime.chat.usage.Usage`, and the stream's chunks.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import ToolCall, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from deepscout.model_runtime.chat.exceptions import (
    ContextOverflowError,
    StructuredOutputError,
    ToolCallOutputError,
)
from deepscout.model_runtime.chat.grammar_chat import GrammarChatModel
from deepscout.model_runtime.chat.interface import ChatCall, GenerationControl
from deepscout.model_runtime.chat.usage import Usage, usage_fields

RETRY_TEMPERATURE = 0.7
"""Sampling temperature of the attempts after the first (at least): a retry must not repeat a bad output."""

OutputKind = Literal["text", "tools", "structured"]


@dataclass(frozen=True)
class GenerationOutcome:
    """One generation of an embedded decoder: its token ids, why it stopped, its usage and timings."""

    token_ids: list[int]
    finish_reason: str
    """``stop`` (end of turn, grammar complete or a stop string) or ``length`` (the token cap)."""
    usage: Usage
    """The prefill counters, and ``len(token_ids)`` output tokens."""
    prefill_seconds: float
    first_token_seconds: float
    decode_seconds: float

    def timings(self) -> dict[str, float | int]:
        """``response_metadata["timings"]`` of a message decoded by this generation."""
        return {
            "prefill_s": round(self.prefill_seconds, 4),
            "first_token_s": round(self.first_token_seconds, 4),
            "decode_s": round(self.decode_seconds, 4),
            "decode_tokens": len(self.token_ids),
        }


@dataclass(frozen=True)
class CallPlan:
    """What one call asks for: the prompt ids and the kind of output (backends add how to decode it)."""

    prompt_ids: list[int]
    kind: OutputKind
    tool_names: frozenset[str] = frozenset()
    stop: tuple[str, ...] = ()
    """Stop strings: the text ends before the first one (free-form output only)."""

    @property
    def checked(self) -> bool:
        """Whether the output is checked (and retried when unusable): all but free-form text."""
        return self.kind != "text"

    @property
    def whole(self) -> bool:
        """Whether the output is usable only whole: then a stream hands it over as one chunk."""
        return self.checked


@dataclass(frozen=True)
class Attempt:
    """One decoding of a call: the generation, its text, what the backend read from it, and why it is
    unusable (None when it is usable)."""

    outcome: GenerationOutcome
    raw_text: str
    value: Any = None
    problem: str | None = None


Plan = TypeVar("Plan", bound=CallPlan)


class EmbeddedChatModel(GrammarChatModel, Generic[Plan]):
    """A chat model decoding on this machine: plans a call, decodes it in bounded attempts, reports it."""

    model_name: str = "embedded"
    max_new_tokens: int = 512
    temperature: float = 0.0
    structured_retries: int = 2
    """Attempts after the first when checked output (tool calls, structured output) is unusable."""

    identifying_fields: ClassVar[tuple[str, ...]] = ("model_name",)

    # ----------------------------------------------------------------- what a backend implements

    @abstractmethod
    def _plan(self, messages: Sequence[BaseMessage], options: dict[str, Any], stop: list[str] | None) -> Plan:
        """The plan of a call of ``messages`` with the bound ``options`` (tools, tool_choice, ...)."""

    @abstractmethod
    def _attempt(
        self, plan: Plan, control: GenerationControl, *, max_new_tokens: int, temperature: float, seed: int
    ) -> Attempt:
        """Decode ``plan`` once and check what came out."""

    @abstractmethod
    def _reply(self, plan: Plan, attempt: Attempt, usage: Usage, attempts: int) -> AIMessage:
        """The message of a usable attempt (built with :meth:`_message`)."""

    @abstractmethod
    def _stream_decoding(
        self, plan: Plan, control: GenerationControl, run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        """Stream output that need not be whole, ending with :func:`last_chunk` of its message."""

    # ----------------------------------------------------------------- shared plumbing

    def _respond(self, call: ChatCall) -> AIMessage:
        return self._complete(self._plan(call.messages, call.options, call.stop), call.control)

    def _respond_stream(self, call: ChatCall) -> Iterator[ChatGenerationChunk]:
        plan = self._plan(call.messages, call.options, call.stop)
        if plan.whole:
            # Output that must be valid whole (and may be retried) is handed over as one chunk.
            yield last_chunk(self._complete(plan, call.control))
            return
        yield from self._stream_decoding(plan, call.control, call.run_manager)

    def _output_room(self, prompt_tokens: int, control: GenerationControl) -> int:
        """Tokens this call may write: its cap, within the room the prompt leaves in the context window."""
        room = self.context_window - prompt_tokens
        if room <= 0:
            raise ContextOverflowError(
                f"the prompt takes {prompt_tokens} tokens; {self.model_name}'s context window is "
                f"{self.context_window}"
            )
        return min(control.output_cap(self.max_new_tokens), room)

    def _complete(self, plan: Plan, control: GenerationControl) -> AIMessage:
        """Decode and check the output whole, retrying (sampled) while it is unusable for the call.

        The message's usage is the first attempt's prefill (later ones continue the same prompt) and the
        output tokens of every attempt.
        """
        max_new_tokens = self._output_room(len(plan.prompt_ids), control)
        tries = 1 + (self.structured_retries if plan.checked else 0)
        problems: list[str] = []
        usage: Usage | None = None
        last_output = ""
        for number in range(tries):
            temperature = self.temperature if number == 0 else max(self.temperature, RETRY_TEMPERATURE)
            attempt = self._attempt(
                plan, control, max_new_tokens=max_new_tokens, temperature=temperature, seed=number
            )
            spent = attempt.outcome.usage
            usage = spent if usage is None else usage.with_output(spent.output_tokens)
            if attempt.problem is None:
                return self._reply(plan, attempt, usage, number + 1)
            problems.append(f"attempt {number + 1}: {attempt.problem}")
            last_output = attempt.raw_text
        error = StructuredOutputError if plan.kind == "structured" else ToolCallOutputError
        raise error(
            f"{self.model_name} produced no valid {plan.kind} output: {' | '.join(problems)}",
            attempts=tries,
            last_output=last_output,
        )

    def _message(
        self,
        attempt: Attempt,
        usage: Usage,
        attempts: int,
        *,
        content: str,
        tool_calls: Sequence[ToolCall] = (),
        additional_kwargs: dict[str, Any] | None = None,
        **metadata: Any,
    ) -> AIMessage:
        """The message of an attempt: its content and tool calls, its usage, and ``response_metadata``
        (finish reason, attempts, timings, the raw output and any backend ``metadata``)."""
        outcome = attempt.outcome
        response_metadata: dict[str, Any] = {
            "model_name": self.model_name,
            "finish_reason": "tool_calls" if tool_calls else outcome.finish_reason,
            "attempts": attempts,
            "timings": outcome.timings(),
            "raw_output": attempt.raw_text,
            **metadata,
        }
        return AIMessage(
            content=content,
            additional_kwargs=additional_kwargs or {},
            tool_calls=list(tool_calls),
            **usage_fields(usage, response_metadata),
        )


def last_chunk(message: AIMessage, *, streamed: bool = False) -> ChatGenerationChunk:
    """The last chunk of a stream: ``message`` whole (its tool calls as tool-call chunks), or, when its
    content was ``streamed`` already, only its usage and metadata."""
    calls = [
        tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=index)
        for index, call in enumerate([] if streamed else message.tool_calls)
    ]
    chunk = AIMessageChunk(
        content="" if streamed else message.content,
        additional_kwargs={} if streamed else message.additional_kwargs,
        tool_call_chunks=calls,
        usage_metadata=message.usage_metadata,
        response_metadata=message.response_metadata,
        chunk_position="last",
    )
    return ChatGenerationChunk(message=chunk)


def required_tool(tool_choice: Any, names: Collection[str]) -> str | bool:
    """What ``tool_choice`` asks of the bound tools ``names``: a tool's name, True (a call of any tool) or
    False (calling is optional, or off); a name that is not bound is a ValueError."""
    if tool_choice in (None, "auto", "none", False):
        return False
    if tool_choice in ("any", "required", True):
        return True
    name = tool_choice
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"tool_choice names {name!r}, which is not among the bound tools")
    return name
