"""The Python API of batch jobs: ``run_batch``, ``resume_batch``, ``batch_status``, ``list_batch_jobs``.

A job is created from its input file (bad and duplicate records reported by line and skipped), then
driven: this process takes the job's lease, queues again whatever a stopped driver left in flight,
rebuilds ``results.jsonl`` from the database, answers the remaining records on the chosen executor
(storing each outcome once, then appending its line), and at the end rewrites ``results.jsonl`` in
input order and writes the summary. ``kill -9`` at any moment loses at most the records in flight,
which ``resume_batch`` answers again (resuming their agent checkpoints).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from deepscout.batch import batch_store
from deepscout.batch.batch_errors import BatchBusyError, OutputFolderError
from deepscout.batch.batch_options import BatchOptions
from deepscout.batch.batch_progress import ProgressCallback, ProgressCounter
from deepscout.batch.batch_store import BatchLease, BatchView
from deepscout.batch.input_records import InputProblem, read_input
from deepscout.batch.output_files import ResultsFile, check_folder, claim_folder, owner_of
from deepscout.batch.record_runner import RecordOutcome
from deepscout.batch.summary_report import Totals, write_summary
from deepscout.memory import batch_records
from deepscout.memory.batch_records import PendingRecord
from deepscout.memory.db import Database, open_database, write_session
from deepscout.model_runtime.chat import BackendRegistry, ChatModel, load_chat_model
from deepscout.settings import Settings


class RecordExecutor(Protocol):
    def run(
        self,
        records: list[PendingRecord],
        *,
        start: Callable[[PendingRecord], None],
        deliver: Callable[[RecordOutcome], None],
        stop: threading.Event,
    ) -> None: ...


@dataclass(frozen=True)
class BatchOutcome:
    """What one ``run_batch``/``resume_batch`` call left: the job, where its output is, and its state."""

    batch_id: str
    out_dir: Path
    status: str
    """``succeeded`` (every record answered or failed for good) or ``interrupted`` (resume it)."""
    problems: list[InputProblem]
    totals: Totals | None
    """The summary's totals once the job has finished."""


def create_batch(input_path: Path, *, out_dir: Path, options: BatchOptions, database: Database) -> str:
    """Store a new job for ``input_path`` writing into ``out_dir``; return its id."""
    out_dir, input_path = out_dir.expanduser().resolve(), input_path.expanduser().resolve()
    if out_dir.exists():
        check_folder(out_dir, batch_id=None)
    batch_input = read_input(input_path, base=options.research, max_question_chars=options.max_question_chars)
    with write_session(database.session_factory) as session:
        other = batch_records.batch_for_out_dir(session, out_dir=str(out_dir))
        if other is not None:
            raise OutputFolderError(
                f"{out_dir} is the output folder of batch job {other.id}; choose another --out folder "
                f"(or `deepscout batch resume {other.id}`)"
            )
        batch = batch_records.create_batch(
            session,
            input_path=str(input_path),
            input_hash=batch_input.sha256,
            out_dir=str(out_dir),
            options=options.model_dump(mode="json"),
            problems=[problem.as_dict() for problem in batch_input.problems],
            records=batch_input.records,
        )
        batch_id = batch.id
    claim_folder(out_dir, batch_id=batch_id, input_path=str(input_path))
    return batch_id


def run_batch(
    input_path: Path,
    *,
    out_dir: Path,
    settings: Settings,
    options: BatchOptions | None = None,
    progress: ProgressCallback | None = None,
    model: ChatModel | None = None,
    registry: BackendRegistry | None = None,
    database: Database | None = None,
) -> BatchOutcome:
    """Create a batch job for ``input_path`` and run it to the end (or until interrupted).

    ``model`` is an already loaded chat model to share (local executor); ``registry`` the backends to load
    ``options.research.model`` from (default: the built-in ones).
    """
    options = options or BatchOptions()
    db = database or open_database(settings)
    try:
        batch_id = create_batch(input_path, out_dir=out_dir, options=options, database=db)
        return _drive(db, batch_id, settings, options, progress, model, registry, retry_failed=False)
    finally:
        if database is None:
            db.dispose()


