"""The built-in chat-model backends, by spec name; each module is imported only when its backend loads.

A backend module exposes ``load_chat_model(argument, settings) -> ChatModel`` (see
:func:`deepscout.model_runtime.chat.load_chat_model`).
"""

from __future__ import annotations

from deepscout.model_runtime.chat import BackendEntry

BUILTIN_BACKENDS: tuple[BackendEntry, ...] = (
    BackendEntry(
        name="smollm2",
        usage="smollm2",
        factory="deepscout.model_runtime.backends.embedded_hf:load_smollm2",
        takes_argument=False,
    ),
    BackendEntry(
        name="hf",
        usage="hf:PATH",
        factory="deepscout.model_runtime.backends.embedded_hf:load_hf_folder",
        takes_argument=True,
    ),
    BackendEntry(
        name="openai",
        usage="openai:MODEL",
        factory="deepscout.model_runtime.backends.openai_compat:load_chat_model",
        takes_argument=True,
    ),
    BackendEntry(
        name="deepseek-v4",
        usage="deepseek-v4:PATH | deepseek-v4:random-tiny",
        factory="deepscout.model_runtime.backends.embedded_v4:load_chat_model",
        takes_argument=True,
    ),
)
