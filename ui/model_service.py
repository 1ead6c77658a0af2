"""The chat models a server may use: only the specs its configuration lists, each loaded once, on first
use, and shared by every session (research runs and OpenAI-compatible requests alike).

A request names a model by its spec exactly as configured (``smollm2``, ``deepseek-v4:random-tiny``); any
other name — a path (``hf:PATH``), a spec the server was not configured for — is refused, so a request can
never make the server load something or spend a remote API key it was not set up for.

One loaded model serves every session at once: calls from the server's threads go straight to it, and the
embedded backends batch them (the V4 runtime's engine thread steps all sequences in flight together, with
its prefix cache and per-conversation sessions; the HF generator decodes its calls in one ragged batch,
reusing each conversation's KV session). ``settings.v4.max_sequences`` / ``settings.hf.max_sequences``
bound a batch; calls beyond it wait for a free row.
"""

from __future__ import annotations

import threading

from deepscout.model_runtime.chat import BackendRegistry, ChatModel
from deepscout.settings import Settings
from deepscout.ui.http_errors import ApiError

AGENT_MODEL = "deepscout-agent"
"""The OpenAI-compatible name of the research agent."""


class ModelService:
    """The served chat models, loaded lazily and kept for the server's life."""

    def __init__(self, settings: Settings, *, served: list[str], registry: BackendRegistry) -> None:
        for spec in served:
            registry.parse(spec)  # an unknown backend fails at start, not on the first request
        self._settings = settings
        self._registry = registry
        self.served = list(dict.fromkeys(served))
        self._models: dict[str, ChatModel] = {}
        self._locks = {spec: threading.Lock() for spec in self.served}

    @property
    def default(self) -> str:
        return self.served[0]

    def require(self, name: str) -> str:
        """``name`` if the server serves it; else a 404 naming the served models."""
        if name not in self._locks:
            listed = ", ".join([AGENT_MODEL, *self.served])
            raise ApiError(
                404, f"model {name!r} is not served here; use one of: {listed}", kind="model_not_found"
            )
        return name

    def close(self) -> None:
        """Close every model loaded so far (their generation threads stop): the server's last step. The
        models are the service's own (each spec loaded by it, once)."""
        for spec in self.served:
            with self._locks[spec]:
                model = self._models.pop(spec, None)
            if model is not None:
                model.close()

    def get(self, name: str) -> ChatModel:
        """The loaded model ``name`` (loading it now if it is the first use). Blocks while loading."""
        spec = self.require(name)
        with self._locks[spec]:
            model = self._models.get(spec)
            if model is None:
                model = self._models[spec] = self._registry.load(spec, settings=self._settings)
            return model

    def loaded(self) -> list[str]:
        return [spec for spec in self.served if spec in self._models]
