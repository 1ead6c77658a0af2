"""A loaded DeepSeek-V4 model on the engine, with its tokenizer and grammars: what the V4 chat model runs on.

:meth:`V4Runtime.stream_tokens` submits one request to the engine (:mod:`deepscout.model_runtime.v4.engine`)
and yields its tokens step by step. One thread owns the engine and steps it for every request in flight,
so concurrent calls share its batched forwards. A request continues the idle session whose tokens are the
longest prefix of its prompt, so a conversation's next turn — an append-only extension — prefills only
the new tokens; other prompts reuse what the engine's prefix cache holds. Deadlines and cancellation are
checked between engine steps.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
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
from deepscout.model_runtime.v4.engine.engine import ServingEngine
from deepscout.model_runtime.v4.engine_loop import EngineLoop
from deepscout.model_runtime.v4.kernels.impl import default_impl
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import ModelArgs, tiny
from deepscout.model_runtime.v4.parallel.launcher import CheckpointSource, LaunchSpec, launch
from deepscout.model_runtime.v4.session_router import SessionRouter
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
        masked = logits.to("cpu", copy=True)  # the guide masks a host tensor in place
        self._guide.apply(masked)
        return masked.to(logits.device)


class V4Runtime:
    """A V4 model on the engine with the tokenizer and grammars.

    One thread drives the engine (:class:`~deepscout.model_runtime.v4.engine_loop.EngineLoop`), so calls
    from many threads at once decode together in its batched steps; each call continues the idle engine
    session holding the longest prefix of its prompt (:class:`SessionRouter`)."""

    def __init__(
        self,
        model: DeepseekV4Model,
        tokenizer: V4Tokenizer,
        engine: ServingEngine,
        *,
        context_window: int,
        shutdown: Callable[[], None] | None = None,
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
        self.loop = EngineLoop(engine)
        self.sessions = SessionRouter(engine.config.max_idle_sessions)
        self._shutdown = shutdown

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
        stop: threading.Event | None = None,
        checkpoints: Sequence[int] = (),
    ) -> Generator[int, None, GenerationOutcome]:
        """Run one request on the engine's loop, yielding each new token id (the end-of-sentence one
        included) as the batched steps produce it.

        ``checkpoints`` are prompt positions where a later prompt is likely to diverge from this one; the
        engine keeps its state near each (``GenerationRequest.checkpoints``), so such a prompt reuses it.

        ``stop`` set by the consumer (e.g. on a stop string) ends the generation with
        ``finish_reason="stop"``; nothing after the token that set it is yielded. Raises
        GenerationDeadlineExceeded / GenerationCancelled when ``control`` says so (checked between steps).
        Closing the generator early cancels the request; it returns once the engine has let it go.
        """
        control.check("queueing")
        sampling = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            logits_processor=None if guide is None else GrammarProcessor(guide),
        )
        session_id = self.sessions.acquire(prompt_ids)
        request = GenerationRequest(
            prompt_ids=list(prompt_ids),
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            stop_token_ids=[self.tokenizer.special.eos],
            deadline=control.deadline,
            session_id=session_id,
            checkpoints=tuple(checkpoints),
        )
        watch = [*control.cancel_events, *([] if stop is None else [stop])]
        started = time.perf_counter()
        first_token_at: float | None = None
        tokens: list[int] = []
        latest: RequestOutput | None = None
        stopped_early = False
        try:
            stream = self.loop.submit(request, watch=watch)
        except BaseException:
            self.sessions.release(session_id, ())
            raise
        outputs = iter(stream)
        try:
            for output in outputs:
                latest = output
                for token in output.new_token_ids if not stopped_early else ():
                    first_token_at = first_token_at or time.perf_counter()
                    tokens.append(token)
                    yield token
                    if stop is not None and stop.is_set():
                        stopped_early = True
                        stream.stop()
                        break
        finally:
            if latest is None or not latest.finished:
                stream.stop()
                _drain(outputs)
            held = [*prompt_ids, *tokens[:-1]] if tokens and latest is not None else []
            self.sessions.release(session_id, held)
        assert latest is not None  # a stream ends with its request's last output, or raises
        stage = "prefill" if first_token_at is None else "decode"
        if latest.finish_reason is FinishReason.DEADLINE:
            raise GenerationDeadlineExceeded(f"deadline exceeded during {stage}")
        if latest.finish_reason is FinishReason.CANCELLED and not stopped_early:
            control.check(stage)
            raise GenerationCancelled(f"generation cancelled during {stage}")
        ended = time.perf_counter()
        first = first_token_at or ended
        return GenerationOutcome(
            token_ids=tokens,
            finish_reason="stop" if stopped_early or latest.finish_reason is FinishReason.STOP else "length",
            usage=Usage(
                prompt_tokens=latest.prompt_tokens,
                reused_tokens=latest.reused_tokens,
                computed_tokens=latest.prefilled_tokens,
                output_tokens=len(tokens),
            ),
            prefill_seconds=first - started,
            first_token_seconds=first - started,
            decode_seconds=ended - first,
        )

    def close(self) -> None:
        """Stop the engine's loop (requests still running fail), then what runs the engine (the other
        ranks of expert parallelism); the runtime takes no more requests."""
        self.loop.close()
        if self._shutdown is not None:
            self._shutdown()


def _drain(outputs: Iterator[RequestOutput]) -> None:
    """Read a stopped request's stream to its end (its last output, or its error: it failed anyway)."""
    try:
        for _ in outputs:
            pass
    except Exception:  # the request was abandoned; its error has no reader
        return


