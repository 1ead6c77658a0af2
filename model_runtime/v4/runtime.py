"""A loaded DeepSeek-V4 model on the engine, with its tokenizer and grammars: what the V4 chat model runs on.

:meth:`V4Runtime.stream_tokens` submits one request to the engine (:mod:`deepscout.model_runtime.v4.engine`)
and yields its tokens step by step. Each chat model passes its own session id, so its next turn — an
append-only extension of the conversation — prefills only the new tokens; other prompts reuse what the
engine's prefix cache holds. Deadlines and cancellation are checked between engine steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Literal

import llguidance
import torch

from deepscout.model_runtime.chat import (
    GenerationCancelled,
    GenerationControl,
    GenerationDeadlineExceeded,
    ModelNotFetchedError,
    Usage,
)
from deepscout.model_runtime.chat.constrained import GrammarCache, GrammarGuide, SchemaError
from deepscout.model_runtime.chat.embedded_base import GenerationOutcome
from deepscout.model_runtime.v4.chat_format.tokenizer import V4Tokenizer, load_v4_tokenizer
from deepscout.model_runtime.v4.engine import (
    Engine,
    EngineConfig,
    FinishReason,
    GenerationRequest,
    RequestOutput,
    SamplingParams,
)
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import ModelArgs, tiny
from deepscout.model_runtime.v4.weights.loader import load_model
from deepscout.settings import V4Settings

RANDOM_TINY = "random-tiny"
RANDOM_TINY_CONTEXT = 32_768
"""Context window of ``random-tiny`` (its positions are real; only its weights are random)."""
BLOCK_TOKENS = 128
"""Source tokens covered by one paged KV block (lcm of the CSA and HCA compression ratios)."""


class GrammarProcessor:
    """The engine's per-row logits hook driving a grammar: accept what was sampled, mask what may follow."""

    def __init__(self, guide: GrammarGuide) -> None:
        self._guide = guide
        self._accepted = 0

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        for token in generated[self._accepted :]:
            self._guide.accept(int(token))
        self._accepted = len(generated)
        masked = logits.clone()
        self._guide.apply(masked)
        return masked


class V4Runtime:
    """A V4 model on the engine with the tokenizer and grammars; one generation runs at a time."""

    def __init__(
        self, model: DeepseekV4Model, tokenizer: V4Tokenizer, engine: Engine, *, context_window: int
    ):
        if tokenizer.vocab_size > model.args.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model only {model.args.vocab_size}; "
                "use the tokenizer.json that belongs to this checkpoint"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.engine = engine
        self.context_window = context_window
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._grammars: GrammarCache | None = None
        self._lock = threading.Lock()

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        """The tokenizer as llguidance sees it (built on first use: about two seconds)."""
        with self._lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = llguidance.LLTokenizer(
                    self.tokenizer.to_json(),
                    n_vocab=self.model.args.vocab_size,
                    eos_token=self.tokenizer.special.eos,
                )
            return self._ll_tokenizer

    @property
    def grammars(self) -> GrammarCache:
        """Compiled JSON-schema grammars for structured output."""
        tokenizer = self.ll_tokenizer
        with self._lock:
            if self._grammars is None:
                self._grammars = GrammarCache(tokenizer, self.model.args.vocab_size)
            return self._grammars

    def lark_guide(self, grammar: str) -> GrammarGuide:
        """A fresh guide for one generation under a Lark grammar (llguidance dialect)."""
        matcher = llguidance.LLMatcher(
            self.ll_tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0
        )
        if matcher.is_error():
            raise SchemaError(f"llguidance rejected the grammar: {matcher.get_error()}")
        return GrammarGuide(matcher, self.model.args.vocab_size)

    def stream_tokens(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        control: GenerationControl,
        guide: GrammarGuide | None,
        session_id: str | None = None,
        stop: threading.Event | None = None,
    ) -> Generator[int, None, GenerationOutcome]:
        """Run one request on the engine, yielding each new token id (the end-of-sentence one included).

        ``stop`` set by the consumer (e.g. on a stop string) ends the generation before the next step with
        ``finish_reason="stop"``. Raises GenerationDeadlineExceeded / GenerationCancelled when ``control``
        says so between steps.
        """
        sampling = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            logits_processor=None if guide is None else GrammarProcessor(guide),
        )
        request = GenerationRequest(
            prompt_ids=list(prompt_ids),
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            stop_token_ids=[self.tokenizer.special.eos],
            deadline=control.deadline,
            session_id=session_id,
        )
        with self._lock:
            started = time.perf_counter()
            request_id = self.engine.add_request(request)
            first_token_at: float | None = None
            latest: RequestOutput | None = None
            stopped_early = False
            try:
                while latest is None or not latest.finished:
                    if stop is not None and stop.is_set() and latest is not None:
                        stopped_early = True
                        break
                    control.check("prefill" if first_token_at is None else "decode")
                    for output in self.engine.step():
                        if output.request_id != request_id:
                            continue
                        if output.new_token_ids and first_token_at is None:
                            first_token_at = time.perf_counter()
                        latest = output
                        yield from output.new_token_ids
            finally:
                if latest is None or not latest.finished:
                    self.engine.cancel(request_id)
                    self.engine.step()  # report the cancellation so the engine forgets the request
        assert latest is not None
        stage = "prefill" if first_token_at is None else "decode"
        if latest.finish_reason is FinishReason.DEADLINE:
            raise GenerationDeadlineExceeded(f"deadline exceeded during {stage}")
        if latest.finish_reason is FinishReason.CANCELLED and not stopped_early:
            raise GenerationCancelled(f"generation cancelled during {stage}")
        ended = time.perf_counter()
        first = first_token_at or ended
        return GenerationOutcome(
            token_ids=list(latest.token_ids),
            finish_reason="stop" if stopped_early or latest.finish_reason is FinishReason.STOP else "length",
            usage=Usage(
                prompt_tokens=latest.prompt_tokens,
                reused_tokens=latest.reused_tokens,
                computed_tokens=latest.prefilled_tokens,
                output_tokens=len(latest.token_ids),
            ),
            prefill_seconds=first - started,
            first_token_seconds=first - started,
            decode_seconds=ended - first,
        )