def resume_batch(
    batch_id: str,
    *,
    settings: Settings,
    concurrency: int | None = None,
    retry_failed: bool = False,
    progress: ProgressCallback | None = None,
    model: ChatModel | None = None,
    registry: BackendRegistry | None = None,
    database: Database | None = None,
) -> BatchOutcome:
    """Run the rest of job ``batch_id`` with the options it was created with (``concurrency`` may change);
    ``retry_failed`` answers the records that failed for good once more."""
    db = database or open_database(settings)
    try:
        stored = BatchOptions.model_validate(batch_store.view(db, batch_id).options)
        options = stored if concurrency is None else stored.model_copy(update={"concurrency": concurrency})
        return _drive(db, batch_id, settings, options, progress, model, registry, retry_failed=retry_failed)
    finally:
        if database is None:
            db.dispose()


def batch_status(batch_id: str, *, settings: Settings) -> BatchView:
    db = open_database(settings)
    try:
        return batch_store.view(db, batch_id)
    finally:
        db.dispose()


def list_batch_jobs(*, settings: Settings, limit: int = 50) -> list[BatchView]:
    db = open_database(settings)
    try:
        return batch_store.list_views(db, limit=limit)
    finally:
        db.dispose()


def _executor(
    db: Database,
    settings: Settings,
    options: BatchOptions,
    model: ChatModel | None,
    registry: BackendRegistry | None,
) -> RecordExecutor:
    spec = options.research.model or settings.model
    if options.executor == "ray":
        from deepscout.batch.ray_executor import RayExecutor

        return RayExecutor(settings=settings, options=options, spec=spec, registry=registry)
    from deepscout.batch.local_executor import LocalExecutor

    chat = model or load_chat_model(spec, settings=settings, registry=registry)
    return LocalExecutor(settings=settings, options=options, model=chat, database=db)


def _drive(
    db: Database,
    batch_id: str,
    settings: Settings,
    options: BatchOptions,
    progress: ProgressCallback | None,
    model: ChatModel | None,
    registry: BackendRegistry | None,
    *,
    retry_failed: bool,
) -> BatchOutcome:
    view = batch_store.view(db, batch_id)
    out_dir = Path(view.out_dir)
    if owner_of(out_dir) is None:  # created, then stopped before its folder was claimed (or it was removed)
        claim_folder(out_dir, batch_id=batch_id, input_path=view.input_path)
    check_folder(out_dir, batch_id=batch_id)
    stop = threading.Event()
    lease = BatchLease(db, batch_id, stop=stop)
    lease.take(retry_failed=retry_failed)
    results = ResultsFile(out_dir)
    status, error = "interrupted", None
    try:
        done = lease.results()
        results.rebuild(done)
        pending = lease.pending()
        counter = ProgressCounter(
            total=len(done) + len(pending),
            done=len(done),
            failed=sum(1 for line in done if line["status"] == "failed"),
            report=progress,
        )
        if pending:

            def deliver(outcome: RecordOutcome) -> None:
                if lease.finish(outcome):  # stored once; only then is its line written
                    results.append(outcome.result)
                    counter.finished(failed=outcome.status == "failed")

            executor = _executor(db, settings, options, model, registry)
            executor.run(pending, start=lease.start, deliver=deliver, stop=stop)
        if lease.lost.is_set():
            raise BatchBusyError(f"batch job {batch_id} was taken over by another driver; this one stopped")
        if _unfinished(db, batch_id):
            return BatchOutcome(batch_id, out_dir, "interrupted", _problems(view), None)
        final = lease.results(by_line=True)
        results.rebuild(final)
        totals = write_summary(out_dir, batch_id, final, view.problems)
        status = "succeeded"
        return BatchOutcome(batch_id, out_dir, status, _problems(view), totals)
    except Exception as caught:
        status, error = "failed", f"{type(caught).__name__}: {caught}"
        raise
    finally:
        results.close()
        if not lease.lost.is_set():
            lease.release(status, error)


def _unfinished(db: Database, batch_id: str) -> bool:
    with db.session_factory() as session:
        counts = batch_records.status_counts(session, batch_id=batch_id)
    return any(counts.get(status, 0) for status in ("running", "queued", "interrupted"))


def _problems(view: BatchView) -> list[InputProblem]:
    return [InputProblem(line=int(p["line"]), reason=str(p["reason"])) for p in view.problems]
