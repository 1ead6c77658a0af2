"""Batched generation for one embedded Hugging Face model: concurrent calls decode together.

:class:`HFGenerator` owns one thread that drives the model. Calls (:meth:`HFGenerator.generate`, from any
thread) prefill one after the other, in chunks; when a call's turn comes it starts from the longest prefix
of its prompt held anywhere: an idle cached session (:mod:`.hf_session`) or a copy of the KV of a call in
flight, so a prompt shared by concurrent sessions (system prompt, tools) is computed once. It then joins
the decode batch (:mod:`.hf_ragged_cache`): every step runs one forward for all joined sequences, and each
row samples under its own grammar, temperature and seed. A finished row leaves the batch with its own
cache, which goes back to the session pool. Between chunks and steps each call's deadline and
cancellation are checked; a call that stops or fails leaves alone. Prefill forwards compute the logits of
the last position only. Without limits given, the pool keeps two idle sessions per sequence decoded
together, within ``SESSION_BYTES_PER_SEQUENCE`` each.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from transformers import DynamicCache

from deepscout.model_runtime.chat.backends.hf_ragged_cache import RaggedBatchCache
from deepscout.model_runtime.chat.backends.hf_session import (
    KVSession,
    LogitsGuide,
    SessionPool,
    common_prefix_length,
)
from deepscout.model_runtime.chat.embedded_base import GenerationOutcome
from deepscout.model_runtime.chat.exceptions import ChatModelError
from deepscout.model_runtime.chat.interface import GenerationControl
from deepscout.model_runtime.chat.usage import Usage

SESSION_BYTES_PER_SEQUENCE = 192 << 20
"""Idle KV memory kept per sequence decoded together unless a budget is given (~4K SmolLM2 tokens)."""


@dataclass
class ForwardTimes:
    """What the generator's thread has spent in model forwards so far (a benchmark diffs two snapshots)."""

    prefill_seconds: float = 0.0
    prefill_tokens: int = 0
    """Prompt tokens computed (not reused from a session)."""
    prefill_forwards: int = 0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    decode_tokens: int = 0
    """Rows summed over the decode steps."""

    def minus(self, earlier: ForwardTimes) -> ForwardTimes:
        """What was spent since ``earlier``, a snapshot of the same generator."""
        return ForwardTimes(*(getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)))


@dataclass(eq=False)
class _Call:
    """One generation in the scheduler: what was asked, and how far it got."""

    prompt: list[int]
    max_new_tokens: int
    control: GenerationControl
    guide: LogitsGuide | None
    temperature: float
    generator: torch.Generator | None
    on_token: Callable[[int], bool] | None
    started: float = field(default_factory=time.monotonic)
    result: queue.Queue[GenerationOutcome | BaseException] = field(default_factory=queue.Queue)
    session: KVSession | None = None
    reused: int = 0
    position: int = 0
    generated: list[int] = field(default_factory=list)
    next_token: int = -1
    prefill_done: float = 0.0
    first_token: float = 0.0


