"""Marker look-ahead for streamed text: could the text seen so far still turn into a marker?

A streaming parser must not emit text that a later chunk may turn into a marker (``</think>``, a DSML
tag, the end-of-sentence token); these helpers say how much to hold back and whether to wait.
"""

from __future__ import annotations

from collections.abc import Sequence


def held_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``markers``."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


def could_become(text: str, *markers: str) -> bool:
    """True when ``text`` is a prefix of one of ``markers`` (more text may complete it)."""
    return any(marker.startswith(text) for marker in markers)
