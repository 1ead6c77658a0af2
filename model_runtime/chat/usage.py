"""The token usage of a model call: one typed record, how it travels on a message, and its one reader.

Every backend puts a :class:`Usage` on the ``AIMessage`` it returns with :func:`usage_fields`: LangChain's
standard ``usage_metadata`` (input / output / total tokens) plus ``response_metadata["prefill"]``, the
prefill counters (``prompt_tokens``, ``reused_tokens``, ``computed_tokens``) as plain JSON, so stored
checkpoints and messages written before this record existed read back the same. Whoever needs the usage
of a message (the agent, the evals, the benchmarks) reads it with :func:`usage_of`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from langchain_core.messages import BaseMessage

PREFILL_KEY = "prefill"
"""``response_metadata`` key of the prefill counters."""


@dataclass(frozen=True)
class Usage:
    """Tokens one model call (or several, added with ``+``) read and wrote."""

    prompt_tokens: int = 0
    """Tokens of the prompt."""
    reused_tokens: int = 0
    """Prompt tokens taken from a cache (a KV session, the engine's prefix cache, the server's cache)."""
    computed_tokens: int = 0
    """Prompt tokens run through the model: ``prompt_tokens - reused_tokens`` (the V4 engine may compute
    more after a preemption)."""
    output_tokens: int = 0
    """Tokens generated (every attempt of a retried call)."""

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            reused_tokens=self.reused_tokens + other.reused_tokens,
            computed_tokens=self.computed_tokens + other.computed_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def as_dict(self) -> dict[str, int]:
        """All four counters by name."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def prefill(self) -> dict[str, int]:
        """The prefill counters, as ``response_metadata["prefill"]`` stores them."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "computed_tokens": self.computed_tokens,
        }

    def with_output(self, output_tokens: int) -> Usage:
        """The same prefill, ``output_tokens`` more written (a retry decodes again from the same prompt)."""
        return replace(self, output_tokens=self.output_tokens + output_tokens)


def usage_fields(usage: Usage, response_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """``usage_metadata`` and ``response_metadata`` (``response_metadata`` plus the prefill counters) of a
    message carrying ``usage``: ``AIMessage(content=..., **usage_fields(usage, metadata))``."""
    return {
        "usage_metadata": {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
        },
        "response_metadata": {**(response_metadata or {}), PREFILL_KEY: usage.prefill()},
    }


def usage_of(message: BaseMessage) -> Usage:
    """The usage a message carries (all zero for one without counters).

    The prefill counters come from ``response_metadata["prefill"]``; a message without them (another
    backend's) counts its ``usage_metadata`` input tokens as prompt, none reused. Output tokens come from
    ``usage_metadata``.
    """
    prefill: dict[str, Any] = message.response_metadata.get(PREFILL_KEY) or {}
    metadata: dict[str, Any] = getattr(message, "usage_metadata", None) or {}
    prompt = int(prefill.get("prompt_tokens") or metadata.get("input_tokens") or 0)
    reused = int(prefill.get("reused_tokens") or 0)
    computed = prefill.get("computed_tokens")
    return Usage(
        prompt_tokens=prompt,
        reused_tokens=reused,
        computed_tokens=prompt - reused if computed is None else int(computed),
        output_tokens=int(metadata.get("output_tokens") or 0),
    )
