"""The root of deepscout's own errors.

Every error deepscout raises on purpose (bad input, a missing model or corpus, an unreachable server, a
malformed checkpoint) derives from :class:`DeepscoutError` and carries a message a user can act on, so an
entry point catches this one class and prints one line.
"""

from __future__ import annotations


class DeepscoutError(Exception):
    """Base class of every error deepscout raises on purpose; its message says what to change."""
