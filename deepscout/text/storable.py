"""Whether a piece of user text can be stored and sent on: no NUL characters (PostgreSQL refuses them) and
no lone surrogates (bytes that were not UTF-8, decoded with ``surrogateescape``)."""

from __future__ import annotations


def unstorable_reason(value: str) -> str | None:
    """Why ``value`` cannot be stored (a phrase to finish "the question ..."), or None when it can."""
    if "\x00" in value:
        return "contains a NUL character; remove it and try again"
    if any("\ud800" <= char <= "\udfff" for char in value):
        return "is not valid UTF-8 text; check the terminal's encoding and try again"
    return None
