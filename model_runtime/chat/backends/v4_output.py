"""The DeepSeek-V4 chat model's output as it is generated: token ids → text → V4 parse events → chunks.

:class:`OutputReader` decodes the ids UTF-8-safely, ends the text at the first stop string and feeds it to
the V4 completion parser (reasoning, answer, DSML tool calls); :func:`event_chunk` turns each parse event
into the LangChain chunk a stream hands over.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import AIMessageChunk
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

from deepscout.model_runtime.chat.backends.text_stream import StopStrings
from deepscout.model_runtime.v4.chat_format import completion_events as events
from deepscout.model_runtime.v4.chat_format.conversions import REASONING_KEY
from deepscout.model_runtime.v4.chat_format.dsml_parser import CompletionParser, DSMLParseError
from deepscout.model_runtime.v4.chat_format.tokenizer import V4Tokenizer


class OutputReader:
    """Generated ids → text (UTF-8-safe) → parse events; ends at the end-of-sentence token or at the
    first stop string (excluded from the text; a suffix that may begin one is held back until decided)."""

    def __init__(
        self, tokenizer: V4Tokenizer, thinking: bool, *, tool_calls: bool, stop: Sequence[str] = ()
    ) -> None:
        self._decoder = tokenizer.stream_decoder()
        self._parser = CompletionParser(thinking=thinking, tool_calls=tool_calls)
        self._eos = tokenizer.special.eos
        self._stop = StopStrings(stop)
        self._raw = ""
        self._fed = 0
        self.stopped = False
        """True once a stop string appeared: the caller ends the generation."""
        self.error: DSMLParseError | None = None

    @property
    def text(self) -> str:
        """The generated text (up to the stop string, when one appeared)."""
        return self._raw

    def push(self, token_id: int) -> list[events.ParseEvent]:
        """Events the token made certain; after malformed output, none (see :attr:`error`)."""
        if token_id == self._eos or self.stopped:
            return []
        start = max(0, len(self._raw) - self._stop.hold)
        self._raw += self._decoder.step(token_id)
        cut = self._stop.find(self._raw, start)
        if cut is not None:
            self._raw = self._raw[:cut]
            self.stopped = True
            return self._feed(len(self._raw))
        return self._feed(len(self._raw) - self._stop.hold)

    def finish(self) -> tuple[list[events.ParseEvent], events.ParsedCompletion]:
        """The last events and the parsed turn; raises the first parse error met."""
        events = self._feed(len(self._raw))
        if self.error is not None:
            raise self.error
        last, parsed = self._parser.finish()
        return events + last, parsed

    def _feed(self, upto: int) -> list[events.ParseEvent]:
        if self.error is not None or upto <= self._fed:
            return []
        piece, self._fed = self._raw[self._fed : upto], upto
        try:
            return self._parser.feed(piece)
        except DSMLParseError as error:
            self.error = error
            return []


def event_chunk(event: events.ParseEvent) -> ChatGenerationChunk | None:
    """The stream chunk of a parse event (None for events a stream does not show)."""
    if isinstance(event, events.ContentDelta):
        return ChatGenerationChunk(message=AIMessageChunk(content=event.text))
    if isinstance(event, events.ReasoningDelta):
        return ChatGenerationChunk(
            message=AIMessageChunk(content="", additional_kwargs={REASONING_KEY: event.text})
        )
    if isinstance(event, events.ToolCallStarted):
        chunk = tool_call_chunk(name=event.name, args="", id=event.id, index=event.index)
        return ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
    if isinstance(event, events.ToolCallArgumentsDelta):
        chunk = tool_call_chunk(name=None, args=event.text, id=None, index=event.index)
        return ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
    return None
