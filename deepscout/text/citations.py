"""Citation resolution: ``[n]`` markers in an answer mapped to the sources it was written from.

After generation every marker is checked; a number that names no source given to the model is removed
from the text and logged (a small model invents citations), so every citation left resolves to a
stored document. The agent and the eval's RAG baseline resolve their answers the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# [1], [1, 2], [1;2], [1][2] — a bracket holding only numbers and separators.
_MARKER = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?])")
_DOUBLE_SPACE = re.compile(r"[ \t]{2,}")


@dataclass
class ResolvedCitations:
    text: str
    """The answer with unresolvable markers removed."""
    cited: list[int] = field(default_factory=list)
    """Source numbers cited, in order of first citation."""
    removed: list[str] = field(default_factory=list)
    """Markers (or numbers within one) removed because no source has that number."""


def resolve_citations(answer: str, known: Iterable[int]) -> ResolvedCitations:
    """Keep the ``[n]`` whose ``n`` is in ``known``; remove (and log) the others."""
    valid = set(known)
    cited: list[int] = []
    removed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        numbers = [int(part) for part in re.split(r"\s*[,;]\s*", match.group(1).strip())]
        kept = [n for n in numbers if n in valid]
        for n in numbers:
            if n not in valid:
                removed.append(f"[{n}]")
        for n in kept:
            if n not in cited:
                cited.append(n)
        return "".join(f"[{n}]" for n in kept)

    text = _MARKER.sub(replace, answer)
    if removed:
        logger.warning("removed citations that match no retrieved source: %s", ", ".join(removed))
        text = _DOUBLE_SPACE.sub(" ", _SPACE_BEFORE_PUNCT.sub(r"\1", text)).strip()
    return ResolvedCitations(text=text, cited=cited, removed=removed)
