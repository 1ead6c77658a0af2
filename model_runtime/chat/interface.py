"""The chat-model interface every part of deepscout talks to, and the per-call generation limits.

Every :class:`ChatModel` accepts three extra keyword arguments on ``invoke``/``stream``/``ainvoke``/...:
``deadline`` (a ``time.monotonic()`` value) and ``cancel`` (a ``threading.Event``), either of which stops
prefill or decode in progress and raises :class:`GenerationDeadlineExceeded` / :class:`GenerationCancelled`,
and ``max_new_tokens``, the most tokens this call may write (the model's own setting otherwise).
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from deepscout.model_runtime.chat.exceptions import GenerationCancelled, GenerationDeadlineExceeded


class GenerationControl:
    """The per-call limits shared by the backends' prefill and decode loops: a deadline, cancellation
    events, and a cap on the tokens this call may write."""

    def __init__(
        self, deadline: float | None = None, *cancel: threading.Event, max_new_tokens: int | None = None
    ) -> None:
        self.deadline = deadline
        self.cancel_events = cancel
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> GenerationControl:
        """Pop ``deadline``, ``cancel`` and ``max_new_tokens`` from ``_generate``/``_stream`` kwargs."""
        deadline = kwargs.pop("deadline", None)
        cancel = kwargs.pop("cancel", None)
        max_new_tokens = kwargs.pop("max_new_tokens", None)
        if deadline is not None and not isinstance(deadline, (int, float)):
            raise TypeError(f"deadline must be a time.monotonic() value, got {type(deadline).__name__}")
        if cancel is not None and not isinstance(cancel, threading.Event):
            raise TypeError(f"cancel must be a threading.Event, got {type(cancel).__name__}")
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        events = () if cancel is None else (cancel,)
        return cls(None if deadline is None else float(deadline), *events, max_new_tokens=max_new_tokens)

    def with_event(self, event: threading.Event) -> GenerationControl:
        """The same limits plus ``event`` (e.g. a stream closed by its consumer)."""
        return GenerationControl(
            self.deadline, *self.cancel_events, event, max_new_tokens=self.max_new_tokens
        )

    def output_cap(self, default: int) -> int:
        """Tokens this call may write: its own ``max_new_tokens``, else the model's ``default``."""
        return default if self.max_new_tokens is None else self.max_new_tokens

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None when there is none)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self, stage: str) -> None:
        """Raise if the deadline passed or cancellation was requested; ``stage`` names where we stopped."""
        if any(event.is_set() for event in self.cancel_events):
            raise GenerationCancelled(f"generation cancelled during {stage}")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise GenerationDeadlineExceeded(f"deadline exceeded during {stage}")


class ChatModel(BaseChatModel):
    """A LangChain chat model with what deepscout's agent needs on top.

    Subclasses implement ``_generate`` (and ``_stream`` where they can stream) and :meth:`count_tokens`,
    and set :attr:`context_window`. :meth:`bind_tools` binds the tools in the OpenAI format with the
    ``tool_choice`` as call arguments; ``with_structured_output`` comes from LangChain on top of it (a
    forced call of one tool) unless a backend overrides it.
    """

    context_window: int = 8192
    """The most tokens (prompt + completion) the model attends to."""

    backend_type: ClassVar[str] = "deepscout"
    """LangChain's ``_llm_type`` of the backend (what tracing shows)."""
    identifying_fields: ClassVar[tuple[str, ...]] = ()
    """The fields that tell one configured model from another (LangChain's ``_identifying_params``)."""

    @property
    def serves_threads_concurrently(self) -> bool:
        """Whether one instance may serve calls from several threads at once (and gains by it).

        False by default. The embedded backends say True (concurrent calls decode together in batched
        steps: the V4 engine's, or the HF generator's), and so does a remote backend, whose server does
        the work.
        """
        return False

    def close(self) -> None:
        """Release what the model holds beyond the process's memory (an embedded backend's generation
        thread); calls after it fail. Nothing by default. Copies share what they hold, so closing one
        closes them all: the owner closes, once, when done with the model (the server at shutdown)."""

    @property
    def _llm_type(self) -> str:
        return self.backend_type

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.identifying_fields}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; ``tool_choice``: None/"auto" (optional), "any"/"required"/True, "none", or a name."""
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        kwargs.pop("ls_structured_output_format", None)
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    @abstractmethod
    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens the prompt for ``messages`` (and the ``tools`` description) takes, in its tokenizer."""


@dataclass(frozen=True)
class ChatCall:
    """One call of a chat model as a backend sees it: the messages, the stop strings, the per-call limits,
    the bound options (``tools``, ``tool_choice``, ``response_format``, ...) and LangChain's callbacks."""

    messages: list[BaseMessage]
    stop: list[str] | None
    control: GenerationControl
    options: dict[str, Any]
    run_manager: CallbackManagerForLLMRun | None = None

    @classmethod
    def of(
        cls, messages: list[BaseMessage], stop: list[str] | None, run_manager: Any, kwargs: dict[str, Any]
    ) -> ChatCall:
        """The call LangChain's ``_generate``/``_stream`` arguments describe (the limits popped off)."""
        control = GenerationControl.from_kwargs(kwargs)
        return cls(messages, stop, control, kwargs, run_manager)


class BackendChatModel(ChatModel):
    """The base of the built-in backends: LangChain's ``_generate`` and ``_stream`` turned, once, into
    a :class:`ChatCall` that the backend answers whole (:meth:`_respond`) or streamed
    (:meth:`_respond_stream`)."""

    @classmethod
    def fields_from(cls, section: BaseModel, *, exclude: Collection[str] = ()) -> dict[str, Any]:
        """The values of a settings ``section``'s fields that this model has too (same name)."""
        names = [name for name in type(section).model_fields if name in cls.model_fields]
        return {name: getattr(section, name) for name in names if name not in exclude}

    @abstractmethod
    def _respond(self, call: ChatCall) -> AIMessage:
        """The whole reply to ``call``."""

    @abstractmethod
    def _respond_stream(self, call: ChatCall) -> Iterator[ChatGenerationChunk]:
        """The reply to ``call`` as chunks; the last carries the usage and metadata."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = self._respond(ChatCall.of(messages, stop, run_manager, kwargs))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from self._respond_stream(ChatCall.of(messages, stop, run_manager, kwargs))
