"""Research jobs: questions asked in chat threads, run by the agent in worker threads.

A job's events are numbered 1, 2, 3… and kept in memory while it runs (any number of subscribers read
them, from any point: SSE ``Last-Event-ID`` resume and re-attaching after a disconnect) and written to the
database as they come (answer tokens in batches), so a finished job replays from the database and a
restarted server loses at most the last few tokens. A job outlives its clients: nothing stops it but
``cancel``, its budgets, or the server stopping — which leaves it ``interrupted`` and resumable from the
agent's checkpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from deepscout.agent.api import ResearchResult, research
from deepscout.agent.conversation import PriorTurn
from deepscout.agent.state import SourceRecord
from deepscout.errors import DeepscoutError
from deepscout.memory import repository
from deepscout.memory.db import Database, write_session
from deepscout.memory.repository import JobEvent
from deepscout.memory.tables import Message, ResearchJob, Source
from deepscout.model_runtime.chat import GenerationCancelled
from deepscout.settings import Settings
from deepscout.ui.http_errors import ApiError
from deepscout.ui.model_service import ModelService
from deepscout.ui.research_schemas import JobOptions, ResearchRequest, SourceCard

EXCERPT_CHARS = 600
KEEPALIVE_S = 15.0
CANCEL_WAIT_S = 120.0
_BUFFERED = ("answer_token",)
logger = logging.getLogger(__name__)


class JobCancelled(DeepscoutError):
    """Raised into the agent's run when its job is cancelled."""


