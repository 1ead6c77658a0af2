"""Embedded Hugging Face causal LMs as chat models: ``smollm2`` (the default) and ``hf:PATH``.

Runs on the CPU in float32, keeps KV-cache sessions so an append-only
conversation prefills only its new tokens (:mod:`.hf_session`), and produces tool calls and structured
output under a JSON-schema grammar (:mod:`deepscout.model_runtime.chat.constrained`), validated, with a
bounded retry. Nothing is downloaded at run time: models load from local folders only.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr

from deepscout.model_runtime.chat.backends import smollm2, tool_prompts
from deepscout.model_runtime.chat.backends.hf_session import GenerationResult, HFGenerator
from deepscout.model_runtime.chat.constrained import (
    ANSWER_KEY,
    GrammarCache,
    JsonGrammar,
    cap_strings,
    dump_compact,
    schema_errors,
    strict_schema,
    tool_call_schema,
)
from deepscout.model_runtime.chat.exceptions import (
    ContextOverflowError,
    ModelNotFetchedError,
    StructuredOutputError,
)
from deepscout.model_runtime.chat.grammar_chat import GrammarChatModel
from deepscout.model_runtime.chat.interface import GenerationControl
from deepscout.model_runtime.chat.tool_spec import ToolSpec

if TYPE_CHECKING:
    from deepscout.settings import Settings

RETRY_TEMPERATURE = 0.7


@dataclass
class _LoadedModel:
    model: Any
    tokenizer: Any
    grammars: GrammarCache
    context_window: int
    eos_token_ids: list[int]


_loaded: dict[str, _LoadedModel] = {}
_load_lock = threading.Lock()


def _load_folder(path: Path) -> _LoadedModel:
    """Load (once per process) a local HF causal-LM folder in float32, never touching the network."""
    key = str(path.resolve())
    with _load_lock:
        if key in _loaded:
            return _loaded[key]
        import llguidance.hf
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(key, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(key, dtype=torch.float32, local_files_only=True)
        model.eval()
        eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
        eos_ids = sorted(token for token in eos if token is not None)
        ll_tokenizer = llguidance.hf.from_tokenizer(
            tokenizer,  # type: ignore[arg-type]
            n_vocab=model.config.vocab_size,
            eos_token=eos_ids,
        )
        window = int(getattr(model.config, "max_position_embeddings", smollm2.CONTEXT_WINDOW))
        loaded = _LoadedModel(
            model=model,
            tokenizer=tokenizer,
            grammars=GrammarCache(ll_tokenizer, model.config.vocab_size),
            context_window=window,
            eos_token_ids=eos_ids,
        )
        _loaded[key] = loaded
        return loaded


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass(frozen=True)
class _DecodePlan:
    """What one call asks for: the prompt text and, when constrained, the grammar and how to read it."""

    prompt: str
    grammar: JsonGrammar | None
    kind: str
    """``text``, ``tools`` or ``structured``."""
    tool_names: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RawDecode:
    text: str
    schema: dict[str, Any]
    tokens: int
    decode_seconds: float
    grammar_seconds: float
    finish_reason: str


class EmbeddedHFChatModel(GrammarChatModel):
    """A local HF causal LM (ChatML chat format) with sessions, deadlines and constrained tool calls."""

    model_path: str
    model_name: str = "hf"
    max_new_tokens: int = 512
    temperature: float = 0.0
    max_parallel_tool_calls: int = 3
    max_argument_chars: int = 200
    """Cap on string tool arguments without their own maxLength (stops a small model rambling)."""
    structured_retries: int = 2
    max_sessions: int = 3
    prefill_chunk_tokens: int = 256

    _runtime: _LoadedModel = PrivateAttr()
    _generator: HFGenerator = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._runtime = _load_folder(Path(self.model_path))
        self.context_window = self._runtime.context_window
        self._generator = HFGenerator(
            self._runtime.model,
            eos_token_ids=self._runtime.eos_token_ids,
            max_sessions=self.max_sessions,
            prefill_chunk_tokens=self.prefill_chunk_tokens,
        )

    @property
    def _llm_type(self) -> str:
        return "deepscout-embedded-hf"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_path": self.model_path}

    # ----------------------------------------------------------------- prompts

    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        formatted = [convert_to_openai_tool(tool) for tool in tools] if tools else None
        plan = self._plan(messages, tools=formatted, tool_choice=None, response_format=None)
        return len(self._encode(plan.prompt))

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = self._runtime.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def _plan(
        self,
        messages: Sequence[BaseMessage],
        *,
        tools: Sequence[dict[str, Any]] | None,
        tool_choice: str | dict[str, Any] | bool | None,
        response_format: Mapping[str, Any] | None,
    ) -> _DecodePlan:
        specs = [_tool_spec(tool, self.max_argument_chars) for tool in tools or []]
        forced = _forced_tool(tool_choice)
        if forced is not None:
            specs = [spec for spec in specs if spec.name == forced]
            if not specs:
                raise ValueError(f"tool_choice names {forced!r}, which is not among the bound tools")
        use_tools = bool(specs) and tool_choice != "none" and response_format is None
        allow_answer = tool_choice in (None, "auto")
        system_extra = ""
        if use_tools:
            examples = {tool["function"]["name"]: _schema_examples(tool) for tool in tools or []}
            system_extra = tool_prompts.tools_system_prompt(specs, examples, allow_answer=allow_answer)
        text = self._render(messages, system_extra)
        if response_format is not None:
            schema = strict_schema(response_format["schema"])
            instruction = tool_prompts.STRUCTURED_OUTPUT_INSTRUCTION.format(schema=dump_compact(schema))
            text += tool_prompts.chatml_turn("system", instruction)
            text += tool_prompts.generation_prompt()
            return _DecodePlan(text, self._runtime.grammars.get(schema), "structured")
        text += tool_prompts.generation_prompt()
        if not use_tools:
            return _DecodePlan(text, None, "text")
        schema = tool_call_schema(specs, max_calls=self.max_parallel_tool_calls, allow_answer=allow_answer)
        names = frozenset(spec.name for spec in specs)
        return _DecodePlan(text, self._runtime.grammars.get(schema), "tools", names)

    def _render(self, messages: Sequence[BaseMessage], system_extra: str) -> str:
        if not messages:
            raise ValueError("cannot generate from an empty message list")
        tool_names = {
            call["id"]: call["name"]
            for message in messages
            if isinstance(message, AIMessage)
            for call in message.tool_calls
        }
        parts: list[str] = []
        rest = list(messages)
        system = tool_prompts.DEFAULT_SYSTEM_PROMPT
        if isinstance(rest[0], SystemMessage):
            system = _text(rest.pop(0))
        if system_extra:
            system = f"{system}\n\n{system_extra}"
        parts.append(tool_prompts.chatml_turn("system", system))
        for message in rest:
            if isinstance(message, SystemMessage):
                parts.append(tool_prompts.chatml_turn("system", _text(message)))
            elif isinstance(message, HumanMessage):
                parts.append(tool_prompts.chatml_turn("user", _text(message)))
            elif isinstance(message, AIMessage):
                parts.append(tool_prompts.chatml_turn("assistant", _assistant_text(message)))
            elif isinstance(message, ToolMessage):
                name = message.name or tool_names.get(message.tool_call_id, "tool")
                header = tool_prompts.TOOL_RESULT_HEADER.format(name=name, call_id=message.tool_call_id)
                parts.append(tool_prompts.chatml_turn("user", f"{header}\n{_text(message)}"))
            else:
                parts.append(tool_prompts.chatml_turn(message.type, _text(message)))
        return "".join(parts)

    # ----------------------------------------------------------------- generation

    def decode_raw(
        self,
        messages: Sequence[BaseMessage],
        *,
        tools: Sequence[Any],
        tool_choice: str | None = "any",
        constrained: bool = True,
        max_new_tokens: int | None = None,
    ) -> RawDecode:
        """One greedy decode of a tool-calling turn, with or without the grammar, without validation.

        For measuring the constraint (benchmarks/constrained_decoding.py): the raw text, the tool-call
        schema it should satisfy, and the time spent in the model vs in the grammar.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        plan = self._plan(messages, tools=formatted, tool_choice=tool_choice, response_format=None)
        if plan.grammar is None:
            raise ValueError("decode_raw needs bound tools (tool_choice other than 'none')")
        guide = plan.grammar.guide() if constrained else None
        result = self._generator.generate(
            self._encode(plan.prompt),
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            control=GenerationControl(),
            guide=guide,
        )
        return RawDecode(
            text=self._runtime.tokenizer.decode(result.token_ids, skip_special_tokens=True),
            schema=plan.grammar.schema,
            tokens=len(result.token_ids),
            decode_seconds=result.decode_seconds,
            grammar_seconds=guide.seconds if guide is not None else 0.0,
            finish_reason=result.finish_reason,
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        control = GenerationControl.from_kwargs(kwargs)
        plan = self._plan(
            messages,
            tools=kwargs.get("tools"),
            tool_choice=kwargs.get("tool_choice"),
            response_format=kwargs.get("response_format"),
        )
        message = self._run(plan, control, stop=stop)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        control = GenerationControl.from_kwargs(kwargs)
        plan = self._plan(
            messages,
            tools=kwargs.get("tools"),
            tool_choice=kwargs.get("tool_choice"),
            response_format=kwargs.get("response_format"),
        )
        if plan.grammar is not None:
            # A tool call is only usable whole: decode it, then hand it over as one chunk.
            final = self._run(plan, control, stop=stop)
            yield ChatGenerationChunk(message=_to_chunk(final))
            return
        closed = threading.Event()
        deltas: queue.Queue[tuple[str, Any]] = queue.Queue()

        def work() -> None:
            try:
                message = self._run(plan, control.with_event(closed), stop=stop, on_text=deltas.put_nowait)
                deltas.put(("done", message))
            except BaseException as error:  # handed to the consuming thread
                deltas.put(("error", error))

        worker = threading.Thread(target=work, name="deepscout-embedded-stream", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload = deltas.get()
                if kind == "text":
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=payload))
                    if run_manager is not None:
                        run_manager.on_llm_new_token(payload, chunk=chunk)
                    yield chunk
                elif kind == "done":
                    final_chunk = AIMessageChunk(
                        content="",
                        usage_metadata=payload.usage_metadata,
                        response_metadata=payload.response_metadata,
                        chunk_position="last",
                    )
                    yield ChatGenerationChunk(message=final_chunk)
                    return
                else:
                    raise payload
        finally:
            closed.set()
            worker.join()

    def _run(
        self,
        plan: _DecodePlan,
        control: GenerationControl,
        *,
        stop: list[str] | None,
        on_text: Callable[[tuple[str, Any]], None] | None = None,
    ) -> AIMessage:
        prompt_ids = self._encode(plan.prompt)
        room = self.context_window - len(prompt_ids)
        if room <= 0:
            raise ContextOverflowError(
                f"the prompt takes {len(prompt_ids)} tokens; {self.model_name}'s context window is "
                f"{self.context_window}"
            )
        max_new = min(control.output_cap(self.max_new_tokens), room)
        attempts = 1 if plan.grammar is None else 1 + self.structured_retries
        first_prefill: dict[str, int] | None = None
        output_tokens = 0
        problems: list[str] = []
        text = ""
        for attempt in range(attempts):
            streamer = _TextStreamer(self._runtime.tokenizer, stop or [], on_text)
            result = self._generator.generate(
                prompt_ids,
                max_new_tokens=max_new,
                control=control,
                guide=plan.grammar.guide() if plan.grammar is not None else None,
                temperature=self.temperature if attempt == 0 else max(self.temperature, RETRY_TEMPERATURE),
                seed=attempt,
                on_token=streamer.push if plan.grammar is None else None,
            )
            first_prefill = first_prefill or result.prefill.as_dict()
            output_tokens += len(result.token_ids)
            text = self._runtime.tokenizer.decode(result.token_ids, skip_special_tokens=True)
            if plan.grammar is None:
                text = streamer.finish(text)
                return self._message(plan, text, None, result, first_prefill, output_tokens, attempt + 1)
            try:
                value = json.loads(text)
            except json.JSONDecodeError as error:
                problems.append(f"attempt {attempt + 1}: not JSON ({error}; finish={result.finish_reason})")
                continue
            errors = schema_errors(plan.grammar.schema, value)
            if errors:
                problems.append(f"attempt {attempt + 1}: {'; '.join(errors[:5])}")
                continue
            return self._message(plan, text, value, result, first_prefill, output_tokens, attempt + 1)
        raise StructuredOutputError(
            f"{self.model_name} produced no schema-valid {plan.kind} output: {' | '.join(problems)}",
            attempts=attempts,
            last_output=text,
        )

    def _message(
        self,
        plan: _DecodePlan,
        text: str,
        value: Any,
        result: GenerationResult,
        prefill: dict[str, int],
        output_tokens: int,
        attempts: int,
    ) -> AIMessage:
        metadata: dict[str, Any] = {
            "model_name": self.model_name,
            "finish_reason": "tool_calls"
            if plan.kind == "tools" and isinstance(value, list)
            else result.finish_reason,
            "prefill": prefill,
            "attempts": attempts,
            "timings": {
                "prefill_s": round(result.prefill_seconds, 4),
                "first_token_s": round(result.first_token_seconds, 4),
                "decode_s": round(result.decode_seconds, 4),
                "decode_tokens": len(result.token_ids),
            },
            "raw_output": text,
        }
        usage = {
            "input_tokens": prefill["prompt_tokens"],
            "output_tokens": output_tokens,
            "total_tokens": prefill["prompt_tokens"] + output_tokens,
        }
        if plan.kind == "tools" and isinstance(value, list):
            calls = [
                {
                    "name": call["name"],
                    "args": call["arguments"],
                    "id": f"call_{uuid.uuid4().hex[:12]}",
                    "type": "tool_call",
                }
                for call in value
            ]
            return AIMessage(content="", tool_calls=calls, usage_metadata=usage, response_metadata=metadata)
        content = value[ANSWER_KEY] if plan.kind == "tools" else text
        return AIMessage(content=content, usage_metadata=usage, response_metadata=metadata)


