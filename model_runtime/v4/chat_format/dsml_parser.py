"""Streaming parser of what a DeepSeek-V4 model generates: reasoning, answer text and DSML tool calls.

Fed text in chunks of any size (single characters, decoded tokens, random slices), it emits events as
soon as they are certain — a suffix that could still become a marker (``</think>``, the tool-call
block's opening, the end-of-sentence token) is held back until the next chunk decides it — so any
chunking yields the same events (up to how deltas are split) and the same final message.

Output grammar after the prompt's ``<think>`` (thinking) or ``</think>`` (chat)::

    [reasoning </think>] text [\\n\\n<｜DSML｜tool_calls> invoke* </｜DSML｜tool_calls>] [EOS]
    invoke    := <｜DSML｜invoke name="NAME"> parameter* </｜DSML｜invoke>
    parameter := <｜DSML｜parameter name="KEY" string="true|false">VALUE</｜DSML｜parameter>

(whitespace between elements is free). Anything else inside a tool-call block, a DSML marker outside
one, a ``string="false"`` value that is not JSON, a repeated parameter or a block left open at the end
raises :class:`DSMLParseError` with the character offset where the text went wrong. The events and the
parsed turn are defined in :mod:`.completion_events`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any, Literal, NoReturn

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.chat_format import dsml_markers as tags
from deepscout.model_runtime.v4.chat_format.completion_events import (
    ContentDelta,
    ParsedCompletion,
    ParseEvent,
    ReasoningDelta,
    ToolCallArgumentsDelta,
    ToolCallFinished,
    ToolCallStarted,
)
from deepscout.model_runtime.v4.chat_format.marker_prefix import could_become, held_suffix
from deepscout.model_runtime.v4.chat_format.messages import ToolCall
from deepscout.model_runtime.v4.chat_format.tokenizer import DSML, EOS, THINK_END

MAX_TAG_CHARS = 512
"""An opening tag longer than this (an unterminated name) is malformed."""

_CONTENT_MARKERS = (
    tags.TOOL_CALLS_SEPARATOR + tags.TOOL_CALLS_OPEN,
    tags.TOOL_CALLS_OPEN,
    EOS,
    DSML,
)
_PARAMETER_TAG = re.compile(r'<｜DSML｜parameter name="([^"<>\n]+)" string="(true|false)">')


class DSMLParseError(DeepscoutError, ValueError):
    """Generated text is not valid V4 output (malformed DSML); ``position`` is the offending offset."""

    def __init__(self, message: str, *, position: int) -> None:
        self.position = position
        super().__init__(f"malformed DeepSeek-V4 output at character {position}: {message}")


_Phase = Literal[
    "reasoning", "content", "between_invokes", "in_invoke", "in_parameter", "after_calls", "done"
]


def _default_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class CompletionParser:
    """Incremental parser of one assistant turn; ``feed`` chunks, then ``finish``."""

    def __init__(
        self, *, thinking: bool, tool_calls: bool = True, call_id: Callable[[], str] = _default_call_id
    ) -> None:
        """``tool_calls=False`` (no tools bound): everything after the reasoning is answer text."""
        self._phase: _Phase = "reasoning" if thinking else "content"
        self._tool_calls = tool_calls
        self._call_id = call_id
        self._buffer = ""
        self._offset = 0
        """Offset in the whole text of ``_buffer[0]``."""
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._calls: list[ToolCall] = []
        self._reasoning_closed = not thinking
        self._ended_with_eos = False
        self._call_name = ""
        self._call_id_current = ""
        self._arguments: dict[str, Any] = {}
        self._parameter_name = ""
        self._parameter_is_string = False
        self._parameter_value: list[str] = []

    # -- public -----------------------------------------------------------------------------------

    def feed(self, text: str) -> list[ParseEvent]:
        """Consume a chunk; return the events it made certain."""
        self._buffer += text
        events: list[ParseEvent] = []
        while self._advance(events, final=False):
            pass
        return events

    def finish(self) -> tuple[list[ParseEvent], ParsedCompletion]:
        """End of the generated text: flush held-back text and return the last events and the turn."""
        events: list[ParseEvent] = []
        while self._advance(events, final=True):
            pass
        if self._phase == "reasoning" and self._buffer:
            self._emit_reasoning(events, self._take(len(self._buffer)))
        elif self._phase == "content" and self._buffer:
            self._emit_content(events, self._take(len(self._buffer)))
        elif self._phase in ("between_invokes", "in_invoke", "in_parameter"):
            self._fail(f"the text ended inside the tool-call block (no {tags.TOOL_CALLS_CLOSE})", at=0)
        elif self._buffer.strip():
            self._fail(f"unexpected text {self._buffer[:40]!r} at the end", at=0)
        return events, self.result()

    def result(self) -> ParsedCompletion:
        """What has been parsed so far."""
        return ParsedCompletion(
            reasoning="".join(self._reasoning),
            content="".join(self._content),
            tool_calls=tuple(self._calls),
            reasoning_closed=self._reasoning_closed,
            ended_with_eos=self._ended_with_eos,
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _fail(self, message: str, *, at: int) -> NoReturn:
        raise DSMLParseError(message, position=self._offset + at)

    def _take(self, size: int) -> str:
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        self._offset += size
        return taken

    def _skip_whitespace(self) -> str:
        """Drop leading whitespace; returns what remains of the buffer."""
        stripped = self._buffer.lstrip()
        self._offset += len(self._buffer) - len(stripped)
        self._buffer = stripped
        return stripped

    def _take_marker(self, marker: str) -> bool:
        """Consume ``marker`` when the buffer starts with it."""
        if not self._buffer.startswith(marker):
            return False
        self._take(len(marker))
        return True

    def _enter(self, phase: _Phase) -> bool:
        """Move to ``phase``; True, so a handler can return it as "progress made"."""
        self._phase = phase
        return True

    def _end_of_sentence(self) -> bool:
        """The end-of-sentence marker was consumed: nothing but whitespace may follow."""
        self._ended_with_eos = True
        return self._enter("done")

    def _emit_reasoning(self, events: list[ParseEvent], text: str) -> None:
        if text:
            self._reasoning.append(text)
            events.append(ReasoningDelta(text))

    def _emit_content(self, events: list[ParseEvent], text: str) -> None:
        if text:
            self._content.append(text)
            events.append(ContentDelta(text))

    def _emit_arguments(self, events: list[ParseEvent], text: str) -> None:
        if text:
            events.append(ToolCallArgumentsDelta(len(self._calls), text))

    # -- the state machine ------------------------------------------------------------------------

    def _advance(self, events: list[ParseEvent], *, final: bool) -> bool:
        """Make one step of progress; False when more text is needed (or nothing is left)."""
        if not self._buffer:
            return False
        handlers = {
            "reasoning": self._in_reasoning,
            "content": self._in_content,
            "between_invokes": self._between_invokes,
            "in_invoke": self._in_invoke,
            "in_parameter": self._in_parameter,
            "after_calls": self._after_calls,
            "done": self._after_eos,
        }
        return handlers[self._phase](events, final)

    def _in_reasoning(self, events: list[ParseEvent], final: bool) -> bool:
        buffer = self._buffer
        markers = (THINK_END, EOS, tags.TOOL_CALLS_OPEN) if self._tool_calls else (THINK_END, EOS)
        found = {marker: buffer.find(marker) for marker in markers}
        hits = {marker: at for marker, at in found.items() if at >= 0}
        if not hits:
            keep = 0 if final else held_suffix(buffer, markers)
            self._emit_reasoning(events, self._take(len(buffer) - keep))
            return False
        marker, at = min(hits.items(), key=lambda hit: hit[1])
        if marker == tags.TOOL_CALLS_OPEN and self._tool_calls:
            self._fail(f"a tool-call block began inside the reasoning, before {THINK_END}", at=at)
        self._emit_reasoning(events, self._take(at))
        self._take(len(marker))
        if marker == THINK_END:
            self._reasoning_closed = True
            return self._enter("content")
        return self._end_of_sentence()

    def _in_content(self, events: list[ParseEvent], final: bool) -> bool:
        buffer = self._buffer
        dsml_at = buffer.find(DSML) if self._tool_calls else -1
        eos_at = buffer.find(EOS)
        if eos_at >= 0 and (dsml_at < 0 or eos_at < dsml_at):
            self._emit_content(events, self._take(eos_at))
            self._take(len(EOS))
            return self._end_of_sentence()
        if dsml_at >= 0:
            tag_at = dsml_at - 1
            if tag_at >= 0 and buffer.startswith(tags.TOOL_CALLS_OPEN, tag_at):
                text_end = self._content_end(tag_at)
                self._emit_content(events, self._take(text_end))
                self._take(tag_at - text_end + len(tags.TOOL_CALLS_OPEN))
                return self._enter("between_invokes")
            if tag_at >= 0 and could_become(buffer[tag_at:], tags.TOOL_CALLS_OPEN):
                if final:
                    self._fail(f"the text ended inside an unfinished {tags.TOOL_CALLS_OPEN} tag", at=tag_at)
                self._emit_content(events, self._take(self._content_end(tag_at)))
                return False
            self._fail(f"DSML markup outside a {tags.TOOL_CALLS_OPEN} block", at=dsml_at)
        keep = 0 if final else held_suffix(buffer, _CONTENT_MARKERS if self._tool_calls else (EOS,))
        self._emit_content(events, self._take(len(buffer) - keep))
        return False

    def _content_end(self, tag_at: int) -> int:
        """Where the answer text ends before a tool-call block at ``tag_at`` (the separator is not text)."""
        if self._buffer[:tag_at].endswith(tags.TOOL_CALLS_SEPARATOR):
            return tag_at - len(tags.TOOL_CALLS_SEPARATOR)
        return tag_at

    def _between_invokes(self, events: list[ParseEvent], final: bool) -> bool:
        buffer = self._skip_whitespace()
        if not buffer:
            return False
        if self._take_marker(tags.TOOL_CALLS_CLOSE):
            return self._enter("after_calls")
        if buffer.startswith(tags.INVOKE_OPEN):
            name_end = buffer.find('"', len(tags.INVOKE_OPEN))
            if name_end < 0 or len(buffer) < name_end + 2:
                self._require_more(final, len(buffer), "an unterminated tool name")
                return False
            name = buffer[len(tags.INVOKE_OPEN) : name_end]
            if buffer[name_end : name_end + 2] != '">' or not name or any(c in name for c in "<>\n"):
                self._fail(f"bad tool-call tag {buffer[: name_end + 2]!r}", at=0)
            self._take(name_end + 2)
            self._call_name = name
            self._call_id_current = self._call_id()
            self._arguments = {}
            events.append(ToolCallStarted(len(self._calls), self._call_id_current, name))
            self._emit_arguments(events, "{")
            return self._enter("in_invoke")
        if not final and could_become(buffer, tags.TOOL_CALLS_CLOSE, tags.INVOKE_OPEN):
            return False
        self._fail(
            f'expected {tags.INVOKE_OPEN}NAME"> or {tags.TOOL_CALLS_CLOSE}, found {buffer[:40]!r}', at=0
        )

    def _in_invoke(self, events: list[ParseEvent], final: bool) -> bool:
        buffer = self._skip_whitespace()
        if not buffer:
            return False
        if self._take_marker(tags.INVOKE_CLOSE):
            self._emit_arguments(events, "}")
            call = ToolCall(name=self._call_name, arguments=dict(self._arguments), id=self._call_id_current)
            events.append(ToolCallFinished(len(self._calls), call))
            self._calls.append(call)
            return self._enter("between_invokes")
        if buffer.startswith(tags.PARAMETER_OPEN):
            tag_end = buffer.find(">", len(tags.PARAMETER_OPEN))
            if tag_end < 0:
                self._require_more(final, len(buffer), "an unterminated parameter tag")
                return False
            match = _PARAMETER_TAG.fullmatch(buffer, 0, tag_end + 1)
            if match is None:
                tag = buffer[: tag_end + 1]
                self._fail(f'bad parameter tag {tag!r} (want name="..." string="true|false")', at=0)
            name, flag = match.group(1), match.group(2)
            if name in self._arguments:
                self._fail(f"parameter {name!r} of tool {self._call_name!r} is given twice", at=0)
            self._take(tag_end + 1)
            self._parameter_name = name
            self._parameter_is_string = flag == "true"
            self._parameter_value = []
            separator = ", " if self._arguments else ""
            quote = '"' if self._parameter_is_string else ""
            self._emit_arguments(events, f"{separator}{json.dumps(name, ensure_ascii=False)}: {quote}")
            return self._enter("in_parameter")
        if not final and could_become(buffer, tags.INVOKE_CLOSE, tags.PARAMETER_OPEN):
            return False
        self._fail(
            f'expected {tags.PARAMETER_OPEN}KEY" ...> or {tags.INVOKE_CLOSE} in tool {self._call_name!r}, '
            f"found {buffer[:40]!r}",
            at=0,
        )

    def _in_parameter(self, events: list[ParseEvent], final: bool) -> bool:
        buffer = self._buffer
        dsml_at = buffer.find(DSML)
        eos_at = buffer.find(EOS)
        if eos_at >= 0 and (dsml_at < 0 or eos_at < dsml_at):
            self._fail(
                f"end of sentence inside parameter {self._parameter_name!r} (no {tags.PARAMETER_CLOSE})",
                at=eos_at,
            )
        if dsml_at < 0:
            keep = 0 if final else held_suffix(buffer, (tags.PARAMETER_CLOSE, DSML, EOS))
            self._append_value(events, self._take(len(buffer) - keep))
            return False
        close_at = dsml_at - 2
        if close_at >= 0 and buffer.startswith(tags.PARAMETER_CLOSE, close_at):
            self._append_value(events, self._take(close_at))
            self._take(len(tags.PARAMETER_CLOSE))
            self._close_parameter(events, at=0)
            return self._enter("in_invoke")
        if not final and close_at >= 0 and could_become(buffer[close_at:], tags.PARAMETER_CLOSE):
            self._append_value(events, self._take(close_at))
            return False
        self._fail(
            f"DSML markup inside the value of parameter {self._parameter_name!r} "
            f"(is a {tags.PARAMETER_CLOSE} missing?)",
            at=dsml_at,
        )

    def _append_value(self, events: list[ParseEvent], text: str) -> None:
        if not text:
            return
        self._parameter_value.append(text)
        fragment = json.dumps(text, ensure_ascii=False)[1:-1] if self._parameter_is_string else text
        self._emit_arguments(events, fragment)

    def _close_parameter(self, events: list[ParseEvent], *, at: int) -> None:
        raw = "".join(self._parameter_value)
        value: Any = raw
        if self._parameter_is_string:
            self._emit_arguments(events, '"')
        else:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as error:
                self._fail(
                    f'parameter {self._parameter_name!r} of tool {self._call_name!r} has string="false" '
                    f"but its value {raw[:80]!r} is not JSON ({error.msg})",
                    at=at,
                )
        self._arguments[self._parameter_name] = value
        self._parameter_name = ""
        self._parameter_value = []

    def _after_calls(self, events: list[ParseEvent], final: bool) -> bool:
        buffer = self._skip_whitespace()
        if not buffer:
            return False
        if self._take_marker(EOS):
            return self._end_of_sentence()
        if not final and could_become(buffer, EOS):
            return False
        self._fail(f"text after the tool-call block: {buffer[:40]!r}", at=0)

    def _after_eos(self, events: list[ParseEvent], final: bool) -> bool:
        if self._skip_whitespace():
            self._fail(f"text after the end of sentence: {self._buffer[:40]!r}", at=0)
        return False

    def _require_more(self, final: bool, size: int, what: str) -> None:
        if final or size > MAX_TAG_CHARS:
            self._fail(f"{what} in the tool-call block", at=0)


def parse_completion(
    text: str, *, thinking: bool, tool_calls: bool = True, call_id: Callable[[], str] = _default_call_id
) -> ParsedCompletion:
    """Parse a whole generated assistant turn (the text after the prompt's ``<think>``/``</think>``)."""
    parser = CompletionParser(thinking=thinking, tool_calls=tool_calls, call_id=call_id)
    parser.feed(text)
    return parser.finish()[1]
