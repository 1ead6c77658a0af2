"""Token counts of OpenAI-format conversations in the V4 chat format (for remote V4 servers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from deepscout.model_runtime.v4.chat_format.conversions import tool_specs, turns_from_openai
from deepscout.model_runtime.v4.chat_format.render import render_prompt
from deepscout.model_runtime.v4.chat_format.tokenizer import load_v4_tokenizer


def count_chat_tokens(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    thinking: bool = False,
) -> int:
    """Tokens of OpenAI-format ``messages`` (and ``tools``) rendered in the V4 chat format.

    For remote DeepSeek-V4 servers: the prompt they build from a chat-completions request is this one.
    """
    text = render_prompt(turns_from_openai(messages), tools=tool_specs(tools or []), thinking=thinking)
    return load_v4_tokenizer().count_tokens(text)
