"""Answering one batch record: the agent's ``research`` on the record's research job, retried with the
shared policy on transient errors, and the record's output line.

A retry (and a record taken up again after a crash) calls ``research`` with the same thread id — the
record's research job id — so the agent resumes from its checkpoint, and a run that had finished returns
its stored result instead of starting again. Both executors (local threads, Ray tasks) run this.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.exc import OperationalError

from deepscout.agent.api import ResearchResult, research
from deepscout.agent.options import ResearchOptions
from deepscout.batch.batch_options import BatchOptions
from deepscout.errors import DeepscoutError
from deepscout.memory.batch_records import PendingRecord
from deepscout.memory.db import Database
from deepscout.model_runtime.chat import ChatModel
from deepscout.model_runtime.chat.exceptions import ChatBackendError, GenerationDeadlineExceeded
from deepscout.settings import Settings

logger = logging.getLogger(__name__)
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses of a busy, rate-limiting or restarting model server: worth another try later."""


class BatchStopped(DeepscoutError):
    """Raised into a record's run when its driver is stopping (the record stays resumable)."""


@dataclass(frozen=True)
class RecordOutcome:
    """A finished record: its final status and output line."""

    record_id: int
    status: Literal["succeeded", "failed"]
    result: dict[str, Any]
    run_id: str | None
    error: str | None


def is_transient(error: BaseException) -> bool:
    """Whether a record's failure may pass on its own (rate limits, a busy server, a dropped connection)."""
    from deepscout.tools.search_backends import BackendRateLimited, BackendTimeout

    if isinstance(error, GenerationDeadlineExceeded):
        return False  # the record's own wall-time budget, not the service
    if isinstance(error, ChatBackendError):
        return error.status_code is None or error.status_code in TRANSIENT_STATUSES
    passing = (ConnectionError, TimeoutError, OperationalError, BackendRateLimited, BackendTimeout)
    return isinstance(error, passing)


def settings_given(options: ResearchOptions, base: ResearchOptions) -> dict[str, Any]:
    """The research options of a record that differ from the batch's (its ``settings``)."""
    mine, theirs = options.model_dump(mode="json"), base.model_dump(mode="json")
    given = {name: value for name, value in mine.items() if name != "budgets" and value != theirs[name]}
    budgets = {k: v for k, v in mine["budgets"].items() if v != theirs["budgets"][k]}
    return given | ({"budgets": budgets} if budgets else {})


def run_record(
    record: PendingRecord,
    *,
    settings: Settings,
    options: BatchOptions,
    model: ChatModel,
    database: Database,
    stop: threading.Event,
) -> RecordOutcome:
    """Answer ``record`` (retrying transient errors); a failure is returned as a failed outcome, never
    raised — except :class:`BatchStopped` when ``stop`` is set: the run stops where it is (in a model call
    too) and the record is left, resumable, to a later driver."""
    research_options = ResearchOptions.model_validate(record.options)
    started = time.monotonic()
    tries = 0
    result: ResearchResult | None = None
    error: BaseException | None = None

    def attempt() -> ResearchResult:
        nonlocal tries
        tries += 1
        if stop.is_set():
            raise BatchStopped("the batch is stopping")
        return research(
            record.question,
            settings=settings,
            options=research_options,
            model=model,
            thread_id=record.job_id,
            database=database,
            cancel=stop,
        )

    try:
        result = options.retry_policy().retrying(is_transient, sleep=_backoff(stop))(attempt)
    except BatchStopped:
        raise
    except Exception as caught:  # one record's failure is recorded; the batch goes on
        if stop.is_set():
            raise BatchStopped("the batch is stopping") from caught
        if not isinstance(caught, DeepscoutError):
            logger.exception("batch record %s (line %s) failed", record.key, record.line)
        error = caught
    line = output_line(record, options, result, error, wall_s=time.monotonic() - started, tries=tries)
    return RecordOutcome(
        record_id=record.record_id,
        status="succeeded" if result is not None else "failed",
        result=line,
        run_id=result.run_id if result is not None else None,
        error=line["error"],
    )


def _backoff(stop: threading.Event) -> Callable[[float], None]:
    """A backoff sleep that ends early (and ends the retries) when the batch is stopping."""

    def wait(seconds: float) -> None:
        if stop.wait(seconds):
            raise BatchStopped("the batch is stopping")

    return wait


def output_line(
    record: PendingRecord,
    options: BatchOptions,
    result: ResearchResult | None,
    error: BaseException | None,
    *,
    wall_s: float,
    tries: int,
) -> dict[str, Any]:
    """The record's line of ``results.jsonl``."""
    research_options = ResearchOptions.model_validate(record.options)
    line: dict[str, Any] = {
        "id": record.key,
        "line": record.line,
        "question": record.question,
        "metadata": record.meta,
        "settings": settings_given(research_options, options.research),
        "wall_s": round(wall_s, 3),
        "attempts": record.attempts + max(tries, 1),
    }
    if result is None:
        message = f"{type(error).__name__}: {error}" if error is not None else "no result"
        return line | {"status": "failed", "error": message, "answer": None, "usage": {}, "cost": 0.0}
    usage = result.usage.as_dict()
    return line | {
        "status": "succeeded",
        "error": None,
        "answer": result.answer,
        "answer_status": result.status,
        "citations": [
            {"n": c.n, "source_id": c.source_id, "title": c.title, "url": c.url} for c in result.citations
        ],
        "sources": [
            {"n": s["n"], "source_id": s["source_id"], "doc_id": s.get("doc_id"), "title": s["title"]}
            | {"url": s["url"]}
            for s in result.sources
        ],
        "usage": usage,
        "cost": round(options.prices.cost(usage), 6),
        "run_id": result.run_id,
    }