def random_tiny_args(vocab_size: int) -> ModelArgs:
    """The ``random-tiny`` config: the tiny test shapes with the full V4 vocabulary."""
    return tiny(vocab_size=vocab_size, max_position_embeddings=RANDOM_TINY_CONTEXT)


def load_runtime(argument: str, options: V4Settings) -> V4Runtime:
    """Load ``argument`` (``random-tiny`` or a checkpoint directory) and start its engine; a checkpoint's
    FP8/MXFP4 weights dequantised (``options.weights == "dense"``) or kept as shipped (``"shipped"``).

    The model and the KV pool go to ``options.device`` (on CUDA the model runs its fused kernels); several
    devices run a checkpoint expert-parallel (``parallel/launcher.py``: one process per device, each
    loading its share of the experts, by ``options.moe_sharding``; this process serves as rank 0). The pool is
    sized here, once, from ``options``: ``kv_blocks`` blocks of 128 tokens (default: two full contexts),
    ``max_sequences`` sequences decode in one step, and a prompt prefills ``prefill_chunk`` tokens a step;
    ``options.speculative == "mtp"`` makes the engine draft with the model's MTP layer.
    The runtime's context window is what one sequence can hold: the model's window (or
    ``options.context_window``), capped by the pool. Callers keep the runtime and share it between the
    chat models and runs that use it.
    """
    if argument == RANDOM_TINY:
        if len(options.devices) > 1:
            raise ValueError(
                "random-tiny runs on one device; expert parallelism loads a checkpoint directory "
                "(write one with `deepscout v4 make-synthetic`)"
            )
        tokenizer = load_v4_tokenizer()
        args = random_tiny_args(tokenizer.vocab_size)
        model = DeepseekV4Model.random(args, seed=0, dtype=torch.float32)
        config = _engine_config(args, options, kv_dtype="float32")
        return _single_process(model, tokenizer, config, options)
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
    source = CheckpointSource(directory)
    config = _engine_config(source.args(), options, kv_dtype=options.kv_dtype)
    if len(options.devices) == 1:
        model, _report = load_model(directory, dtype=dtype, weights=options.weights)
        return _single_process(model, tokenizer, config, options)
    rendezvous = Path(tempfile.mkdtemp(prefix="deepscout-ep-")) / "rendezvous"
    spec = LaunchSpec(
        source=source, devices=options.devices, engine=config, rendezvous=rendezvous, dtype=dtype,
        weights=options.weights, moe_sharding=options.moe_sharding,
    )  # fmt: skip
    launched = launch(spec)
    engine = launched.engine
    window = _window(engine.engine.model.args, options, config)
    return V4Runtime(engine.engine.model, tokenizer, engine, context_window=window, shutdown=launched.close)


def _engine_config(
    args: ModelArgs, options: V4Settings, *, kv_dtype: Literal["float32", "bfloat16", "paper"]
) -> EngineConfig:
    """The engine's settings from the runtime's (the pool sized for `args`' window), on the first device."""
    window = options.context_window or args.max_position_embeddings
    blocks = options.kv_blocks or 2 * -(-window // BLOCK_TOKENS)
    idle_sessions = EngineConfig.model_fields["max_idle_sessions"].default
    step_tokens = EngineConfig.model_fields["max_tokens_per_step"].default
    config = {
        "kv_dtype": kv_dtype,
        "num_blocks": blocks,
        "max_running": options.max_sequences,
        "num_state_slots": options.max_sequences + idle_sessions,
        "device": options.devices[0],
        "prefill_chunk": options.prefill_chunk,
        "max_tokens_per_step": max(step_tokens, options.prefill_chunk),
        "speculative": options.speculative,
    }
    return EngineConfig.model_validate(config)


def _window(args: ModelArgs, options: V4Settings, config: EngineConfig) -> int:
    """What one sequence can hold: the model's window (or the override), capped by the pool."""
    return min(options.context_window or args.max_position_embeddings, config.num_blocks * BLOCK_TOKENS)


def _single_process(
    model: DeepseekV4Model, tokenizer: V4Tokenizer, config: EngineConfig, options: V4Settings
) -> V4Runtime:
    device = torch.device(options.device)
    model = model.to(device)
    model.kernels = default_impl(device)
    engine = Engine(model, config)
    return V4Runtime(model, tokenizer, engine, context_window=_window(model.args, options, config))
