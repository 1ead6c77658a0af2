"""The errors of the chat-model layer; every one derives from :class:`deepscout.errors.DeepscoutError`."""

from __future__ import annotations

from collections.abc import Sequence

from deepscout.errors import DeepscoutError


class ChatModelError(DeepscoutError):
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


class GenerationDeadlineExceeded(DeepscoutError, TimeoutError):
    """The wall-time deadline passed while the model was prefilling or decoding."""


class GenerationCancelled(ChatModelError):
    """The caller's cancellation event was set while the model was prefilling or decoding."""


class StructuredOutputError(ChatModelError, ValueError):
    """The model failed to produce output valid for the requested schema / tools after bounded retries."""

    def __init__(self, message: str, *, attempts: int, last_output: str) -> None:
        self.attempts = attempts
        self.last_output = last_output
        super().__init__(f"{message} (after {attempts} attempt(s)); last output: {last_output[:500]!r}")


class ToolCallOutputError(StructuredOutputError):
    """The model's tool calls were malformed, named an unbound tool, or were missing when required."""


class ContextOverflowError(ChatModelError, ValueError):
    """The prompt does not fit the model's context window; trim the conversation or pick a larger model."""


class ChatBackendError(ChatModelError):
    """A remote server rejected a request (e.g. HTTP 400); carries the status and the server's message."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)
