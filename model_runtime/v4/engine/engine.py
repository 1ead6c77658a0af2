"""The DeepSeek-V4 inference engine: requests in, tokens out, over the heterogeneous paged KV cache.

Public API (the only entry points):

    from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest, SamplingParams

    engine = Engine(model, EngineConfig(kv_dtype="float32", num_blocks=1024, prefill_chunk=512))
    rid = engine.add_request(GenerationRequest(
        prompt_ids=[...],                 # the whole prompt (a session turn: the whole conversation so far)
        max_new_tokens=256,
        sampling=SamplingParams(temperature=0.0, top_p=1.0, seed=0, logprobs=False,
                                logits_processor=None),   # per-row hook, e.g. a grammar mask
        stop_token_ids=[eos_id],
        deadline=time.monotonic() + 30,  # optional; honoured between steps
        cancel=threading.Event(),        # optional; honoured between steps (or engine.cancel(rid))
        session_id="chat-42",            # optional; append-only conversation kept between turns
        return_prompt_logits=False,      # optional; float32 logits of the prefilled positions
    ))
    while engine.has_unfinished():
        for out in engine.step():        # list[RequestOutput]: requests that produced tokens or finished
            out.request_id, out.new_token_ids, out.token_ids, out.logprobs,
            out.finished, out.finish_reason,  # FinishReason.STOP | LENGTH | CANCELLED | DEADLINE
            out.prompt_tokens, out.reused_tokens, out.prefilled_tokens, out.preemptions
    outputs = engine.generate([request, ...])   # runs steps until these finish; outputs in request order
    engine.cancel(rid)

`add_request` validates (RequestError) and raises `CapacityError` when a prompt can never fit the pool.
One step runs one forward over a packed ragged batch: every decoding sequence gets one token, the rest of
the step's token budget goes to prefill chunks (`prefill_chunk`, ending on 128-token block boundaries so
state snapshots can be taken there). When the block pool runs out, `pool_policy="queue"` admits a request
only once blocks for its prompt + max_new_tokens are free; `"preempt"` allocates as it goes and, when
needed, preempts the most recently admitted sequence (its cache freed) and recomputes it later — sampling is
seeded per position, so its output is unchanged.

Sessions: a request with `session_id` keeps its sequence (state slot + blocks) when it finishes; the next
request of the session whose prompt extends the tokens already processed prefills only the new tokens.
Otherwise the prefix cache (chained hashes of full 128-token blocks, tokens verified) plus a state snapshot
at a block boundary gives the longest reusable prefix; sequences sharing a prefix share its blocks. Idle
sessions beyond `max_idle_sessions` are evicted LRU; with `spill_dir` their blocks and the state checkpoint
at their last snapshot boundary go to disk and come back on the session's next turn.

Counters for a chat backend: prompt_tokens = len(prompt); reused_tokens = taken from a session, the prefix
cache or disk; prefilled_tokens = run through the model as prompt (= prompt_tokens - reused_tokens unless
the request was preempted and recomputed). The engine is single-threaded: call it from one thread.

Overlapped decode steps (`EngineConfig(overlap=True)`, the default): a pure decode step on the device
(`decode_runner.py`) is launched before the tokens of the step before it are read; its input tokens are
taken from that step's samples on the device, and the host reads them (one small copy) while the GPU runs
the new step, so the host's work between steps (scheduling, reading tokens, the ranks' messages under
expert parallelism) hides behind the GPU's. A step's outputs are then those of the forward before it. A
sequence whose token read back is a stop token has had one more token processed (dropped, its cache
holding the stop token); rows with a logits processor, prefill and mixed steps read their tokens first.

Speculative decoding (`EngineConfig(speculative="mtp")`, `speculation.py`): each decoding sequence's
forward also verifies the MTP layer's draft, so a step may give it two tokens; outputs equal plain
decoding's. `RequestOutput.drafted_tokens`/`accepted_tokens` and `Engine.draft_stats` count the drafts
(`acceptance_rate`). Pure decode steps then run through the cache protocol, not the device decode step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Protocol

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.engine.cache_manager import CacheManager
from deepscout.model_runtime.v4.engine.decode_runner import CarriedTokens, DecodeRunner
from deepscout.model_runtime.v4.engine.engine_config import EngineConfig
from deepscout.model_runtime.v4.engine.model_runner import ModelRunner
from deepscout.model_runtime.v4.engine.prefix_cache import HashFn, chain_hash
from deepscout.model_runtime.v4.engine.request import FinishReason, GenerationRequest, RequestOutput
from deepscout.model_runtime.v4.engine.sampling import Drawn, sample
from deepscout.model_runtime.v4.engine.scheduler import Chunk, Scheduler
from deepscout.model_runtime.v4.engine.sequence import IN_FLIGHT, Sequence, SequenceStatus
from deepscout.model_runtime.v4.engine.speculation import MtpSpeculator
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.mtp_speculation import DraftStats, accepted_count, accepted_prefix


class CapacityError(DeepscoutError, ValueError):
    """A request can never fit the KV block pool; shorten it or raise EngineConfig.num_blocks."""


class UnknownRequestError(DeepscoutError, KeyError):
    """No request with this id is known to the engine."""


class Steppable(Protocol):
    """What `run_to_completion` drives: the engine's request API (`Engine`, or one over several ranks)."""

    def add_request(self, request: GenerationRequest) -> str: ...

    def step(self) -> list[RequestOutput]: ...

    def has_unfinished(self) -> bool: ...


