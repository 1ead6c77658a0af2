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
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

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

    Subclasses implement ``_generate`` (and ``_stream`` where they can stream), ``bind_tools``,
    :meth:`count_tokens` and set :attr:`context_window`. ``with_structured_output`` comes from LangChain
    on top of ``bind_tools`` (a forced call of one tool) unless a backend overrides it.
    """

    context_window: int = 8192
    """The most tokens (prompt + completion) the model attends to."""

    @abstractmethod
    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens the prompt for ``messages`` (and the ``tools`` description) takes, in its tokenizer."""