class _TextStreamer:
    """Turns generated token ids into text deltas, holding back partial UTF-8 and stop strings."""

    def __init__(
        self, tokenizer: Any, stop: Sequence[str], sink: Callable[[tuple[str, Any]], None] | None
    ) -> None:
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self._sink = sink
        self._tokens: list[int] = []
        self._sent = 0
        self.stopped = False

    def push(self, token_id: int) -> bool:
        """Record a token; True asks the generator to stop (a stop string appeared)."""
        self._tokens.append(token_id)
        text = self._tokenizer.decode(self._tokens, skip_special_tokens=True)
        cut = _first_stop(text, self._stop)
        if cut is not None:
            self._emit(text[:cut])
            self.stopped = True
            return True
        safe = len(text) - max((len(s) - 1 for s in self._stop), default=0)
        if text.endswith("\ufffd"):
            safe = min(safe, len(text) - 1)
        self._emit(text[:safe])
        return False

    def finish(self, text: str) -> str:
        cut = _first_stop(text, self._stop)
        final = text if cut is None else text[:cut]
        self._emit(final)
        return final

    def _emit(self, text: str) -> None:
        if len(text) > self._sent:
            if self._sink is not None:
                self._sink(("text", text[self._sent :]))
            self._sent = len(text)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    positions = [text.find(s) for s in stops if s in text]
    return min(positions) if positions else None


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(
        part if isinstance(part, str) else str(part.get("text", ""))
        for part in content
        if isinstance(part, str) or part.get("type") == "text"
    )


