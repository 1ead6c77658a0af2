"""Generated text as it streams: stop strings, and text deltas that never split a character or a stop string.

:class:`StopStrings` is shared by the embedded backends' output readers; :class:`TextStreamer` is the
Hugging Face backend's (token ids → text deltas).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

TextSink = Callable[[tuple[str, Any]], None]
"""Receives ``("text", delta)`` for each piece of text that became certain."""


class StopStrings:
    """The stop strings of a call: where the first one begins in a text, and how many characters at the
    end of a text may still begin one (and so are held back until decided)."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [text for text in stop if text]
        self.hold = max((len(text) - 1 for text in self._stop), default=0)

    def find(self, text: str, start: int = 0) -> int | None:
        """Where the first stop string in ``text[start:]`` begins, or None."""
        positions = [at for at in (text.find(stop, start) for stop in self._stop) if at >= 0]
        return min(positions) if positions else None


class TextStreamer:
    """Turns generated token ids into text deltas, holding back partial UTF-8 and stop strings."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], sink: TextSink | None) -> None:
        self._tokenizer = tokenizer
        self._stop = StopStrings(stop)
        self._sink = sink
        self._tokens: list[int] = []
        self._sent = 0
        self.stopped = False

    def push(self, token_id: int) -> bool:
        """Record a token; True asks the generator to stop (a stop string appeared)."""
        self._tokens.append(token_id)
        text = self._tokenizer.decode(self._tokens, skip_special_tokens=True)
        cut = self._stop.find(text)
        if cut is not None:
            self._emit(text[:cut])
            self.stopped = True
            return True
        safe = len(text) - self._stop.hold
        if text.endswith("\ufffd"):
            safe = min(safe, len(text) - 1)
        self._emit(text[:safe])
        return False

    def finish(self, text: str) -> str:
        """The whole generated ``text`` up to the first stop string; sends what was not sent yet."""
        cut = self._stop.find(text)
        final = text if cut is None else text[:cut]
        self._emit(final)
        return final

    def _emit(self, text: str) -> None:
        if len(text) > self._sent:
            if self._sink is not None:
                self._sink(("text", text[self._sent :]))
            self._sent = len(text)