class ServingEngine(Steppable, Protocol):
    """What a runtime serves requests from (`EngineLoop`): the request API with cancellation, and the
    engine's settings (`Engine`, or `LockstepEngine` over the ranks of expert parallelism)."""

    @property
    def config(self) -> EngineConfig: ...

    def cancel(self, request_id: str) -> None: ...


def run_to_completion(engine: Steppable, requests: Seq[GenerationRequest]) -> list[RequestOutput]:
    """Add the requests and step until all of them finish; final outputs in request order."""
    ids = [engine.add_request(r) for r in requests]
    final: dict[str, RequestOutput] = {}
    while len(final) < len(ids):
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    return [final[i] for i in ids if i in final]


@dataclass
class _InFlight:
    """An overlapped decode step whose samples are not read yet: row i continued `seqs[i]`, whose output
    holds a placeholder at `slots[i]`."""

    seqs: list[Sequence]
    slots: list[int]
    drawn: Drawn


class Engine:
    """Continuous-batching generation with DeepSeek-V4 over the heterogeneous paged KV cache."""

    def __init__(
        self,
        model: DeepseekV4Model,
        config: EngineConfig,
        *,
        hash_fn: HashFn = chain_hash,
        agree_tokens: Callable[[list[int]], list[int]] | None = None,
    ) -> None:
        """`agree_tokens` (expert parallelism) maps the tokens this engine sampled in a step to the ones
        every replica commits: rank 0's, which alone ran the requests' logits processors."""
        device = model.embed.weight.device
        wanted = torch.device(config.device)
        if wanted.type == "cuda" and wanted.index is None:
            wanted = torch.device("cuda", torch.cuda.current_device())
        if device != wanted:
            raise ValueError(
                f"the model is on {device} but EngineConfig.device is {config.device!r}; make them agree"
            )
        self.model = model.eval()
        self.config = config
        self.caches = CacheManager(model.args, config, hash_fn=hash_fn)
        self.scheduler = Scheduler(config, self.caches)
        self.speculator = MtpSpeculator(model, self.caches) if config.speculative == "mtp" else None
        decoder = None
        if self.speculator is None:
            decoder = DecodeRunner(model, self.caches.kv, self.caches.states, cuda_graphs=config.cuda_graphs)
        self.runner = ModelRunner(model, decoder)
        self.draft_stats = DraftStats()
        self._agree_tokens = agree_tokens
        self._ids = itertools.count()
        self._sequences: dict[str, Sequence] = {}
        self._finished_unreported: list[Sequence] = []
        self._cancelled: list[Sequence] = []  # in call order: every rank of expert parallelism stops alike
        self._in_flight: _InFlight | None = None
        self.steps = 0
        self.overlapped_steps = 0  # steps launched before the previous step's tokens were read
        self.forward_tokens = 0

    # ------------------------------------------------------------------ public API
    def add_request(self, request: GenerationRequest) -> str:
        """Queue a request; returns its id."""
        request.validate(self.model.args.vocab_size)
        needed = self.caches.blocks.blocks_for(len(request.prompt_ids) + request.max_new_tokens)
        if needed > self.config.num_blocks:
            raise CapacityError(
                f"prompt + max_new_tokens = {len(request.prompt_ids) + request.max_new_tokens} tokens need "
                f"{needed} KV blocks; the pool has {self.config.num_blocks} (EngineConfig.num_blocks)"
            )
        arrival = next(self._ids)
        request_id = f"req-{arrival}"
        seq = Sequence(request_id, request, arrival, [int(t) for t in request.prompt_ids])
        self._sequences[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def release_graphs(self) -> None:
        """Drop the decode steps' captured CUDA graphs (before the process group of expert parallelism is
        destroyed; see `DecodeRunner.release_graphs`). Later decode steps capture them again."""
        if self.runner.decoder is not None:
            self.runner.decoder.release_graphs()

    def cancel(self, request_id: str) -> None:
        """Stop a request before the next step (its output reports FinishReason.CANCELLED)."""
        seq = self._sequences.get(request_id)
        if seq is None:
            raise UnknownRequestError(request_id)
        if not seq.finished and seq not in self._cancelled:
            self._cancelled.append(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or bool(self._finished_unreported) or self._in_flight is not None

    def step(self) -> list[RequestOutput]:
        """Run one forward; returns the requests that produced tokens or finished in it (with overlapped
        decode steps: whose tokens the step read, those of the forward before)."""
        touched: dict[int, Sequence] = {}
        stops = self._due_stops()
        if stops and self._in_flight is not None:  # the stopped sequences keep the tokens already sampled
            self._land(self._in_flight, touched, taken=False)
            self._in_flight = None
        for seq, reason in stops:
            if not seq.finished:
                self._finish(seq, reason)
        for seq in self._finished_unreported:
            touched[id(seq)] = seq
        self._finished_unreported = []
        chunks = self.scheduler.schedule()
        previous, self._in_flight = self._in_flight, None
        if previous is not None and not self._overlaps(chunks):
            self._land(previous, touched, taken=False)
            previous = None
            chunks = [c for c in chunks if not c.seq.finished]
        if self._overlaps(chunks):
            self._launch_decode(chunks, previous)
            if previous is not None:  # read while the GPU runs the step just launched
                self._land(previous, touched, taken=True)
            for chunk in chunks:
                self.caches.after_forward(chunk.seq)  # its input token is known now
        elif chunks:
            self._run(chunks)
            for chunk in chunks:
                if chunk.seq.new_tokens or chunk.seq.finished:
                    touched[id(chunk.seq)] = chunk.seq
        outputs = [s.to_output() for s in touched.values()]
        for seq in touched.values():
            seq.new_tokens = []
            if seq.finished:
                self._sequences.pop(seq.request_id, None)
        return outputs

    def generate(self, requests: Seq[GenerationRequest]) -> list[RequestOutput]:
        """Add the requests and step until all of them finish; final outputs in request order."""
        return run_to_completion(self, requests)

    # ------------------------------------------------------------------ internals
    def _due_stops(self) -> list[tuple[Sequence, FinishReason]]:
        """The sequences to stop before this step: cancelled, or their cancel event set or deadline past."""
        stops = [(seq, FinishReason.CANCELLED) for seq in self._cancelled if not seq.finished]
        self._cancelled.clear()
        for seq in [*self.scheduler.running, *self.scheduler.waiting]:
            reason = _stop_reason(seq)
            if reason is not None:
                stops.append((seq, reason))
        return stops

    def _overlaps(self, chunks: list[Chunk]) -> bool:
        """Whether these chunks run as an overlapped decode step (`EngineConfig.overlap`): a device decode
        step whose samples are read during the next step. Not for rows with a logits processor: it needs
        every earlier token on the host before it samples."""
        decoder = self.runner.decoder
        return (
            self.config.overlap
            and decoder is not None
            and bool(chunks)
            and decoder.handles(chunks)
            and all(c.seq.request.sampling.logits_processor is None for c in chunks)
        )

    def _launch_decode(self, chunks: list[Chunk], previous: _InFlight | None) -> None:
        """Queue a device decode step and its sampling; the tokens stay in flight (placeholders in the
        sequences' outputs) until `_land`. Input tokens not read yet are taken from `previous` on the
        device. A sequence that reaches max_new_tokens with this token leaves the schedule now."""
        assert self.runner.decoder is not None
        carried = None
        if previous is not None:
            rows = {seq: i for i, seq in enumerate(previous.seqs)}
            carried = CarriedTokens(previous.drawn.ids, [rows.get(c.seq, -1) for c in chunks])
        logits = self.runner.decoder.run(chunks, carried)
        seqs = [c.seq for c in chunks]
        drawn = sample(
            logits,
            [s.request.sampling for s in seqs],
            [s.num_tokens for s in seqs],
            impl=self.model.kernels,
        )
        self.steps += 1
        self.overlapped_steps += 1
        self.forward_tokens += len(chunks)
        self._in_flight = _InFlight(seqs, [len(s.output) for s in seqs], drawn)
        for seq in seqs:
            seq.output.append(IN_FLIGHT)
            if len(seq.output) >= seq.request.max_new_tokens:
                self.scheduler.remove(seq)  # finishes when its token lands

    def _land(self, flight: _InFlight, touched: dict[int, Sequence], *, taken: bool) -> None:
        """Read an overlapped step's tokens into the outputs in place of their placeholders; finish the
        sequences they end. `taken`: the step after it already took them as inputs on the device, so the
        ranks of expert parallelism must have sampled the same (they do: the same all-reduced logits and
        seeds; a difference means they diverged). A sequence the tokens end drops its later placeholder:
        its cache then holds its last token too, and the token sampled after it is never read."""
        tokens, logprobs = flight.drawn.read()
        if self._agree_tokens is not None:
            agreed = self._agree_tokens(tokens)
            if taken and agreed != tokens:
                raise RuntimeError(
                    f"this rank sampled {tokens} where rank 0 sampled {agreed}, after the next step "
                    "took them as inputs: the ranks diverged"
                )
            tokens = agreed
        for seq, slot, token, logprob in zip(flight.seqs, flight.slots, tokens, logprobs, strict=True):
            if seq.finished:
                continue  # ended by a token read before this one
            seq.output[slot] = token
            seq.logprobs.append(logprob)
            seq.new_tokens.append(token)
            touched[id(seq)] = seq
            reason = _finish_reason(seq, token, produced=slot + 1)
            if reason is not None:
                del seq.output[slot + 1 :]
                self._finish(seq, reason, report=False)

    def _run(self, chunks: list[Chunk]) -> None:
        """A forward whose samples are read before it returns (prefill, mixed steps, drafts, logits
        processors, or `overlap` off)."""
        drafts = self.speculator.drafts(chunks) if self.speculator else [[] for _ in chunks]
        logits = self.runner.run(chunks, drafts)
        self.steps += 1
        self.forward_tokens += sum(c.length + len(d) for c, d in zip(chunks, drafts, strict=True))
        sampling: list[tuple[Sequence, list[int], list[torch.Tensor]]] = []
        for chunk, draft, sample_logits, verify_logits, prompt_logits in zip(
            chunks, drafts, logits.sample, logits.verify, logits.prompt, strict=True
        ):
            seq = chunk.seq
            if chunk.length > 1 or not seq.output or chunk.start < len(seq.prompt):
                seq.prefilled_tokens += chunk.length
            if prompt_logits is not None:
                seq.prompt_logits.append(prompt_logits)
                seq.prompt_logits_upto = min(chunk.start + chunk.length, len(seq.prompt))
            if not draft:  # with drafts: once the rejected ones are rolled back
                self.caches.after_forward(seq)
            if sample_logits is not None:
                processor = seq.request.sampling.logits_processor
                if processor is not None:
                    sample_logits = processor(list(seq.output), sample_logits)
                rows = [sample_logits, *(() if verify_logits is None else verify_logits.unbind(0))]
                sampling.append((seq, draft, rows))
        finished = self._take_samples(sampling) if sampling else []
        if self.speculator is not None:
            self.speculator.draft_next(chunks, logits)
        for seq, reason in finished:
            self._finish(seq, reason, report=False)

    def _take_samples(
        self, sampling: list[tuple[Sequence, list[int], list[torch.Tensor]]]
    ) -> list[tuple[Sequence, FinishReason]]:
        """Choose each row's token(s), keep a verified prefix of the drafts (caches rolled back for the rest);
        returns the sequences that finished (still holding their caches)."""
        rows = [(seq, i) for seq, _, logits in sampling for i in range(len(logits))]
        tokens, logprobs = sample(
            torch.stack([lg for _, _, logits in sampling for lg in logits]),
            [seq.request.sampling for seq, _ in rows],
            [seq.num_tokens + i for seq, i in rows],
            impl=self.model.kernels,
        ).read()
        if self._agree_tokens is not None:
            tokens = self._agree_tokens(tokens)
        finished: list[tuple[Sequence, FinishReason]] = []
        first = 0
        for seq, draft, logits in sampling:
            chosen = accepted_prefix(draft, tokens[first : first + len(logits)])
            emitted = 0
            for token, logprob in zip(chosen, logprobs[first:], strict=False):
                seq.output.append(token)
                seq.logprobs.append(logprob)
                seq.new_tokens.append(token)
                emitted += 1
                reason = _finish_reason(seq, token, produced=len(seq.output))
                if reason is not None:
                    finished.append((seq, reason))
                    break
            first += len(logits)
            if draft:
                assert seq.cache is not None
                seq.cache.rollback(1 + len(draft) - emitted)
                self.caches.after_forward(seq)
                accepted = accepted_count(draft, seq.output[-emitted:])
                seq.draft_stats.add(len(draft), accepted)
                self.draft_stats.add(len(draft), accepted)
        return finished

    def _finish(self, seq: Sequence, reason: FinishReason, *, report: bool = True) -> None:
        self.scheduler.remove(seq)
        self.caches.release(seq, keep_session=True)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if report:
            self._finished_unreported.append(seq)


def _finish_reason(seq: Sequence, token: int, *, produced: int) -> FinishReason | None:
    """Why `seq` ends after producing `token`, its `produced`-th (None: it goes on)."""
    if token in seq.request.stop_token_ids:
        return FinishReason.STOP
    if produced >= seq.request.max_new_tokens:
        return FinishReason.LENGTH
    return None


def _stop_reason(seq: Sequence) -> FinishReason | None:
    request = seq.request
    if request.cancel is not None and request.cancel.is_set():
        return FinishReason.CANCELLED
    if request.deadline is not None and time.monotonic() >= request.deadline:
        return FinishReason.DEADLINE
    return None
