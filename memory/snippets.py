"""Search-result snippets computed in Python from a bounded head of the document.

FTS5's ``snippet()`` scores every window of the whole document and costs quadratic time on a large one
(25 s for a 2 MB document, minutes for 50 MB), and ``ts_headline`` re-parses what it is given. Both
engines now only rank; the snippet is cut here from the first ``SNIPPET_SCAN_CHARS`` characters of each
hit (one bounded read), around the first word that starts like a query term (so ``glaciers`` and
``glacier`` meet as they do under stemming), else from the start. Its cost does not depend on the
document's size.
"""

from __future__ import annotations

import re

SNIPPET_SCAN_CHARS = 100_000
SNIPPET_WORDS = 32
_WORDS_BEFORE = 8
_LOOKBACK_CHARS = 400
_ELLIPSIS = "…"
_SUFFIXES = ("ing", "ed", "es", "s")
_WORD = re.compile(r"\S+")


def _stem(term: str) -> str:
    for suffix in _SUFFIXES:
        if term.endswith(suffix) and len(term) - len(suffix) >= 3:
            return term[: -len(suffix)]
    return term


def term_pattern(terms: list[str]) -> re.Pattern[str] | None:
    """A pattern for the first word starting like one of ``terms`` (query terms, letters and digits)."""
    stems = sorted({_stem(term) for term in terms if term}, key=len, reverse=True)
    if not stems:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(stem) for stem in stems) + r")", re.IGNORECASE)


def snippet(head: str, pattern: re.Pattern[str] | None, *, words: int = SNIPPET_WORDS) -> str:
    """About ``words`` words of ``head`` around the first match of ``pattern`` (from the start when none
    matches), with ``…`` where text was left out."""
    match = pattern.search(head) if pattern is not None else None
    at = match.start() if match is not None else 0
    before = [m.start() for m in _WORD.finditer(head, max(0, at - _LOOKBACK_CHARS), at)]
    if before and before[0] > 0 and not head[before[0] - 1].isspace():
        before = before[1:]  # a word cut by the look-back window
    start = before[-_WORDS_BEFORE:][0] if before else at
    picked = []
    end = start
    for found in _WORD.finditer(head, start):
        picked.append(found.group())
        end = found.end()
        if len(picked) >= words:
            break
    text = " ".join(picked)
    if start > 0:
        text = f"{_ELLIPSIS} {text}"
    if end < len(head.rstrip()):
        text = f"{text} {_ELLIPSIS}"
    return text
