"""The backend registry: chat-model specs (``NAME`` or ``NAME:ARG``) and the modules that build them.

``load_chat_model(spec, settings=...)`` turns a spec into a :class:`ChatModel`:

- ``smollm2`` — the embedded default, SmolLM2-135M-Instruct on the CPU (fetched by ``deepscout setup``);
- ``hf:PATH`` — any local Hugging Face causal-LM folder;
- ``openai:MODEL`` — an OpenAI-compatible server (DeepSeek API, vLLM, SGLang), configured by
  ``settings.openai``;
- ``deepseek-v4:PATH`` / ``deepseek-v4:random-tiny`` — our own DeepSeek-V4 runtime (``settings.v4``).

A backend module exposes ``load_chat_model(argument, settings) -> ChatModel`` and is imported only when
its backend loads, so its heavy imports (torch, transformers, openai) happen only then. Extra backends
(tests, plugins) are added to a :class:`BackendRegistry` with :meth:`BackendRegistry.register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deepscout.model_runtime.chat.exceptions import BackendUnavailableError, UnknownModelError
from deepscout.model_runtime.chat.interface import ChatModel

if TYPE_CHECKING:
    from deepscout.settings import Settings


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


BUILTIN_BACKENDS: tuple[BackendEntry, ...] = (
    BackendEntry(
        name="smollm2",
        usage="smollm2",
        factory="deepscout.model_runtime.chat.backends.embedded_hf:load_smollm2",
        takes_argument=False,
    ),
    BackendEntry(
        name="hf",
        usage="hf:PATH",
        factory="deepscout.model_runtime.chat.backends.embedded_hf:load_hf_folder",
        takes_argument=True,
    ),
    BackendEntry(
        name="openai",
        usage="openai:MODEL",
        factory="deepscout.model_runtime.chat.backends.openai_compat:load_chat_model",
        takes_argument=True,
    ),
    BackendEntry(
        name="deepseek-v4",
        usage="deepseek-v4:PATH | deepseek-v4:random-tiny",
        factory="deepscout.model_runtime.chat.backends.embedded_v4:load_chat_model",
        takes_argument=True,
    ),
)
"""The built-in backends, in the order they are listed to the user."""


class BackendRegistry:
    """The backends a process knows: the built-in ones, plus any registered on this object.

    Built by an entry point (or per call, with the built-in backends only); there is no process-wide
    registry to mutate.
    """

    def __init__(self, entries: tuple[BackendEntry, ...] | None = None) -> None:
        self._entries = {entry.name: entry for entry in (BUILTIN_BACKENDS if entries is None else entries)}

    def register(
        self,
        name: str,
        factory: str | BackendFactory,
        *,
        usage: str | None = None,
        takes_argument: bool = True,
    ) -> None:
        """Add (or replace) a backend. ``factory`` is ``"module:function"`` or a callable
        ``(arg, settings)``."""
        self._entries[name] = BackendEntry(
            name=name,
            usage=usage or (f"{name}:ARG" if takes_argument else name),
            factory=factory,
            takes_argument=takes_argument,
        )

    def entries(self) -> list[BackendEntry]:
        """The known backends, built-in ones first."""
        return list(self._entries.values())

    def parse(self, spec: str) -> tuple[BackendEntry, str | None]:
        """Split ``spec`` into its backend entry and argument; raise UnknownModelError if none matches."""
        usages = [entry.usage for entry in self._entries.values()]
        text = spec.strip()
        name, sep, argument = text.partition(":")
        entry = self._entries.get(name)
        if entry is None or not text:
            raise UnknownModelError(spec, usages)
        if entry.takes_argument and not (sep and argument):
            raise UnknownModelError(spec, usages)
        if not entry.takes_argument and sep:
            raise UnknownModelError(spec, usages)
        return entry, (argument if sep else None)

    def load(self, spec: str, *, settings: Settings) -> ChatModel:
        """Build the chat model that ``spec`` names (see the module docstring for the forms)."""
        entry, argument = self.parse(spec)
        return entry.resolve()(argument, settings)


def load_chat_model(spec: str, *, settings: Settings, registry: BackendRegistry | None = None) -> ChatModel:
    """Build the chat model that ``spec`` names, from ``registry`` (default: the built-in backends)."""
    return (registry or BackendRegistry()).load(spec, settings=settings)