def random_tiny_args(vocab_size: int) -> ModelArgs:
    """The ``random-tiny`` config: the tiny test shapes with the full V4 vocabulary."""
    return tiny(vocab_size=vocab_size, max_position_embeddings=RANDOM_TINY_CONTEXT)


def load_runtime(argument: str, options: V4Settings) -> V4Runtime:
    """Load ``argument`` (``random-tiny`` or a checkpoint directory) and start its engine.

    The KV pool is sized here, once, from ``options``: ``kv_blocks`` blocks of 128 tokens (default: two
    full contexts). The runtime's context window is what one sequence can hold: the model's window (or
    ``options.context_window``), capped by the pool. Callers keep the runtime and share it between the
    chat models and runs that use it.
    """
    if argument == RANDOM_TINY:
        tokenizer = load_v4_tokenizer()
        model = DeepseekV4Model.random(random_tiny_args(tokenizer.vocab_size), seed=0, dtype=torch.float32)
        kv_dtype: Literal["float32", "bfloat16", "paper"] = "float32"
    else:
        directory = Path(argument).expanduser()
        if not (directory / "config.json").is_file():
            raise ModelNotFetchedError(
                f"no DeepSeek-V4 checkpoint at {directory} (config.json not found): put the official "
                "checkpoint directory there, write a synthetic one with `deepscout v4 make-synthetic`, or "
                "use deepseek-v4:random-tiny"
            )
        own_tokenizer = directory / "tokenizer.json"
        tokenizer = V4Tokenizer.from_file(own_tokenizer) if own_tokenizer.is_file() else load_v4_tokenizer()
        dtype = torch.float32 if options.dtype == "float32" else torch.bfloat16
        model, _report = load_model(directory, dtype=dtype)
        kv_dtype = options.kv_dtype
    window = options.context_window or model.args.max_position_embeddings
    blocks = options.kv_blocks or 2 * -(-window // BLOCK_TOKENS)
    engine = Engine(model, EngineConfig.model_validate({"kv_dtype": kv_dtype, "num_blocks": blocks}))
    return V4Runtime(model, tokenizer, engine, context_window=min(window, blocks * BLOCK_TOKENS))
