"""Our DeepSeek-V4 runtime as a chat model: ``deepseek-v4:PATH`` and ``deepseek-v4:random-tiny``.

``PATH`` is a V4 checkpoint directory (``config.json`` + safetensors in the official format, loaded by
:mod:`deepscout.model_runtime.v4.weights.loader`); ``random-tiny`` is a tiny random-weight V4 (float32)
with the real V4 tokenizer, for tests — its output is noise, but every part of the path is real.

Prompts are written in the V4 chat format (:mod:`deepscout.model_runtime.v4.chat_format.render`) and
tokenized with the V4 tokenizer; the generated text is parsed back as it streams (reasoning, answer, DSML
tool calls → LangChain ``tool_calls``). Structured output renders the schema as the format's response
format and decodes the answer under the JSON-schema grammar (llguidance), then validates it. Generation
runs on the engine (:mod:`deepscout.model_runtime.v4.engine`), whose sessions continue from the longest
cached token prefix, so an append-only conversation prefills only its new tokens.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr

from deepscout.model_runtime.chat.constrained import GrammarGuide, schema_errors, strict_schema
from deepscout.model_runtime.chat.exceptions import ContextOverflowError, StructuredOutputError
from deepscout.model_runtime.chat.grammar_chat import GrammarChatModel
from deepscout.model_runtime.chat.interface import GenerationControl
from deepscout.model_runtime.chat.tool_spec import ToolSpec
from deepscout.model_runtime.v4.chat_format.conversions import REASONING_KEY, tool_specs, turns_from_langchain
from deepscout.model_runtime.v4.chat_format.dsml_grammar import tool_calls_grammar
from deepscout.model_runtime.v4.chat_format.dsml_parser import (
    CompletionParser,
    ContentDelta,
    DSMLParseError,
    ParsedCompletion,
    ParseEvent,
    ReasoningDelta,
    ToolCallArgumentsDelta,
    ToolCallStarted,
)
from deepscout.model_runtime.v4.chat_format.render import (
    PromptSegment,
    ReasoningEffort,
    render_prompt_segments,
)
from deepscout.model_runtime.v4.chat_format.tokenizer import EOS, THINK_END, THINK_START, V4Tokenizer
from deepscout.model_runtime.v4.runtime import (
    GenerationOutcome,
    V4Runtime,
    load_runtime,
)

if TYPE_CHECKING:
    from deepscout.settings import Settings

RETRY_TEMPERATURE = 0.7


class ToolCallOutputError(StructuredOutputError):
    """The model's tool calls were malformed DSML, named an unbound tool, or were missing when required."""


@dataclass(frozen=True)
class _Plan:
    """One call: the prompt ids, how to read the output, and the grammar when it is constrained."""

    prompt_ids: list[int]
    kind: Literal["text", "tools", "structured"]
    thinking: bool
    tool_names: frozenset[str] = frozenset()
    required_tool: str | bool = False
    """A tool name, True (any tool) or False (calling is optional)."""
    guide: Callable[[], GrammarGuide] | None = None
    """Makes the grammar state of one generation (structured output, required tool calls)."""
    schema: dict[str, Any] | None = None
    """The JSON schema structured output must satisfy."""
    stop: tuple[str, ...] = ()
    """Stop strings: the text ends before the first one (free-form output only)."""


@dataclass
class _Decoded:
    """The text of one generation, parsed, with the engine's counters."""

    parsed: ParsedCompletion
    raw_text: str
    outcome: GenerationOutcome


