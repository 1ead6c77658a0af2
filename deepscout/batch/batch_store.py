"""One driver's hold on a batch job in ``memory``: its lease (one live driver per job), the records still
to answer, and each finished record stored once.

The lease is the driver's ``host:pid:nonce`` and a heartbeat. Another driver takes the job over only when
the holder's heartbeat is older than ``STALE_AFTER_S`` or the holder was a process of this host that no
longer exists (a ``kill -9``, a crash): ``batch resume`` right after a kill does not wait.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from deepscout.batch.batch_errors import BatchBusyError, BatchNotFoundError
from deepscout.batch.record_runner import RecordOutcome
from deepscout.memory import batch_records
from deepscout.memory.batch_records import PendingRecord
from deepscout.memory.db import Database, write_session
from deepscout.memory.tables import BatchJob, utcnow

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_is_gone(holder: str, heartbeat_at: datetime | None, *, now: datetime | None = None) -> bool:
    """Whether the driver ``holder`` (``host:pid:nonce``) has stopped: silent too long, or a process of
    this host that no longer exists."""
    now = now or utcnow()
    if heartbeat_at is None or now - heartbeat_at > timedelta(seconds=STALE_AFTER_S):
        return True
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not _process_exists(int(pid))


@dataclass(frozen=True)
class BatchView:
    """What ``status`` and ``list`` show of a batch."""

    id: str
    status: str
    input_path: str
    out_dir: str
    created_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]
    problems: list[dict[str, Any]]
    options: dict[str, Any]
    error: str | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def view(database: Database, batch_id: str) -> BatchView:
    with database.session_factory() as session:
        batch = batch_records.get_batch(session, batch_id=batch_id)
        if batch is None:
            raise BatchNotFoundError(f"no batch job {batch_id!r}; `deepscout batch list` shows the jobs")
        return _view(batch, batch_records.status_counts(session, batch_id=batch.id))


def _view(batch: BatchJob, counts: dict[str, int]) -> BatchView:
    return BatchView(
        id=batch.id,
        status=batch.status,
        input_path=batch.input_path,
        out_dir=batch.out_dir,
        created_at=batch.created_at,
        finished_at=batch.finished_at,
        counts=counts,
        problems=list(batch.problems),
        options=dict(batch.options),
        error=batch.error,
    )


def list_views(database: Database, *, limit: int = 50) -> list[BatchView]:
    with database.session_factory() as session:
        return [
            _view(batch, batch_records.status_counts(session, batch_id=batch.id))
            for batch in batch_records.list_batches(session, limit=limit)
        ]


class BatchLease:
    """This process's lease on one batch job, renewed by a heartbeat thread while it runs."""

    def __init__(self, database: Database, batch_id: str, *, stop: threading.Event) -> None:
        """``stop`` is set if another driver takes the job over (this one must then stop)."""
        self.database = database
        self.batch_id = batch_id
        self._on_lost = stop
        self.driver = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def take(self, *, retry_failed: bool = False) -> None:
        """Become the job's driver (or raise BatchBusyError), queue again what a stopped driver left
        running, and start the heartbeat."""
        with write_session(self.database.session_factory) as session:
            holder = batch_records.take_lease(
                session,
                batch_id=self.batch_id,
                driver=self.driver,
                may_replace=lambda holder, beat: holder_is_gone(holder, beat),
            )
            if holder is not None:
                raise BatchBusyError(
                    f"batch job {self.batch_id} is being run by {holder}; wait for it, or resume it after "
                    f"that process has stopped (or {int(STALE_AFTER_S)} s after its last heartbeat)"
                )
            batch_records.requeue_unfinished(session, batch_id=self.batch_id, retry_failed=retry_failed)
        self._beat = threading.Thread(target=self._heartbeat, name="deepscout-batch-lease", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with write_session(self.database.session_factory) as session:
                held = batch_records.renew_lease(session, batch_id=self.batch_id, driver=self.driver)
            if not held:
                self.lost.set()
                self._on_lost.set()
                return

    def release(self, status: str, error: str | None = None) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        with write_session(self.database.session_factory) as session:
            batch_records.release_lease(
                session, batch_id=self.batch_id, driver=self.driver, status=status, error=error
            )

    # --- records ------------------------------------------------------------------------------------

    def pending(self) -> list[PendingRecord]:
        with self.database.session_factory() as session:
            return batch_records.pending_records(session, batch_id=self.batch_id)

    def start(self, record: PendingRecord) -> None:
        with write_session(self.database.session_factory) as session:
            batch_records.start_record(session, record_id=record.record_id)

    def finish(self, outcome: RecordOutcome) -> bool:
        """Store the record's outcome; False if it was stored already (its line must not be written)."""
        with write_session(self.database.session_factory) as session:
            return batch_records.finish_record(
                session,
                record_id=outcome.record_id,
                status=outcome.status,
                result=outcome.result,
                run_id=outcome.run_id,
                error=outcome.error,
            )

    def results(self, *, by_line: bool = False) -> list[dict[str, Any]]:
        with self.database.session_factory() as session:
            return batch_records.finished_results(session, batch_id=self.batch_id, by_line=by_line)