def _assistant_text(message: AIMessage) -> str:
    raw = message.response_metadata.get("raw_output")
    if isinstance(raw, str):
        return raw
    if message.tool_calls:
        return dump_compact(
            [{"name": call["name"], "arguments": call["args"]} for call in message.tool_calls]
        )
    return _text(message)


def _tool_spec(tool: Mapping[str, Any], max_argument_chars: int) -> ToolSpec:
    function = tool["function"]
    declared = function.get("parameters") or {"type": "object", "properties": {}}
    parameters = cap_strings(strict_schema(declared), max_argument_chars)
    parameters.pop("examples", None)
    return ToolSpec(name=function["name"], description=function.get("description", ""), parameters=parameters)


def _schema_examples(tool: Mapping[str, Any]) -> list[dict[str, Any]]:
    examples = (tool["function"].get("parameters") or {}).get("examples", [])
    return [example for example in examples if isinstance(example, dict)]


def _forced_tool(tool_choice: str | dict[str, Any] | bool | None) -> str | None:
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
        return str(name) if name else None
    if isinstance(tool_choice, str) and tool_choice not in ("auto", "any", "required", "none"):
        return tool_choice
    return None


def _to_chunk(message: AIMessage) -> AIMessageChunk:
    chunks = [
        tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call["id"], index=index)
        for index, call in enumerate(message.tool_calls)
    ]
    return AIMessageChunk(
        content=message.content,
        tool_call_chunks=chunks,
        usage_metadata=message.usage_metadata,
        response_metadata=message.response_metadata,
        chunk_position="last",
    )


def load_smollm2(argument: str | None, settings: Settings) -> EmbeddedHFChatModel:
    """The embedded default: SmolLM2-135M-Instruct converted by ``deepscout setup``."""
    folder = smollm2.require_fetched(settings)
    return EmbeddedHFChatModel(model_path=str(folder), model_name="smollm2")


def load_hf_folder(argument: str | None, settings: Settings) -> EmbeddedHFChatModel:
    """Any local HF causal-LM folder (config.json + weights + tokenizer) with a ChatML-style chat format."""
    folder = Path(argument or "").expanduser()
    if not (folder / "config.json").is_file():
        raise ModelNotFetchedError(
            f"hf:{argument}: no config.json in {folder}; point hf: at a local Hugging Face model folder "
            "(nothing is downloaded at run time)"
        )
    return EmbeddedHFChatModel(model_path=str(folder), model_name=f"hf:{folder.name}")
