"""Embedded Hugging Face causal LMs as chat models: ``smollm2`` (the default) and ``hf:PATH``.

Runs on the CPU in float32; concurrent calls decode together in batched steps (:mod:`.hf_batch`); keeps
KV-cache sessions so an append-only conversation prefills only its new tokens (:mod:`.hf_session`);
produces tool calls and structured output under a JSON-schema grammar
(:mod:`deepscout.model_runtime.chat.constrained`), validated, with a bounded retry
(:mod:`deepscout.model_runtime.chat.embedded_base`). The prompt is ChatML (:mod:`.hf_prompt`). Nothing is
downloaded at run time: models load from local folders only, and each load builds the model anew (who
needs one model twice keeps the chat model).
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr

from deepscout.model_runtime.chat.backends import smollm2
from deepscout.model_runtime.chat.backends.hf_batch import HFGenerator
from deepscout.model_runtime.chat.backends.hf_prompt import chatml_prompt
from deepscout.model_runtime.chat.backends.text_stream import TextSink, TextStreamer
from deepscout.model_runtime.chat.constrained import ANSWER_KEY, GrammarCache, JsonGrammar, schema_errors
from deepscout.model_runtime.chat.embedded_base import Attempt, CallPlan, EmbeddedChatModel, last_chunk
from deepscout.model_runtime.chat.exceptions import ModelNotFetchedError
from deepscout.model_runtime.chat.interface import GenerationControl
from deepscout.model_runtime.chat.usage import Usage

if TYPE_CHECKING:
    from deepscout.settings import Settings


@dataclass
class _LoadedModel:
    model: Any
    tokenizer: Any
    grammars: GrammarCache
    context_window: int
    eos_token_ids: list[int]


def _load_folder(path: Path) -> _LoadedModel:
    """Load a local HF causal-LM folder in float32, never touching the network."""
    import llguidance.hf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(path.resolve())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    model.eval()
    eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
    eos_ids = sorted(token for token in eos if token is not None)
    ll_tokenizer = llguidance.hf.from_tokenizer(
        tokenizer,  # type: ignore[arg-type]
        n_vocab=model.config.vocab_size,
        eos_token=eos_ids,
    )
    return _LoadedModel(
        model=model,
        tokenizer=tokenizer,
        grammars=GrammarCache(ll_tokenizer, model.config.vocab_size),
        context_window=int(getattr(model.config, "max_position_embeddings", smollm2.CONTEXT_WINDOW)),
        eos_token_ids=eos_ids,
    )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass(frozen=True)
class _HFPlan(CallPlan):
    """A call on an HF model: the grammar its output is decoded under (None for free text)."""

    grammar: JsonGrammar | None = None
    on_text: TextSink | None = None
    """Receives free text as it is decoded (streaming)."""


@dataclass(frozen=True)
class RawDecode:
    text: str
    schema: dict[str, Any]
    tokens: int
    decode_seconds: float
    grammar_seconds: float
    finish_reason: str


class EmbeddedHFChatModel(EmbeddedChatModel[_HFPlan]):
    """A local HF causal LM (ChatML chat format) with sessions, deadlines and constrained tool calls."""

    model_path: str
    model_name: str = "hf"
    max_parallel_tool_calls: int = 3
    max_argument_chars: int = 200
    """Cap on string tool arguments without their own maxLength (stops a small model rambling)."""
    max_sequences: int = 8
    """Calls decoded together in one batched step; more wait for a free row."""
    max_sessions: int | None = None
    """Idle KV sessions kept for later calls (within ``session_memory_mb``); None: 2 × max_sequences."""
    session_memory_mb: int | None = None
    """None: 192 MiB per sequence of ``max_sequences`` (:data:`.hf_batch.SESSION_BYTES_PER_SEQUENCE`)."""
    prefill_chunk_tokens: int = 256

    backend_type = "deepscout-embedded-hf"
    identifying_fields = ("model_name", "model_path")

    _runtime: _LoadedModel = PrivateAttr()
    _generator: HFGenerator = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._runtime = _load_folder(Path(self.model_path))
        self.context_window = self._runtime.context_window
        self._generator = HFGenerator(
            self._runtime.model,
            eos_token_ids=self._runtime.eos_token_ids,
            max_sessions=self.max_sessions,
            session_bytes=None if self.session_memory_mb is None else self.session_memory_mb << 20,
            prefill_chunk_tokens=self.prefill_chunk_tokens,
            max_sequences=self.max_sequences,
        )

    @property
    def generator(self) -> HFGenerator:
        """The batched generator this model's calls run on (shared by its copies)."""
        return self._generator

    def close(self) -> None:
        """Stop the generator's thread (its calls in flight fail)."""
        self._generator.close()

    @property
    def serves_threads_concurrently(self) -> bool:
        """True: concurrent calls decode together in the generator's batched steps."""
        return True

    # ----------------------------------------------------------------- prompts

    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        formatted = [convert_to_openai_tool(tool) for tool in tools] if tools else None
        return len(self._plan(messages, {"tools": formatted}, None).prompt_ids)

    def _plan(
        self, messages: Sequence[BaseMessage], options: dict[str, Any], stop: list[str] | None
    ) -> _HFPlan:
        prompt = chatml_prompt(
            messages,
            tools=options.get("tools"),
            tool_choice=options.get("tool_choice"),
            response_format=options.get("response_format"),
            max_argument_chars=self.max_argument_chars,
            max_parallel_calls=self.max_parallel_tool_calls,
        )
        prompt_ids: list[int] = self._runtime.tokenizer(prompt.text, add_special_tokens=False)["input_ids"]
        grammar = None if prompt.schema is None else self._runtime.grammars.get(prompt.schema)
        return _HFPlan(prompt_ids, prompt.kind, prompt.tool_names, tuple(stop or ()), grammar=grammar)

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
        plan = self._plan(messages, {"tools": formatted, "tool_choice": tool_choice}, None)
        if plan.grammar is None:
            raise ValueError("decode_raw needs bound tools (tool_choice other than 'none')")
        guide = plan.grammar.guide() if constrained else None
        outcome = self._generator.generate(
            plan.prompt_ids,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            control=GenerationControl(),
            guide=guide,
        )
        return RawDecode(
            text=self._runtime.tokenizer.decode(outcome.token_ids, skip_special_tokens=True),
            schema=plan.grammar.schema,
            tokens=len(outcome.token_ids),
            decode_seconds=outcome.decode_seconds,
            grammar_seconds=guide.seconds if guide is not None else 0.0,
            finish_reason=outcome.finish_reason,
        )

    def _attempt(
        self, plan: _HFPlan, control: GenerationControl, *, max_new_tokens: int, temperature: float, seed: int
    ) -> Attempt:
        guide = plan.grammar.guide() if plan.grammar is not None else None
        streamer = TextStreamer(self._runtime.tokenizer, plan.stop, plan.on_text)
        outcome = self._generator.generate(
            plan.prompt_ids,
            max_new_tokens=max_new_tokens,
            control=control,
            guide=guide,
            temperature=temperature,
            seed=seed,
            on_token=streamer.push if guide is None else None,
        )
        text = self._runtime.tokenizer.decode(outcome.token_ids, skip_special_tokens=True)
        if plan.grammar is None:
            return Attempt(outcome, streamer.finish(text))
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            return Attempt(outcome, text, problem=f"not JSON ({error}; finish={outcome.finish_reason})")
        errors = schema_errors(plan.grammar.schema, value)
        return Attempt(outcome, text, value, "; ".join(errors[:5]) if errors else None)

    def _reply(self, plan: _HFPlan, attempt: Attempt, usage: Usage, attempts: int) -> AIMessage:
        value = attempt.value
        if plan.kind == "tools" and isinstance(value, list):
            calls = [
                tool_call(name=call["name"], args=call["arguments"], id=f"call_{uuid.uuid4().hex[:12]}")
                for call in value
            ]
            return self._message(attempt, usage, attempts, content="", tool_calls=calls)
        content = value[ANSWER_KEY] if plan.kind == "tools" else attempt.raw_text
        return self._message(attempt, usage, attempts, content=content)

    def _stream_decoding(
        self, plan: _HFPlan, control: GenerationControl, run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[ChatGenerationChunk]:
        """Decode in a worker thread, handing its text deltas over as they become certain."""
        closed = threading.Event()
        deltas: queue.Queue[tuple[str, Any]] = queue.Queue()
        streaming = replace(plan, on_text=deltas.put_nowait)

        def work() -> None:
            try:
                deltas.put(("done", self._complete(streaming, control.with_event(closed))))
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
                    yield last_chunk(payload, streamed=True)
                    return
                else:
                    raise payload
        finally:
            closed.set()
            worker.join()


def load_smollm2(argument: str | None, settings: Settings) -> EmbeddedHFChatModel:
    """The embedded default: SmolLM2-135M-Instruct converted by ``deepscout setup``."""
    folder = smollm2.require_fetched(settings)
    return EmbeddedHFChatModel(
        model_path=str(folder), model_name="smollm2", **EmbeddedHFChatModel.fields_from(settings.hf)
    )


def load_hf_folder(argument: str | None, settings: Settings) -> EmbeddedHFChatModel:
    """Any local HF causal-LM folder (config.json + weights + tokenizer) with a ChatML-style chat format."""
    folder = Path(argument or "").expanduser()
    if not (folder / "config.json").is_file():
        raise ModelNotFetchedError(
            f"hf:{argument}: no config.json in {folder}; point hf: at a local Hugging Face model folder "
            "(nothing is downloaded at run time)"
        )
    return EmbeddedHFChatModel(
        model_path=str(folder), model_name=f"hf:{folder.name}", **EmbeddedHFChatModel.fields_from(settings.hf)
    )