class HFGenerator:
    """Greedy / temperature decoding with session reuse, batching the calls in flight on one thread."""

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: Sequence[int],
        max_sequences: int = 8,
        max_sessions: int | None = None,
        session_bytes: int | None = None,
        prefill_chunk_tokens: int = 256,
    ) -> None:
        """``max_sessions`` idle sessions (default: ``2 * max_sequences``) within ``session_bytes`` of KV
        (default: ``SESSION_BYTES_PER_SEQUENCE * max_sequences``)."""
        if max_sequences < 1:
            raise ValueError("max_sequences must be at least 1")
        self.model = model
        self.eos_token_ids = frozenset(eos_token_ids)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.max_sequences = max_sequences
        self.pool = SessionPool(
            model.config,
            max_sessions if max_sessions is not None else 2 * max_sequences,
            max_bytes=session_bytes
            if session_bytes is not None
            else SESSION_BYTES_PER_SEQUENCE * max_sequences,
        )
        self._times = ForwardTimes()
        self._batch = RaggedBatchCache(model.config)
        self._rows: list[_Call] = []
        self._prefilling: list[_Call] = []
        self._queued: list[_Call] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        # transformers renamed the forward's cache argument (``past_key_values`` → ``cache`` in 5.24).
        forward_parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in forward_parameters else "past_key_values"

    def generate(
        self,
        prompt: Sequence[int],
        *,
        max_new_tokens: int,
        control: GenerationControl,
        guide: LogitsGuide | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        on_token: Callable[[int], bool] | None = None,
    ) -> GenerationOutcome:
        """Continue ``prompt`` from the best cached session; ``on_token`` returning True stops decoding.

        Blocks until the call is done; calls from other threads meanwhile decode in the same steps."""
        if not prompt:
            raise ValueError("cannot generate from an empty prompt")
        control.check("queueing")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        call = _Call(list(prompt), max_new_tokens, control, guide, temperature, generator, on_token)
        with self._wake:
            if self._closed:
                raise ChatModelError("the model's generator is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deepscout-hf-batch", daemon=True)
                self._thread.start()
            self._queued.append(call)
            self._wake.notify()
        result = call.result.get()
        if isinstance(result, BaseException):
            raise result
        return result

    @property
    def steps(self) -> int:
        """Batched decode forwards run so far."""
        return self._times.decode_steps

    def forward_times(self) -> ForwardTimes:
        """A snapshot of the time spent in prefill and decode forwards so far."""
        return replace(self._times)

    def close(self) -> None:
        """Stop the thread; calls in flight fail."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    # ----------------------------------------------------------------- the thread

    @torch.inference_mode()
    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._queued or self._prefilling or self._rows):
                    self._wake.wait()
                if self._closed:
                    break
                room = self.max_sequences - len(self._rows) - len(self._prefilling)
                admitted, self._queued = self._queued[:room], self._queued[room:]
            try:
                self._prefilling.extend(admitted)
                if self._prefilling:
                    self._prefill_chunk(self._prefilling[0])
                if self._rows:
                    self._decode_step()
            except Exception as error:  # a fault of the scheduler itself: fail what is in flight, go on
                self._fail_in_flight(error, admitted)
        self._fail_in_flight(ChatModelError("the model's generator was closed during this call"), [])

    def _fail_in_flight(self, error: BaseException, admitted: list[_Call]) -> None:
        with self._wake:
            queued, self._queued = self._queued, []
        calls = {id(call): call for call in [*admitted, *queued, *self._prefilling, *self._rows]}
        for call in calls.values():
            call.result.put(error)
        self._prefilling.clear()
        self._rows.clear()
        self._batch = RaggedBatchCache(self.model.config)

    def _acquire(self, call: _Call) -> None:
        """Give ``call`` the session to prefill from: the longest prefix idle or held by a decoding row.

        Calls prefill one at a time, so every other call in flight is decoding, its KV in the batch."""
        held = [row.session.tokens if row.session is not None else [] for row in self._rows]
        lengths = [common_prefix_length(tokens, call.prompt) for tokens in held]
        longest = max(lengths, default=0)
        reusable = min(longest, len(call.prompt) - 1)
        if reusable > self.pool.longest_prefix(call.prompt):
            cache = self._batch.row_prefix(lengths.index(longest), reusable)
            call.session, call.reused = KVSession(cache, list(call.prompt[:reusable])), reusable
        else:
            call.session, call.reused = self.pool.acquire(call.prompt)
        call.position = call.reused

    def _prefill_chunk(self, call: _Call) -> None:
        if call.session is None:
            self._acquire(call)
        session = call.session
        assert session is not None
        chunk = call.prompt[call.position : call.position + self.prefill_chunk_tokens]
        try:
            call.control.check("prefill")
        except BaseException as error:
            self._prefilling.remove(call)
            self._fail(call, error)
            return
        started = time.perf_counter()
        try:
            logits = self._forward(session.cache, torch.tensor([chunk]))[0]
        except BaseException as error:  # its cache may be half-written: dropped, not pooled
            self._prefilling.remove(call)
            call.session = None
            self._fail(call, error)
            return
        self._times.prefill_seconds += time.perf_counter() - started
        self._times.prefill_tokens += len(chunk)
        self._times.prefill_forwards += 1
        session.tokens.extend(chunk)
        call.position += len(chunk)
        if call.position < len(call.prompt):
            return
        self._prefilling.remove(call)
        call.prefill_done = time.monotonic()
        try:
            finish = self._take(call, logits)
        except BaseException as error:
            self._fail(call, error)
            return
        if finish is not None:
            self._finish(call, finish)
            return
        self._rows.append(call)
        self._batch.add(session.cache)
        session.cache = DynamicCache(config=self.model.config)  # the batch holds its KV meanwhile

    def _decode_step(self) -> None:
        for index in reversed(range(len(self._rows))):
            call = self._rows[index]
            try:
                call.control.check("decode")
            except BaseException as error:
                self._leave(index)
                self._fail(call, error)
        if not self._rows:
            return
        mask, positions = self._batch.step_inputs()
        ids = torch.tensor([[call.next_token] for call in self._rows])
        started = time.perf_counter()
        try:
            logits = self._forward(self._batch.cache, ids, attention_mask=mask, position_ids=positions)
        except BaseException as error:  # the step itself failed: every row fails, their KV is dropped
            for call in self._rows:
                call.session = None
                self._fail(call, error)
            self._rows.clear()
            self._batch = RaggedBatchCache(self.model.config)
            return
        self._times.decode_seconds += time.perf_counter() - started
        self._times.decode_steps += 1
        self._times.decode_tokens += len(self._rows)
        outcomes: list[str | BaseException | None] = []
        for row, call in enumerate(self._rows):
            assert call.session is not None
            call.session.tokens.append(call.next_token)
            try:
                outcomes.append(self._take(call, logits[row]))
            except BaseException as error:
                outcomes.append(error)
        for index in reversed(range(len(self._rows))):
            outcome = outcomes[index]
            if outcome is None:
                continue
            call = self._leave(index)
            if isinstance(outcome, BaseException):
                self._fail(call, outcome)
            else:
                self._finish(call, outcome)

    def _forward(self, cache: DynamicCache, ids: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``[rows, vocab]`` of the last position of each row of ``ids``."""
        output = self.model(
            input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_argument: cache}, **inputs
        )
        logits: torch.Tensor = output.logits[:, -1].float()
        return logits

    def _take(self, call: _Call, logits: torch.Tensor) -> str | None:
        """Sample ``call``'s next token; why it is finished (``stop`` / ``length``) or None to go on."""
        call.control.check("decode")
        if call.guide is not None:
            call.guide.apply(logits)
        token = _sample(logits, call.temperature, call.generator)
        if not call.generated:
            call.first_token = time.monotonic()
        if call.guide is not None:
            call.guide.accept(token)
        if token in self.eos_token_ids:
            return "stop"
        call.generated.append(token)
        if call.on_token is not None and call.on_token(token):
            return "stop"
        if call.guide is not None and call.guide.finished:
            return "stop"
        if len(call.generated) >= call.max_new_tokens:
            return "length"
        call.next_token = token
        return None

    def _leave(self, index: int) -> _Call:
        call = self._rows.pop(index)
        own = self._batch.remove(index)
        if call.session is not None:
            call.session.cache = own
        return call

    def _finish(self, call: _Call, finish_reason: str) -> None:
        assert call.session is not None
        self.pool.release(call.session)
        finished = time.monotonic()
        first_token = call.first_token or finished
        call.result.put(
            GenerationOutcome(
                token_ids=call.generated,
                finish_reason=finish_reason,
                usage=Usage(
                    len(call.prompt),
                    call.reused,
                    len(call.prompt) - call.reused,
                    output_tokens=len(call.generated),
                ),
                prefill_seconds=call.prefill_done - call.started,
                decode_seconds=finished - call.prefill_done,
                first_token_seconds=first_token - call.started,
            )
        )

    def _fail(self, call: _Call, error: BaseException) -> None:
        """End ``call`` with ``error``; its session (what its cache holds is consistent) goes back."""
        if call.session is not None:
            self.pool.release(call.session)
        call.result.put(error)


def _sample(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())
