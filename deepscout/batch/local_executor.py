"""The local executor: a batch's records as concurrent agent sessions in this process's threads, all on
the one chat model the job loaded (so the model's batching and prefix cache serve them together)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from deepscout.batch.batch_options import BatchOptions
from deepscout.batch.record_runner import BatchStopped, RecordOutcome, run_record
from deepscout.memory.batch_records import PendingRecord
from deepscout.memory.db import Database
from deepscout.model_runtime.chat import ChatModel
from deepscout.settings import Settings

POLL_S = 0.5


class LocalExecutor:
    """Runs records on ``options.concurrency`` threads sharing ``model``."""

    def __init__(self, *, settings: Settings, options: BatchOptions, model: ChatModel, database: Database):
        self._settings = settings
        self._options = options
        self._model = model
        self._database = database

    def run(
        self,
        records: list[PendingRecord],
        *,
        start: Callable[[PendingRecord], None],
        deliver: Callable[[RecordOutcome], None],
        stop: threading.Event,
    ) -> None:
        """Answer ``records``: ``start(record)`` before each, ``deliver(outcome)`` (on this thread) after.
        Returns when all are done or, once ``stop`` is set, when the records in flight have stopped."""

        def one(record: PendingRecord) -> RecordOutcome:
            if stop.is_set():
                raise BatchStopped("the batch is stopping")
            start(record)
            return run_record(
                record,
                settings=self._settings,
                options=self._options,
                model=self._model,
                database=self._database,
                stop=stop,
            )

        pool = ThreadPoolExecutor(self._options.concurrency, thread_name_prefix="deepscout-batch")
        try:
            waiting: set[Future[RecordOutcome]] = {pool.submit(one, record) for record in records}
            while waiting:
                done, waiting = wait(waiting, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        outcome = future.result()
                    except BatchStopped:
                        continue
                    deliver(outcome)
        finally:
            stop.set()  # on an error or Ctrl-C here, the records in flight stop at their next step
            pool.shutdown(wait=True, cancel_futures=True)