class EmbeddedV4ChatModel(GrammarChatModel):
    """DeepSeek-V4 on our engine, speaking the V4 chat format with the real V4 tokenizer."""

    model_name: str = "deepseek-v4"
    thinking: bool = False
    reasoning_effort: ReasoningEffort | None = None
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    structured_retries: int = 2
    session_id: str = Field(default_factory=lambda: f"v4-chat-{uuid.uuid4().hex[:12]}")
    """The engine session this model's conversation continues (its next turn prefills only new tokens)."""

    _runtime: V4Runtime = PrivateAttr()

    @classmethod
    def from_runtime(cls, runtime: V4Runtime, **fields: Any) -> EmbeddedV4ChatModel:
        model = cls(**fields)
        model._runtime = runtime
        model.context_window = runtime.context_window
        return model

    @property
    def runtime(self) -> V4Runtime:
        return self._runtime

    @property
    def _llm_type(self) -> str:
        return "deepscout-embedded-v4"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "thinking": self.thinking}

    # ----------------------------------------------------------------- prompts

    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the V4 prompt for ``messages`` (with ``tools`` listed), assistant opening included."""
        segments = render_prompt_segments(
            turns_from_langchain(messages),
            tools=tool_specs(tools or []),
            thinking=self.thinking,
            reasoning_effort=self.reasoning_effort,
            context_window=self.context_window,
        )
        return len(self._encode(segments, messages))

    def _plan(self, messages: Sequence[BaseMessage], kwargs: dict[str, Any], stop: list[str] | None) -> _Plan:
        if not messages:
            raise ValueError("cannot generate from an empty message list")
        turns = turns_from_langchain(messages)
        response_format = kwargs.get("response_format")
        tool_choice = kwargs.get("tool_choice")
        specs = tool_specs(kwargs.get("tools") or [])
        if tool_choice == "none":
            specs = []
        required = _required_tool(tool_choice, specs)
        if response_format is not None:
            schema = strict_schema(response_format["schema"])
            # Chat mode: the answer is the JSON object itself, decoded under its grammar.
            segments = render_prompt_segments(turns, tools=specs, thinking=False, response_format=schema)
            grammar = self._runtime.grammars.get(schema)
            ids = self._encode(segments, messages)
            return _Plan(ids, "structured", thinking=False, guide=grammar.guide, schema=schema)
        names = frozenset(spec.name for spec in specs)
        if required:
            # Chat mode, and the output is a DSML block of the allowed tools, decoded under its grammar.
            allowed = [spec for spec in specs if required is True or spec.name == required]
            segments = render_prompt_segments(turns, tools=specs, context_window=self.context_window)
            grammar_text = tool_calls_grammar(allowed)
            return _Plan(
                self._encode(segments, messages),
                "tools",
                thinking=False,
                tool_names=names,
                required_tool=required,
                guide=lambda: self._runtime.lark_guide(grammar_text),
            )
        segments = render_prompt_segments(
            turns,
            tools=specs,
            thinking=self.thinking,
            reasoning_effort=self.reasoning_effort,
            context_window=self.context_window,
        )
        kind: Literal["text", "tools"] = "tools" if specs else "text"
        ids = self._encode(segments, messages)
        return _Plan(ids, kind, self.thinking, names, stop=tuple(stop or ()))

    def _encode(self, segments: Sequence[PromptSegment], messages: Sequence[BaseMessage]) -> list[int]:
        """Prompt ids; an assistant turn this model generated keeps the ids it was generated as.

        Re-encoding generated text need not give back the sampled ids (BPE has many spellings of one
        text), and a changed id would end the engine's reuse of the conversation there. A turn's own ids
        are used when they decode to exactly the turn's rendered text and the text before it ends with a
        special token (where tokenization is split anyway).
        """
        tokenizer = self._runtime.tokenizer
        ids: list[int] = []
        pending = ""
        for segment in segments:
            generated = None
            if segment.assistant_turn is not None and (not pending or pending.endswith(_SPLIT_AFTER)):
                generated = _generated_ids(messages[segment.assistant_turn], segment.text, tokenizer)
            if generated is None:
                pending += segment.text
                continue
            if pending:
                ids += tokenizer.encode(pending)
            ids += generated
            pending = ""
        if pending:
            ids += tokenizer.encode(pending)
        return ids

    # ----------------------------------------------------------------- generation

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        control = GenerationControl.from_kwargs(kwargs)
        plan = self._plan(messages, kwargs, stop)
        return ChatResult(generations=[ChatGeneration(message=self._complete(plan, control))])

    def _complete(self, plan: _Plan, control: GenerationControl) -> AIMessage:
        """Generate and check the output whole, retrying (sampled) when it is unusable for the call."""
        attempts = 1 + (self.structured_retries if plan.kind != "text" else 0)
        problems: list[str] = []
        first_prefill: dict[str, int] | None = None
        output_tokens = 0
        last_text = ""
        for attempt in range(attempts):
            temperature = self.temperature if attempt == 0 else max(self.temperature, RETRY_TEMPERATURE)
            try:
                decoded = self._decode(plan, control, temperature=temperature, seed=attempt)
            except _BadOutput as error:
                first_prefill = first_prefill or error.outcome.prefill
                output_tokens += len(error.outcome.token_ids)
                problems.append(f"attempt {attempt + 1}: {error.problem}")
                last_text = error.raw_text
                continue
            first_prefill = first_prefill or decoded.outcome.prefill
            output_tokens += len(decoded.outcome.token_ids)
            problem = self._problem(plan, decoded)
            if problem is None:
                return self._message(plan, decoded, first_prefill, output_tokens, attempt + 1)
            problems.append(f"attempt {attempt + 1}: {problem}")
            last_text = decoded.raw_text
        error_class = StructuredOutputError if plan.kind == "structured" else ToolCallOutputError
        raise error_class(
            f"{self.model_name} produced no valid {plan.kind} output: {' | '.join(problems)}",
            attempts=attempts,
            last_output=last_text,
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        control = GenerationControl.from_kwargs(kwargs)
        plan = self._plan(messages, kwargs, stop)
        if plan.kind == "structured" or plan.required_tool:
            # Output that must be valid whole (and may be retried) is handed over as one chunk.
            yield ChatGenerationChunk(message=_to_chunk(self._complete(plan, control)))
            return
        stopping = threading.Event()
        stream = self._runtime.stream_tokens(
            plan.prompt_ids,
            max_new_tokens=self._room(plan, control),
            temperature=self.temperature,
            top_p=self.top_p,
            seed=0,
            control=control,
            guide=None,
            session_id=self.session_id,
            stop=stopping,
        )
        reader = _OutputReader(
            self._runtime.tokenizer, plan.thinking, tool_calls=plan.kind == "tools", stop=plan.stop
        )
        try:
            while True:
                token_id = next(stream)
                events = reader.push(token_id)
                if reader.stopped:
                    stopping.set()
                if reader.error is not None:
                    stream.close()
                    error = reader.error
                    raise ToolCallOutputError(str(error), attempts=1, last_output=reader.text) from error
                for event in events:
                    chunk = _event_chunk(event)
                    if chunk is not None:
                        if run_manager is not None and isinstance(event, ContentDelta):
                            run_manager.on_llm_new_token(event.text, chunk=chunk)
                        yield chunk
        except StopIteration as stopped:
            outcome: GenerationOutcome = stopped.value
        try:
            last_events, parsed = reader.finish()
        except DSMLParseError as error:
            raise ToolCallOutputError(str(error), attempts=1, last_output=reader.text) from error
        for event in last_events:
            chunk = _event_chunk(event)
            if chunk is not None:
                yield chunk
        decoded = _Decoded(parsed, reader.text, outcome)
        problem = self._problem(plan, decoded)
        if problem is not None:
            raise ToolCallOutputError(problem, attempts=1, last_output=reader.text)
        final = self._message(plan, decoded, outcome.prefill, len(outcome.token_ids), 1)
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=final.usage_metadata,
                response_metadata=final.response_metadata,
                chunk_position="last",
            )
        )

    def _room(self, plan: _Plan, control: GenerationControl) -> int:
        room = self.context_window - len(plan.prompt_ids)
        if room <= 0:
            raise ContextOverflowError(
                f"the prompt takes {len(plan.prompt_ids)} tokens; {self.model_name}'s context window is "
                f"{self.context_window}"
            )
        return min(control.output_cap(self.max_new_tokens), room)

    def _decode(self, plan: _Plan, control: GenerationControl, *, temperature: float, seed: int) -> _Decoded:
        guide = plan.guide() if plan.guide is not None else None
        stopping = threading.Event()
        stream = self._runtime.stream_tokens(
            plan.prompt_ids,
            max_new_tokens=self._room(plan, control),
            temperature=temperature,
            top_p=self.top_p,
            seed=seed,
            control=control,
            guide=guide,
            session_id=self.session_id,
            stop=stopping,
        )
        reader = _OutputReader(
            self._runtime.tokenizer, plan.thinking, tool_calls=plan.kind == "tools", stop=plan.stop
        )
        try:
            while True:
                reader.push(next(stream))
                if reader.stopped:
                    stopping.set()
        except StopIteration as stopped:
            outcome: GenerationOutcome = stopped.value
        try:
            _events, parsed = reader.finish()
        except DSMLParseError as error:
            raise _BadOutput(str(error), reader.text, outcome) from error
        return _Decoded(parsed, reader.text, outcome)

    def _problem(self, plan: _Plan, decoded: _Decoded) -> str | None:
        """Why the output is unusable for this call, or None."""
        parsed = decoded.parsed
        if plan.schema is not None:
            try:
                value = json.loads(parsed.content)
            except json.JSONDecodeError as error:
                finish = decoded.outcome.finish_reason
                return f"not JSON ({error.msg}; finish={finish}): {parsed.content[:200]!r}"
            errors = schema_errors(plan.schema, value)
            return "; ".join(errors[:5]) if errors else None
        unknown = [call.name for call in parsed.tool_calls if call.name not in plan.tool_names]
        if unknown:
            return f"called unbound tool(s) {unknown}; bound: {sorted(plan.tool_names)}"
        if plan.required_tool is True and not parsed.tool_calls:
            return "a tool call was required but the model answered with text"
        if isinstance(plan.required_tool, str) and plan.required_tool not in {
            call.name for call in parsed.tool_calls
        }:
            return f"a call of {plan.required_tool!r} was required"
        return None

    def _message(
        self, plan: _Plan, decoded: _Decoded, prefill: dict[str, int], output_tokens: int, attempts: int
    ) -> AIMessage:
        outcome = decoded.outcome
        parsed = decoded.parsed
        metadata: dict[str, Any] = {
            "model_name": self.model_name,
            "finish_reason": "tool_calls" if parsed.tool_calls else outcome.finish_reason,
            "prefill": prefill,
            "attempts": attempts,
            "timings": {
                "prefill_s": round(outcome.prefill_seconds, 4),
                "first_token_s": round(outcome.first_token_seconds, 4),
                "decode_s": round(outcome.decode_seconds, 4),
                "decode_tokens": len(outcome.token_ids),
            },
            "raw_output": decoded.raw_text,
            TOKEN_IDS_KEY: list(outcome.token_ids),
        }
        usage = {
            "input_tokens": prefill["prompt_tokens"],
            "output_tokens": output_tokens,
            "total_tokens": prefill["prompt_tokens"] + output_tokens,
        }
        extra = {REASONING_KEY: parsed.reasoning} if parsed.reasoning else {}
        calls = [
            {"name": call.name, "args": call.arguments, "id": call.id, "type": "tool_call"}
            for call in parsed.tool_calls
        ]
        return AIMessage(
            content=parsed.content,
            additional_kwargs=extra,
            tool_calls=calls,
            usage_metadata=usage,
            response_metadata=metadata,
        )


class _BadOutput(Exception):
    def __init__(self, problem: str, raw_text: str, outcome: GenerationOutcome) -> None:
        self.problem = problem
        self.raw_text = raw_text
        self.outcome = outcome
        super().__init__(problem)


class _OutputReader:
    """Generated ids → text (UTF-8-safe) → parse events; ends at the end-of-sentence token or at the
    first stop string (excluded from the text; a suffix that may begin one is held back until decided)."""

    def __init__(
        self, tokenizer: V4Tokenizer, thinking: bool, *, tool_calls: bool, stop: Sequence[str] = ()
    ) -> None:
        self._decoder = tokenizer.stream_decoder()
        self._parser = CompletionParser(thinking=thinking, tool_calls=tool_calls)
        self._eos = tokenizer.special.eos
        self._stop = [text for text in stop if text]
        self._hold = max((len(text) - 1 for text in self._stop), default=0)
        self._raw = ""
        self._fed = 0
        self.stopped = False
        """True once a stop string appeared: the caller ends the generation."""
        self.error: DSMLParseError | None = None

    @property
    def text(self) -> str:
        """The generated text (up to the stop string, when one appeared)."""
        return self._raw

    def push(self, token_id: int) -> list[ParseEvent]:
        """Events the token made certain; after malformed output, none (see :attr:`error`)."""
        if token_id == self._eos or self.stopped:
            return []
        start = max(0, len(self._raw) - self._hold)
        self._raw += self._decoder.step(token_id)
        cuts = [at for at in (self._raw.find(text, start) for text in self._stop) if at >= 0]
        if cuts:
            self._raw = self._raw[: min(cuts)]
            self.stopped = True
            return self._feed(len(self._raw))
        return self._feed(len(self._raw) - self._hold)

    def finish(self) -> tuple[list[ParseEvent], ParsedCompletion]:
        """The last events and the parsed turn; raises the first parse error met."""
        events = self._feed(len(self._raw))
        if self.error is not None:
            raise self.error
        last, parsed = self._parser.finish()
        return events + last, parsed

    def _feed(self, upto: int) -> list[ParseEvent]:
        if self.error is not None or upto <= self._fed:
            return []
        piece, self._fed = self._raw[self._fed : upto], upto
        try:
            return self._parser.feed(piece)
        except DSMLParseError as error:
            self.error = error
            return []


def _event_chunk(event: ParseEvent) -> ChatGenerationChunk | None:
    if isinstance(event, ContentDelta):
        return ChatGenerationChunk(message=AIMessageChunk(content=event.text))
    if isinstance(event, ReasoningDelta):
        return ChatGenerationChunk(
            message=AIMessageChunk(content="", additional_kwargs={REASONING_KEY: event.text})
        )
    if isinstance(event, ToolCallStarted):
        chunk = tool_call_chunk(name=event.name, args="", id=event.id, index=event.index)
        return ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
    if isinstance(event, ToolCallArgumentsDelta):
        chunk = tool_call_chunk(name=None, args=event.text, id=None, index=event.index)
        return ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
    return None


def _to_chunk(message: AIMessage) -> AIMessageChunk:
    chunks = [
        tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=index)
        for index, call in enumerate(message.tool_calls)
    ]
    return AIMessageChunk(
        content=message.content,
        additional_kwargs=message.additional_kwargs,
        tool_call_chunks=chunks,
        usage_metadata=message.usage_metadata,
        response_metadata=message.response_metadata,
        chunk_position="last",
    )


_SPLIT_AFTER = (THINK_START, THINK_END, EOS)
TOKEN_IDS_KEY = "token_ids"
"""``response_metadata`` key of the ids an AIMessage was generated as."""


def _generated_ids(message: BaseMessage, text: str, tokenizer: V4Tokenizer) -> list[int] | None:
    """The ids ``message`` was generated as, when they spell exactly ``text`` (its rendering)."""
    stored = message.response_metadata.get(TOKEN_IDS_KEY) if isinstance(message, AIMessage) else None
    if not isinstance(stored, list) or not stored or not all(isinstance(t, int) for t in stored):
        return None
    decoded = tokenizer.decode(stored)
    if decoded == text:
        return list(stored)
    if decoded + EOS == text:  # stopped by the token limit: the history closes the turn
        return [*stored, tokenizer.special.eos]
    return None


def _required_tool(tool_choice: Any, specs: Sequence[ToolSpec]) -> str | bool:
    if tool_choice in (None, "auto", "none", False):
        return False
    if tool_choice in ("any", "required", True):
        return True
    name = tool_choice
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
    if not isinstance(name, str) or name not in {spec.name for spec in specs}:
        raise ValueError(f"tool_choice names {name!r}, which is not among the bound tools")
    return name


def load_chat_model(argument: str | None, settings: Settings) -> EmbeddedV4ChatModel:
    """``deepseek-v4:PATH`` or ``deepseek-v4:random-tiny`` on a runtime started from ``settings.v4``."""
    options = settings.v4
    runtime = load_runtime(str(argument), options)
    return EmbeddedV4ChatModel.from_runtime(
        runtime,
        model_name=f"deepseek-v4:{argument}",
        thinking=options.thinking,
        reasoning_effort=options.reasoning_effort,
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        structured_retries=options.structured_retries,
    )
