"""The Ray executor: a batch's records as tasks on Ray worker actors (a local cluster, or one joined by
address), against the shared database and the job's model (an OpenAI-compatible server such as vLLM,
SGLang or ``deepscout serve``, or an embedded model loaded once per actor and shared by its threads).

The driver keeps exactly-once: workers only run the agent (which writes its runs and checkpoints to the
shared database); the driver alone marks records started and stores each outcome once. A worker that
dies (``kill -9``, a lost node) fails its tasks with a Ray error; the driver hands those records to a
restarted actor, resuming their agent checkpoints, up to ``options.attempts`` dispatches.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from deepscout.batch.batch_errors import BatchInputError
from deepscout.batch.batch_options import BatchOptions
from deepscout.batch.record_runner import RecordOutcome, output_line, run_record
from deepscout.memory.batch_records import PendingRecord
from deepscout.memory.db import open_database
from deepscout.model_runtime.chat import BackendRegistry, load_chat_model
from deepscout.settings import Settings

POLL_S = 0.5
RESTART_WAIT_S = 1.0
MAX_RESTART_WAIT_S = 30.0


class RecordWorker:
    """A Ray actor's state: one database engine and one loaded chat model, shared by its threads."""

    def __init__(
        self, settings: Settings, options: BatchOptions, spec: str, registry: BackendRegistry | None
    ) -> None:
        self._settings = settings
        self._options = options
        self._database = open_database(settings)
        self._model = load_chat_model(spec, settings=settings, registry=registry)

    def answer(self, record: PendingRecord) -> RecordOutcome:
        return run_record(
            record,
            settings=self._settings,
            options=self._options,
            model=self._model,
            database=self._database,
            stop=threading.Event(),
        )


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BatchInputError(
            "--executor ray needs Ray: pip install 'deepscout[ray]' (or pip install ray)"
        ) from None
    return ray


class RayExecutor:
    """Runs records on ``options.ray_workers`` actors, ``options.concurrency`` in flight in all."""

    def __init__(
        self, *, settings: Settings, options: BatchOptions, spec: str, registry: BackendRegistry | None
    ) -> None:
        self._settings = settings
        self._options = options
        self._spec = spec
        self._registry = registry

    def run(
        self,
        records: list[PendingRecord],
        *,
        start: Callable[[PendingRecord], None],
        deliver: Callable[[RecordOutcome], None],
        stop: threading.Event,
    ) -> None:
        ray = _ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self._options.ray_address, include_dashboard=False, log_to_driver=False)
        count = self._options.ray_workers
        per_worker = max(1, math.ceil(self._options.concurrency / count))
        actor = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=per_worker)(RecordWorker)
        args = (self._settings, self._options, self._spec, self._registry)
        workers = [actor.remote(*args) for _ in range(count)]
        load = [0] * count
        ready_at = [0.0] * count  # a restarting worker gets no task before then
        failures = [0] * count
        queue = deque(records)
        in_flight: dict[Any, tuple[PendingRecord, int]] = {}
        try:
            while (queue or in_flight) and not stop.is_set():
                now = time.monotonic()
                free = [i for i in range(count) if load[i] < per_worker and ready_at[i] <= now]
                while queue and free:
                    index = min(free, key=lambda i: load[i])
                    record = queue.popleft()
                    start(record)
                    in_flight[workers[index].answer.remote(record)] = (record, index)
                    load[index] += 1
                    free = [i for i in free if load[i] < per_worker]
                if not in_flight:  # every worker is restarting
                    time.sleep(POLL_S)
                    continue
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    record, index = in_flight.pop(ref)
                    load[index] -= 1
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the worker died: dispatch the record again
                        # ... once Ray has restarted it (waiting longer after each failure in a row)
                        failures[index] += 1
                        wait = min(MAX_RESTART_WAIT_S, RESTART_WAIT_S * 2 ** (failures[index] - 1))
                        ready_at[index] = time.monotonic() + wait
                        again = self._again(record, error)
                        if isinstance(again, RecordOutcome):
                            deliver(again)
                        else:
                            queue.appendleft(again)
                        continue
                    failures[index] = 0
                    deliver(outcome)
        finally:
            for worker in workers:
                ray.kill(worker)
            if started_here:
                ray.shutdown()

    def _again(self, record: PendingRecord, error: BaseException) -> PendingRecord | RecordOutcome:
        """The record to dispatch once more, or its failed outcome once it has had all its attempts."""
        attempts = record.attempts + 1
        if attempts < self._options.attempts:
            return replace(record, attempts=attempts)
        reason = RuntimeError(f"the Ray worker failed {attempts} times; last: {type(error).__name__}")
        line = output_line(record, self._options, None, reason, wall_s=0.0, tries=1)
        return RecordOutcome(record.record_id, "failed", line, None, line["error"])
