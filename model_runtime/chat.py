"""The chat-model interface every part of deepscout talks to, its errors, and the backend registry.

``load_chat_model(spec, settings=...)`` turns a spec into a :class:`ChatModel`:

- ``smollm2`` — the embedded default, SmolLM2-135M-Instruct on the CPU (fetched by ``deepscout setup``);
- ``hf:PATH`` — any local Hugging Face causal-LM folder;
- ``openai:MODEL`` — an OpenAI-compatible server (DeepSeek API, vLLM, SGLang), configured from the
  environment (``DEEPSCOUT_OPENAI_BASE_URL``, ``DEEPSCOUT_OPENAI_API_KEY``, ...);
- ``deepseek-v4:PATH`` / ``deepseek-v4:random-tiny`` — our own DeepSeek-V4 runtime.

Backends are listed in :mod:`deepscout.model_runtime.backends` by the module that builds them, so a
backend's heavy imports (torch, transformers, openai) happen only when that backend is loaded.
Extra backends (tests, plugins) can be added at run time with :func:`register_backend`.

Every :class:`ChatModel` accepts three extra keyword arguments on ``invoke``/``stream``/``ainvoke``/...:
``deadline`` (a ``time.monotonic()`` value) and ``cancel`` (a ``threading.Event``), either of which stops
prefill or decode in progress and raises :class:`GenerationDeadlineExceeded` / :class:`GenerationCancelled`,
and ``max_new_tokens``, the most tokens this call may write (the model's own setting otherwise).
"""

from __future__ import annotations

import importlib
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

if TYPE_CHECKING:
    from deepscout.settings import Settings


class ChatModelError(Exception):
    """Base class of every error raised by the chat-model layer."""


class UnknownModelError(ChatModelError, ValueError):
    """The model spec names no known backend."""

    def __init__(self, spec: str, known: Sequence[str]) -> None:
        self.spec = spec
        self.known = list(known)
        super().__init__(f"unknown model spec {spec!r}; known specs: {', '.join(self.known)}")


class ModelNotFetchedError(ChatModelError, FileNotFoundError):
    """The model's files are not on this machine; the message names the command that fetches them."""


class BackendUnavailableError(ChatModelError, ImportError):
    """The backend's module is not installed or failed to import."""


class GenerationDeadlineExceeded(TimeoutError):
    """The wall-time deadline passed while the model was prefilling or decoding."""


class GenerationCancelled(ChatModelError):
    """The caller's cancellation event was set while the model was prefilling or decoding."""


class StructuredOutputError(ChatModelError, ValueError):
    """The model failed to produce output valid for the requested schema / tools after bounded retries."""

    def __init__(self, message: str, *, attempts: int, last_output: str) -> None:
        self.attempts = attempts
        self.last_output = last_output
        super().__init__(f"{message} (after {attempts} attempt(s)); last output: {last_output[:500]!r}")


class ContextOverflowError(ChatModelError, ValueError):
    """The prompt does not fit the model's context window; trim the conversation or pick a larger model."""


class ChatBackendError(ChatModelError):
    """A remote server rejected a request (e.g. HTTP 400); carries the status and the server's message."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


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


BackendFactory = Callable[[str | None, "Settings"], ChatModel]
"""Builds a chat model from the part of the spec after ``NAME:`` (None for a bare ``NAME``)."""


@dataclass(frozen=True)
class BackendEntry:
    """One backend: how its specs look and where its factory lives (imported only when used)."""

    name: str
    usage: str
    """Spec forms, e.g. ``hf:PATH``; shown in UnknownModelError."""
    factory: str | BackendFactory
    """``"module:function"`` (imported lazily) or the factory itself."""
    takes_argument: bool
    """True for ``NAME:ARG`` specs, False for a bare ``NAME``."""

    def resolve(self) -> BackendFactory:
        if not isinstance(self.factory, str):
            return self.factory
        module_name, _, attribute = self.factory.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise BackendUnavailableError(
                f"backend {self.name!r} is not available: cannot import {module_name} ({error})"
            ) from error
        factory: BackendFactory = getattr(module, attribute)
        return factory


_registry: dict[str, BackendEntry] = {}
_registry_lock = threading.Lock()


def register_backend(
    name: str, factory: str | BackendFactory, *, usage: str | None = None, takes_argument: bool = True
) -> None:
    """Add (or replace) a backend. ``factory`` is ``"module:function"`` or a callable ``(arg, settings)``."""
    entry = BackendEntry(
        name=name,
        usage=usage or (f"{name}:ARG" if takes_argument else name),
        factory=factory,
        takes_argument=takes_argument,
    )
    with _registry_lock:
        _registry[name] = entry


def known_backends() -> list[BackendEntry]:
    """The registered backends, built-in ones first."""
    _ensure_builtin_backends()
    with _registry_lock:
        return list(_registry.values())


def _ensure_builtin_backends() -> None:
    from deepscout.model_runtime.backends import BUILTIN_BACKENDS

    with _registry_lock:
        for entry in BUILTIN_BACKENDS:
            _registry.setdefault(entry.name, entry)


def parse_spec(spec: str) -> tuple[BackendEntry, str | None]:
    """Split ``spec`` into its backend entry and argument; raise UnknownModelError if none matches."""
    entries = {entry.name: entry for entry in known_backends()}
    usages = [entry.usage for entry in entries.values()]
    text = spec.strip()
    name, sep, argument = text.partition(":")
    entry = entries.get(name)
    if entry is None or not text:
        raise UnknownModelError(spec, usages)
    if entry.takes_argument and not (sep and argument):
        raise UnknownModelError(spec, usages)
    if not entry.takes_argument and sep:
        raise UnknownModelError(spec, usages)
    return entry, (argument if sep else None)


def load_chat_model(spec: str, *, settings: Settings) -> ChatModel:
    """Build the chat model that ``spec`` names (see the module docstring for the forms)."""
    entry, argument = parse_spec(spec)
    return entry.resolve()(argument, settings)