@dataclass
class LiveJob:
    """A job this process is running: its events so far and how to wake its subscribers."""

    id: str
    loop: asyncio.AbstractEventLoop
    events: list[JobEvent] = field(default_factory=list)
    finished: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    run_id: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    unsaved: list[JobEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wake(self) -> None:
        """Called on the event loop: wakes whoever waits for new events."""
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class ResearchJobs:
    """Starts, streams, cancels and resumes research jobs."""

    def __init__(self, settings: Settings, database: Database, models: ModelService) -> None:
        """Built on the event loop the server runs (the one that streams the events)."""
        self._settings = settings
        self._database = database
        self._models = models
        self._live: dict[str, LiveJob] = {}
        self._pool = ThreadPoolExecutor(settings.server.max_active_runs, thread_name_prefix="deepscout-job")
        self._stopping = False
        self._loop = asyncio.get_running_loop()

    # --- starting -----------------------------------------------------------------------------------

    def start(self, *, owner: str, request: ResearchRequest) -> ResearchJob:
        model = self._models.require(request.model or self._models.default)
        options = JobOptions(model=model, search=request.search, max_steps=request.max_steps)
        with write_session(self._database.session_factory) as session:
            thread_id = request.thread_id
            if thread_id is None:
                thread_id = repository.create_thread(session, title=request.question[:200], owner=owner).id
            elif repository.get_owned_thread(session, thread_id=thread_id, owner=owner) is None:
                raise ApiError(404, f"no thread {thread_id!r}", kind="not_found_error")
            job = repository.create_job(
                session, thread_id=thread_id, question=request.question, options=options.model_dump()
            )
            repository.add_message(session, thread_id=thread_id, role="user", content=request.question)
        self._launch(job)
        return job

    def resume(self, *, owner: str, job_id: str) -> ResearchJob:
        job = self.owned(owner=owner, job_id=job_id)
        if job.status not in ("interrupted", "cancelled") or job.id in self._live:
            raise ApiError(409, f"job {job_id} is {job.status}; only an interrupted or cancelled job resumes")
        with write_session(self._database.session_factory) as session:
            job = repository.set_job_status(session, job_id=job.id, status="queued")
        self._launch(job)
        return job

    def _launch(self, job: ResearchJob) -> None:
        with self._database.session_factory() as session:
            stored = repository.list_events(session, job_id=job.id)
            history = _earlier_turns(repository.list_messages(session, thread_id=job.thread_id))
        live = LiveJob(id=job.id, loop=self._loop, events=stored)
        self._live[job.id] = live
        self._pool.submit(self._work, live, job.question, JobOptions.model_validate(job.options), history)

    # --- the worker ---------------------------------------------------------------------------------

    def _work(self, live: LiveJob, question: str, options: JobOptions, history: list[PriorTurn]) -> None:
        self._emit(live, {"type": "job", "job_id": live.id, "status": "running"})
        self._set_status(live, "running")
        try:
            model = self._models.get(options.model)
            result = research(
                question,
                settings=self._settings,
                options=options.research_options(),
                model=model,
                thread_id=live.id,
                on_event=lambda event: self._on_agent_event(live, event),
                database=self._database,
                history=history,
                cancel=live.cancel,
            )
        except (JobCancelled, GenerationCancelled):
            if self._stopping:
                error = repository.INTERRUPTED_BY_RESTART
                self._finish(live, "interrupted", {"type": "interrupted", "message": error}, error=error)
            else:
                self._finish(live, "cancelled", {"type": "cancelled"}, error="cancelled by the user")
            return
        except DeepscoutError as error:
            self._finish(live, "failed", {"type": "failed", "message": str(error)}, error=str(error))
            return
        except Exception as error:  # a bug: the job fails (logged here, not shown), the server goes on
            logger.exception("research job %s failed", live.id)
            message = f"internal error ({type(error).__name__})"
            self._finish(live, "failed", {"type": "failed", "message": message}, error=repr(error))
            return
        self._finish(live, "succeeded", self._done_event(live, result))

    def _on_agent_event(self, live: LiveJob, event: dict[str, Any]) -> None:
        if event["type"] in ("start", "resume"):
            live.run_id = event["run_id"]
            with write_session(self._database.session_factory) as session:
                repository.set_job_status(session, job_id=live.id, status="running", run_id=live.run_id)
        if live.cancel.is_set():
            raise JobCancelled(f"job {live.id} was cancelled")
        self._emit(live, event)

    def _done_event(self, live: LiveJob, result: ResearchResult) -> dict[str, Any]:
        cards = [card.model_dump() for card in self.describe_sources(result.sources)]
        with write_session(self._database.session_factory) as session:
            job = repository.get_job(session, job_id=live.id)
            assert job is not None
            repository.add_message(
                session,
                thread_id=job.thread_id,
                role="assistant",
                content=result.answer,
                run_id=result.run_id,
                meta={"job_id": live.id, "status": result.status, "sources": cards},
            )
        return {"type": "done", "answer": result.answer, "status": result.status, "sources": cards}

    def describe_sources(self, records: list[SourceRecord]) -> list[SourceCard]:
        """The sources of an answer with an excerpt of each (the start of the stored document)."""
        with self._database.session_factory() as session:
            texts = {record["source_id"]: session.get(Source, record["source_id"]) for record in records}
        return [
            SourceCard(
                n=record["n"],
                source_id=record["source_id"],
                title=record["title"],
                url=record["url"],
                excerpt=source.text[:EXCERPT_CHARS] if (source := texts[record["source_id"]]) else "",
            )
            for record in records
        ]

    def _emit(self, live: LiveJob, event: dict[str, Any]) -> None:
        data = _json_safe({key: value for key, value in event.items() if key != "type"})
        with live.lock:
            stored = JobEvent(seq=len(live.events) + 1, type=str(event["type"]), data=data)
            live.events.append(stored)
            live.unsaved.append(stored)
            flush = stored.type not in _BUFFERED or len(live.unsaved) >= 32
        if flush:
            self._save(live)
        live.loop.call_soon_threadsafe(live.wake)

    def _save(self, live: LiveJob) -> None:
        with live.lock:
            batch, live.unsaved = live.unsaved, []
        if batch:
            with write_session(self._database.session_factory) as session:
                repository.add_events(session, job_id=live.id, events=batch)

    def _set_status(self, live: LiveJob, status: str, error: str | None = None) -> None:
        with write_session(self._database.session_factory) as session:
            repository.set_job_status(session, job_id=live.id, status=status, error=error)

    def _finish(self, live: LiveJob, status: str, event: dict[str, Any], *, error: str | None = None) -> None:
        """Send the final event and store the outcome; subscribers are released even if storing fails."""
        try:
            self._emit(live, event)
            self._save(live)
            with write_session(self._database.session_factory) as session:
                repository.set_job_status(session, job_id=live.id, status=status, error=error)
                if status in ("cancelled", "interrupted") and live.run_id is not None:
                    repository.finish_run(session, run_id=live.run_id, status="interrupted", error=error)
        finally:
            live.finished = True
            live.loop.call_soon_threadsafe(self._retire, live)

    def _retire(self, live: LiveJob) -> None:
        live.wake()
        self._live.pop(live.id, None)

    # --- reading, streaming, cancelling ---------------------------------------------------------------

    def owned(self, *, owner: str, job_id: str) -> ResearchJob:
        """The job if the caller owns its thread (else 404, the same as for a job that does not exist)."""
        with self._database.session_factory() as session:
            job = repository.get_job(session, job_id=job_id)
            if (
                job is None
                or repository.get_owned_thread(session, thread_id=job.thread_id, owner=owner) is None
            ):
                raise ApiError(404, f"no research job {job_id!r}", kind="not_found_error")
            return job

    async def stream(self, *, job_id: str, after: int = 0) -> AsyncIterator[JobEvent | None]:
        """The job's events after number ``after``: the stored ones, then live ones until it ends; None
        when nothing happened for ``KEEPALIVE_S`` (the stream sends a keep-alive comment). The caller has
        checked that the job is the requester's (:meth:`owned`)."""
        live = self._live.get(job_id)
        if live is None:
            with self._database.session_factory() as session:
                for event in repository.list_events(session, job_id=job_id, after=after):
                    yield event
            return
        seen = after
        while True:
            waiter = live.changed
            with live.lock:
                fresh = live.events[seen:]
            for event in fresh:
                yield event
                seen = event.seq
            if live.finished and seen >= len(live.events):
                return
            try:
                await asyncio.wait_for(waiter.wait(), KEEPALIVE_S)
            except TimeoutError:
                yield None

    def cancel(self, *, owner: str, job_id: str) -> ResearchJob:
        job = self.owned(owner=owner, job_id=job_id)
        live = self._live.get(job_id)
        if live is None:
            raise ApiError(409, f"job {job_id} is {job.status}, not running")
        live.cancel.set()
        return job

    def cancel_thread(self, thread_id: str) -> None:
        """Cancel the thread's running jobs and wait until they have stopped writing (blocking; 409 if
        one does not stop within ``CANCEL_WAIT_S``)."""
        with self._database.session_factory() as session:
            job_ids = [job.id for job in repository.list_jobs(session, thread_id=thread_id)]
        running = [self._live[job_id] for job_id in job_ids if job_id in self._live]
        for live in running:
            live.cancel.set()
        deadline = time.monotonic() + CANCEL_WAIT_S
        while any(not live.finished for live in running):
            if time.monotonic() > deadline:
                raise ApiError(409, "a job of this thread is still stopping; try again shortly")
            time.sleep(0.05)

    @property
    def active(self) -> int:
        return len(self._live)

    def close(self) -> None:
        """Stop: running jobs end ``interrupted`` (resumable), queued ones stay for the next start."""
        self._stopping = True
        for live in list(self._live.values()):
            live.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _earlier_turns(messages: list[Message]) -> list[PriorTurn]:
    """The thread's answered turns, in order: each user question with the assistant answer after it (the
    question being asked now has no answer yet and is left out)."""
    turns = []
    for question, answer in itertools.pairwise(messages):
        if question.role == "user" and answer.role == "assistant":
            sources = (answer.meta or {}).get("sources", [])
            titles = [str(card.get("title", "")) for card in sources if isinstance(card, dict)]
            turns.append(PriorTurn(question.content, answer.content, titles))
    return turns
