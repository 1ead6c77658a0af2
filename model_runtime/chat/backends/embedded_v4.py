"""Our DeepSeek-V4 runtime as a chat model: ``deepseek-v4:PATH`` and ``deepseek-v4:random-tiny``.

``PATH`` is a V4 checkpoint directory (``config.json`` + safetensors in the official format, loaded by
:mod:`deepscout.model_runtime.v4.weights.loader`); ``random-tiny`` is a tiny random-weight V4 (float32)
with the real V4 tokenizer, for tests — its output is noise, but every part of the path is real.

Prompts are written in the V4 chat format (:mod:`deepscout.model_runtime.v4.chat_format.render`) and
tokenized with the V4 tokenizer; the generated text is parsed back as it streams (:mod:`.v4_output`:
reasoning, answer, DSML tool calls → LangChain ``tool_calls``). Structured output renders the schema as the
format's response format and decodes the answer under the JSON-schema grammar (llguidance), then validates
it. Generation runs on the engine (:mod:`deepscout.model_runtime.v4.engine`) through the runtime's one
engine thread, so calls from many threads batch together; each continues the engine session holding the
longest prefix of its prompt, so an append-only conversation prefills only its new tokens. Where a later
prompt is likely to diverge (the renderer's checkpoint segments: in the last user turn, after the text of
its next-to-last part and after its own text) the request asks the engine to keep its state, so the next
round and a structured retry, which add text there, reuse the prompt up to that point.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.tool import tool_call
from langchain_core.outputs import ChatGenerationChunk
from pydantic import PrivateAttr

from deepscout.model_runtime.chat.backends.v4_output import OutputReader, event_chunk
from deepscout.model_runtime.chat.constrained import GrammarGuide, schema_errors, strict_schema
from deepscout.model_runtime.chat.embedded_base import (
    Attempt,
    CallPlan,
    EmbeddedChatModel,
    GenerationOutcome,
    last_chunk,
    required_tool,
)
from deepscout.model_runtime.chat.exceptions import ToolCallOutputError
from deepscout.model_runtime.chat.interface import GenerationControl
from deepscout.model_runtime.chat.usage import Usage
from deepscout.model_runtime.v4.chat_format.completion_events import ContentDelta, ParsedCompletion
from deepscout.model_runtime.v4.chat_format.conversions import REASONING_KEY, tool_specs, turns_from_langchain
from deepscout.model_runtime.v4.chat_format.dsml_grammar import tool_calls_grammar
from deepscout.model_runtime.v4.chat_format.dsml_parser import DSMLParseError
from deepscout.model_runtime.v4.chat_format.render import (
    PromptSegment,
    ReasoningEffort,
    render_prompt_segments,
)
from deepscout.model_runtime.v4.chat_format.tokenizer import EOS, THINK_END, THINK_START, V4Tokenizer
from deepscout.model_runtime.v4.runtime import V4Runtime, load_runtime

if TYPE_CHECKING:
    from deepscout.settings import Settings

TOKEN_IDS_KEY = "token_ids"
"""``response_metadata`` key of the ids an AIMessage was generated as."""
_SPLIT_AFTER = (THINK_START, THINK_END, EOS)


@dataclass(frozen=True)
class _V4Plan(CallPlan):
    """A call on V4: thinking or not, the tool call it requires, and the grammar when it is constrained."""

    thinking: bool = False
    required_tool: str | bool = False
    """A tool name, True (any tool) or False (calling is optional)."""
    guide: Callable[[], GrammarGuide] | None = None
    """Makes the grammar state of one generation (structured output, required tool calls)."""
    schema: dict[str, Any] | None = None
    """The JSON schema structured output must satisfy."""
    checkpoints: tuple[int, ...] = ()
    """Prompt positions where a later prompt likely diverges (the engine keeps its state near each)."""

    @property
    def whole(self) -> bool:
        # Optional tool calls stream as they are parsed; required ones and structured output come whole.
        return self.kind == "structured" or bool(self.required_tool)


class EmbeddedV4ChatModel(EmbeddedChatModel[_V4Plan]):
    """DeepSeek-V4 on our engine, speaking the V4 chat format with the real V4 tokenizer."""

    model_name: str = "deepseek-v4"
    thinking: bool = False
    reasoning_effort: ReasoningEffort | None = None
    top_p: float = 1.0

    backend_type = "deepscout-embedded-v4"
    identifying_fields = ("model_name", "thinking")

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

    def close(self) -> None:
        """Stop the runtime's engine thread (its requests in flight fail)."""
        self._runtime.close()

    @property
    def serves_threads_concurrently(self) -> bool:
        """True: concurrent calls decode together in the engine's batched steps."""
        return True

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
        ids, _ = self._encode(segments, messages)
        return len(ids)

    def _plan(
        self, messages: Sequence[BaseMessage], options: dict[str, Any], stop: list[str] | None
    ) -> _V4Plan:
        if not messages:
            raise ValueError("cannot generate from an empty message list")
        turns = turns_from_langchain(messages)
        response_format = options.get("response_format")
        tool_choice = options.get("tool_choice")
        specs = [] if tool_choice == "none" else tool_specs(options.get("tools") or [])
        names = frozenset(spec.name for spec in specs)
        required = required_tool(tool_choice, names)
        if response_format is not None:
            schema = strict_schema(response_format["schema"])
            # Chat mode: the answer is the JSON object itself, decoded under its grammar.
            segments = render_prompt_segments(turns, tools=specs, thinking=False, response_format=schema)
            ids, checkpoints = self._encode(segments, messages)
            guide = self._runtime.grammars.get(schema).guide
            return _V4Plan(ids, "structured", guide=guide, schema=schema, checkpoints=checkpoints)
        if required:
            # Chat mode, and the output is a DSML block of the allowed tools, decoded under its grammar.
            allowed = [spec for spec in specs if required is True or spec.name == required]
            segments = render_prompt_segments(turns, tools=specs, context_window=self.context_window)
            grammar_text = tool_calls_grammar(allowed)
            ids, checkpoints = self._encode(segments, messages)
            return _V4Plan(
                ids,
                "tools",
                names,
                required_tool=required,
                guide=lambda: self._runtime.lark_guide(grammar_text),
                checkpoints=checkpoints,
            )
        segments = render_prompt_segments(
            turns,
            tools=specs,
            thinking=self.thinking,
            reasoning_effort=self.reasoning_effort,
            context_window=self.context_window,
        )
        kind: Literal["text", "tools"] = "tools" if specs else "text"
        ids, checkpoints = self._encode(segments, messages)
        return _V4Plan(ids, kind, names, tuple(stop or ()), self.thinking, checkpoints=checkpoints)

    def _encode(
        self, segments: Sequence[PromptSegment], messages: Sequence[BaseMessage]
    ) -> tuple[list[int], tuple[int, ...]]:
        """Prompt ids, and the token positions of the segments marked ``checkpoint`` (the tokens wholly
        before each segment's end); an assistant turn this model generated keeps the ids it was generated as.

        Re-encoding generated text need not give back the sampled ids (BPE has many spellings of one
        text), and a changed id would end the engine's reuse of the conversation there. A turn's own ids
        are used when they decode to exactly the turn's rendered text and the text before it ends with a
        special token (where tokenization is split anyway). Text between such turns is encoded once.
        """
        tokenizer = self._runtime.tokenizer
        ids: list[int] = []
        checkpoints: list[int] = []
        pending = ""
        marks: list[int] = []  # checkpoints in `pending`, as character offsets
        for segment in segments:
            generated = None
            if segment.assistant_turn is not None and (not pending or pending.endswith(_SPLIT_AFTER)):
                generated = _generated_ids(messages[segment.assistant_turn], segment.text, tokenizer)
            if generated is None:
                pending += segment.text
                if segment.checkpoint:
                    marks.append(len(pending))
                continue
            _encode_text(tokenizer, pending, marks, ids, checkpoints)
            ids += generated
            pending, marks = "", []
        _encode_text(tokenizer, pending, marks, ids, checkpoints)
        return ids, tuple(checkpoints)

    # ----------------------------------------------------------------- generation

    def _attempt(
        self, plan: _V4Plan, control: GenerationControl, *, max_new_tokens: int, temperature: float, seed: int
    ) -> Attempt:
        reading = self._read(plan, control, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        while True:
            try:
                next(reading)
            except StopIteration as done:
                attempt: Attempt = done.value
                return attempt

    def _stream_decoding(
        self, plan: _V4Plan, control: GenerationControl, run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        """Stream the answer (and reasoning, and optional tool calls) as the output is parsed."""
        max_new_tokens = self._output_room(len(plan.prompt_ids), control)
        reading = self._read(
            plan, control, max_new_tokens=max_new_tokens, temperature=self.temperature, seed=0
        )
        while True:
            try:
                event = next(reading)
            except StopIteration as done:
                attempt: Attempt = done.value
                break
            chunk = event_chunk(event)
            if chunk is not None:
                if run_manager is not None and isinstance(event, ContentDelta):
                    run_manager.on_llm_new_token(event.text, chunk=chunk)
                yield chunk
        if attempt.problem is not None:
            raise ToolCallOutputError(attempt.problem, attempts=1, last_output=attempt.raw_text)
        yield last_chunk(self._reply(plan, attempt, attempt.outcome.usage, 1), streamed=True)

    def _read(
        self, plan: _V4Plan, control: GenerationControl, *, max_new_tokens: int, temperature: float, seed: int
    ) -> Generator[Any, None, Attempt]:
        """One generation, read as it comes: yields the parse events each token makes certain, returns the
        attempt with why its output is unusable (malformed DSML ends the generation there)."""
        stopping = threading.Event()
        stream = self._runtime.stream_tokens(
            plan.prompt_ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=self.top_p,
            seed=seed,
            control=control,
            guide=plan.guide() if plan.guide is not None else None,
            stop=stopping,
            checkpoints=plan.checkpoints,
        )
        reader = OutputReader(
            self._runtime.tokenizer, plan.thinking, tool_calls=plan.kind == "tools", stop=plan.stop
        )
        try:
            while True:
                yield from reader.push(next(stream))
                if reader.stopped or reader.error is not None:
                    stopping.set()
        except StopIteration as stopped:
            outcome: GenerationOutcome = stopped.value
        finally:
            stream.close()
        try:
            last_events, parsed = reader.finish()
        except DSMLParseError as error:
            return Attempt(outcome, reader.text, problem=str(error))
        yield from last_events
        return Attempt(outcome, reader.text, parsed, _problem(plan, parsed, outcome.finish_reason))

    def _reply(self, plan: _V4Plan, attempt: Attempt, usage: Usage, attempts: int) -> AIMessage:
        parsed: ParsedCompletion = attempt.value
        return self._message(
            attempt,
            usage,
            attempts,
            content=parsed.content,
            tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in parsed.tool_calls],
            additional_kwargs={REASONING_KEY: parsed.reasoning} if parsed.reasoning else None,
            **{TOKEN_IDS_KEY: list(attempt.outcome.token_ids)},
        )


def _problem(plan: _V4Plan, parsed: ParsedCompletion, finish_reason: str) -> str | None:
    """Why the output is unusable for this call, or None."""
    if plan.schema is not None:
        try:
            value = json.loads(parsed.content)
        except json.JSONDecodeError as error:
            return f"not JSON ({error.msg}; finish={finish_reason}): {parsed.content[:200]!r}"
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


def _encode_text(
    tokenizer: V4Tokenizer, text: str, marks: Sequence[int], ids: list[int], checkpoints: list[int]
) -> None:
    """Append the ids of ``text`` to ``ids`` and the token positions of its ``marks`` to ``checkpoints``."""
    if not text:
        return
    encoded, counts = tokenizer.encode_marked(text, marks)
    checkpoints += [len(ids) + count for count in counts]
    ids += encoded


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


def load_chat_model(argument: str | None, settings: Settings) -> EmbeddedV4ChatModel:
    """``deepseek-v4:PATH`` or ``deepseek-v4:random-tiny`` on a runtime started from ``settings.v4``."""
    options = settings.v4
    runtime = load_runtime(str(argument), options)
    # The sampling and thinking settings; the context window is the runtime's.
    fields = EmbeddedV4ChatModel.fields_from(options, exclude={"context_window"})
    return EmbeddedV4ChatModel.from_runtime(runtime, model_name=f"deepseek-v4:{argument}", **fields)
