"""The engine replicated on every rank and stepped in lockstep (SPMD), driven by rank 0.

Every rank holds an identical `Engine` over its shard of the model. Before each step rank 0 broadcasts
the step's `Orders` — the requests added since the last step (with the ids its engine gave them) and the
requests to stop — and every rank applies them and runs the same deterministic step: same scheduler
decisions, same forward (its logits identical on every rank after the MoE all-reduces), same greedy or
seeded sampling. Rank 0 returns the outputs; the others discard theirs.

What is decided by the clock or by another thread — a request's deadline and its cancel event — is decided
on rank 0 only, once per step, and travels as a stop order, so all ranks stop a request at the same step.
A per-row `logits_processor` (a stateful grammar) runs on rank 0 only; every engine is built to take the
tokens rank 0 sampled (`Engine(agree_tokens=RankGroup.agree)`), so the ranks' caches hold the same tokens.
The other ranks get `rank0_chooses` in its place, so their engines, like rank 0's, read such a row's
tokens before its next step; rows without one run overlapped decode steps on every rank alike.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepscout.model_runtime.v4.engine import (
    Engine,
    EngineConfig,
    FinishReason,
    GenerationRequest,
    RequestOutput,
    UnknownRequestError,
)
from deepscout.model_runtime.v4.engine.engine import run_to_completion
from deepscout.model_runtime.v4.parallel.rank_group import RankGroup


@dataclass(frozen=True)
class Orders:
    """What every rank applies before a step: requests to add (engine id, request without deadline or
    cancel event), requests to stop (CANCELLED or DEADLINE), or the end of the run."""

    added: tuple[tuple[str, GenerationRequest], ...] = ()
    stopped: tuple[tuple[str, FinishReason], ...] = ()
    shutdown: bool = False


@dataclass(frozen=True)
class _Controls:
    """A request's controls as its caller gave them, watched on rank 0."""

    cancel: threading.Event | None
    deadline: float | None


class _Replica:
    """One rank's engine and the requests it was given (to stop them as ordered)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests: dict[str, GenerationRequest] = {}

    def add(self, request: GenerationRequest) -> str:
        request_id = self.engine.add_request(request)
        self.requests[request_id] = request
        return request_id

    def stop(self, request_id: str, reason: FinishReason) -> None:
        if reason is FinishReason.DEADLINE:
            self.requests[request_id].deadline = -math.inf  # the engine stops it at its next step
        else:
            self.engine.cancel(request_id)

    def step(self) -> list[RequestOutput]:
        outputs = self.engine.step()
        for out in outputs:
            if out.finished:
                self.requests.pop(out.request_id, None)
        return outputs


class LockstepEngine:
    """Rank 0's engine API (`add_request` / `step` / `generate` / `cancel`) over the engines of all ranks;
    the other ranks run `follow`. Single-threaded, like `Engine`; `close` ends the followers' loops."""

    def __init__(self, engine: Engine, group: RankGroup) -> None:
        if group.rank != 0:
            raise ValueError(f"the lockstep engine is driven from rank 0; rank {group.rank} runs follow()")
        self.group = group
        self._replica = _Replica(engine)
        self._added: list[tuple[str, GenerationRequest]] = []
        self._controls: dict[str, _Controls] = {}
        self._cancelled: list[str] = []
        self._closed = False

    @property
    def engine(self) -> Engine:
        return self._replica.engine

    @property
    def config(self) -> EngineConfig:
        return self.engine.config

    def add_request(self, request: GenerationRequest) -> str:
        """Queue a request on every rank (from the next step); returns its id. Its logits processor runs
        here only: the other ranks take the tokens rank 0 chose (`Engine`'s `agree_tokens`)."""
        local = dataclasses.replace(request, deadline=None, cancel=None)
        processor = None if local.sampling.logits_processor is None else rank0_chooses
        shared = dataclasses.replace(
            local, sampling=dataclasses.replace(local.sampling, logits_processor=processor)
        )
        request_id = self._replica.add(local)
        self._added.append((request_id, shared))
        self._controls[request_id] = _Controls(request.cancel, request.deadline)
        return request_id

    def cancel(self, request_id: str) -> None:
        """Stop a request before the next step (its output reports FinishReason.CANCELLED)."""
        if request_id not in self._replica.requests:
            raise UnknownRequestError(request_id)
        self._cancelled.append(request_id)

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """One step on every rank; returns rank 0's outputs."""
        orders = Orders(added=tuple(self._added), stopped=self._due_stops())
        self._added = []
        self.group.broadcast(orders)
        for request_id, reason in orders.stopped:
            self._replica.stop(request_id, reason)
        outputs = self._replica.step()
        for out in outputs:
            if out.finished:
                self._controls.pop(out.request_id, None)
        return outputs

    def generate(self, requests: Sequence[GenerationRequest]) -> list[RequestOutput]:
        """Add the requests and step until all of them finish; final outputs in request order."""
        return run_to_completion(self, requests)

    def close(self) -> None:
        """End the followers' loops (once)."""
        if not self._closed:
            self._closed = True
            self.group.broadcast(Orders(shutdown=True))

    def _due_stops(self) -> tuple[tuple[str, FinishReason], ...]:
        """The stops of this step, decided once here: cancels asked for, cancel events set, deadlines past."""
        now = time.monotonic()
        stops = {request_id: FinishReason.CANCELLED for request_id in self._cancelled}
        self._cancelled = []
        for request_id, controls in self._controls.items():
            if request_id in stops:
                continue
            if controls.cancel is not None and controls.cancel.is_set():
                stops[request_id] = FinishReason.CANCELLED
            elif controls.deadline is not None and now >= controls.deadline:
                stops[request_id] = FinishReason.DEADLINE
        for request_id in stops:
            self._controls.pop(request_id, None)
        return tuple(stops.items())


def rank0_chooses(output: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
    """A follower's stand-in for a request's logits processor (rank 0 runs the real one and the follower
    takes the tokens it chose): the logits as they are."""
    return logits


def follow(engine: Engine, group: RankGroup) -> None:
    """Run a rank other than 0 in lockstep with rank 0's `LockstepEngine` until it closes."""
    replica = _Replica(engine)
    while True:
        orders = group.broadcast(None)
        if not isinstance(orders, Orders):
            raise TypeError(f"rank {group.rank} expected Orders from rank 0, got {type(orders).__name__}")
        if orders.shutdown:
            return
        for request_id, request in orders.added:
            given = replica.add(request)
            if given != request_id:
                raise RuntimeError(f"rank {group.rank} diverged: request {request_id} got id {given}")
        for request_id, reason in orders.stopped:
            replica.stop(request_id, reason)
        replica.step()
