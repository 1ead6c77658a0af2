"""The chat-model layer: one interface over embedded, remote and V4 backends.

The public names are re-exported here; modules inside this package import from the module that defines
a name, never from this package.
"""

from deepscout.model_runtime.chat.backend_registry import (
    BUILTIN_BACKENDS,
    BackendEntry,
    BackendRegistry,
    load_chat_model,
)
from deepscout.model_runtime.chat.exceptions import (
    BackendUnavailableError,
    ChatBackendError,
    ChatModelError,
    ContextOverflowError,
    GenerationCancelled,
    GenerationDeadlineExceeded,
    ModelNotFetchedError,
    StructuredOutputError,
    ToolCallOutputError,
    UnknownModelError,
)
from deepscout.model_runtime.chat.interface import ChatModel, GenerationControl
from deepscout.model_runtime.chat.usage import Usage, usage_of

__all__ = [
    "BUILTIN_BACKENDS",
    "BackendEntry",
    "BackendRegistry",
    "BackendUnavailableError",
    "ChatBackendError",
    "ChatModel",
    "ChatModelError",
    "ContextOverflowError",
    "GenerationCancelled",
    "GenerationControl",
    "GenerationDeadlineExceeded",
    "ModelNotFetchedError",
    "StructuredOutputError",
    "ToolCallOutputError",
    "UnknownModelError",
    "Usage",
    "load_chat_model",
    "usage_of",
]
