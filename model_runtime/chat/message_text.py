"""The text of a message's content, shared by every chat format that renders LangChain messages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def content_text(content: str | Sequence[Any] | None) -> str:
    """A message's ``content`` as text: a string as it is; of a list of parts, the strings and the
    ``text`` of the ``{"type": "text"}`` parts, joined; None as empty."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(
        part if isinstance(part, str) else str(part.get("text", ""))
        for part in content
        if isinstance(part, str) or part.get("type") == "text"
    )
