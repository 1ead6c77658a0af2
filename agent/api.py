"""The Python API: ``research(question, ...)`` and its async streaming variant ``aresearch_stream``.

A run is a LangGraph thread checkpointed in ``Settings.home``; calling ``research`` again with the
``thread_id`` of an interrupted run resumes it from its last checkpoint (a finished thread returns its
stored result). The run, its steps, tool calls, sources and answer are stored through the memory
repository.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Required, TypedDict, Unpack

from langchain_core.runnables import RunnableConfig

from deepscout.agent.answer_node import AnswerStatus
from deepscout.agent.context import ContextManager, documents_in
from deepscout.agent.conversation import PriorTurn, opening
from deepscout.agent.graph import build_graph, sqlite_checkpointer
from deepscout.agent.options import ResearchInputError, ResearchOptions
from deepscout.agent.run_context import Event, RunContext
from deepscout.agent.state import ResearchState, SourceRecord, StepRecord
from deepscout.agent.step_trace import step_tokens
from deepscout.memory import repository
from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import Database, open_database, write_session
from deepscout.model_runtime.chat import ChatModel, GenerationCancelled, Usage, load_chat_model
from deepscout.settings import Settings
from deepscout.text.storable import unstorable_reason
from deepscout.tools.base import ToolContext
from deepscout.tools.quotas import ToolQuotas
from deepscout.tools.registry import build_tools
from deepscout.tools.retrieval import build_retriever

PROMPT_OVERHEAD_TOKENS = 450
"""Tokens kept free for the reflection and answer instructions and the structured-output schema."""


@dataclass
class Citation:
    n: int
    source_id: int
    title: str
    url: str | None


@dataclass
class ResearchResult:
    answer: str
    citations: list[Citation]
    """The sources the answer cites, in order of first citation."""
    sources: list[SourceRecord]
    """Every document read, numbered as cited (``[n]``) — listed even when the answer cites none; ``chars``
    is what of its text was in the model's context when it answered (0: dropped for the budget)."""
    trace: list[StepRecord]
    usage: RunUsage
    run_id: str
    thread_id: str
    status: AnswerStatus = "model"
    """``model`` (the model's answer) or ``fallback`` (sentences quoted from the sources, when the model
    gave no grounded answer)."""
    fallback_reason: str | None = None
    """Why the answer is a fallback."""
    stop_reason: str | None = None
    removed_citations: list[str] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RunUsage:
    """What one research run spent: the tokens of its model calls, its tool calls and rounds, wall time."""

    tokens: Usage
    tool_calls: int
    steps: int
    model_calls: int
    seconds: float

    @classmethod
    def of(cls, state: ResearchState, seconds: float) -> RunUsage:
        trace = state.get("trace", [])
        tokens = sum((step_tokens(step) for step in trace), Usage())
        return cls(
            tokens=tokens,
            tool_calls=state.get("tool_calls_used", 0),
            steps=state.get("step", 0),
            model_calls=sum(1 for step in trace if step["prompt_tokens"]),
            seconds=round(seconds, 3),
        )

    def as_dict(self) -> dict[str, Any]:
        """Flat counters, as the run's record stores them."""
        return {
            **self.tokens.as_dict(),
            "tool_calls": self.tool_calls,
            "steps": self.steps,
            "model_calls": self.model_calls,
            "seconds": self.seconds,
        }


def _source(record: SourceRecord, shown: dict[int, int]) -> SourceRecord:
    """A copy of ``record`` with the characters of it in the final context (``shown``, by ``n``);
    checkpoints written before sources carried ``doc_id`` lack the key."""
    return SourceRecord(
        n=record["n"],
        source_id=record["source_id"],
        doc_id=record.get("doc_id"),
        title=record["title"],
        url=record["url"],
        chars=shown.get(record["n"], 0),
    )


def _result(state: ResearchState, thread_id: str, seconds: float) -> ResearchResult:
    shown = {doc.n: len(doc.text) for _, doc in documents_in(state.get("transcript", []))}
    sources = [_source(record, shown) for record in state.get("sources", [])]
    by_n = {source["n"]: source for source in sources}
    citations = [
        Citation(n=n, source_id=by_n[n]["source_id"], title=by_n[n]["title"], url=by_n[n]["url"])
        for n in state.get("citations", [])
        if n in by_n
    ]
    return ResearchResult(
        answer=state.get("answer", ""),
        citations=citations,
        sources=sources,
        trace=list(state.get("trace", [])),
        usage=RunUsage.of(state, seconds),
        run_id=state["run_id"],
        thread_id=thread_id,
        status=state.get("answer_status", "model"),
        fallback_reason=state.get("fallback_reason"),
        stop_reason=state.get("stop_reason"),
        removed_citations=list(state.get("removed_citations", [])),
        dropped=[dict(record) for record in state.get("dropped", [])],
    )


def research(
    question: str,
    *,
    settings: Settings,
    options: ResearchOptions | None = None,
    model: ChatModel | None = None,
    thread_id: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    database: Database | None = None,
    history: Sequence[PriorTurn] = (),
    cancel: threading.Event | None = None,
) -> ResearchResult:
    """Research ``question`` and return the cited answer, the sources read, the trace and the usage.

    ``options`` says how (model spec, search mode, budgets, ...; default :class:`ResearchOptions`, whose
    model defaults to ``settings.model``). ``model`` is an already loaded :class:`ChatModel` to use instead
    of loading ``options.model`` (reused across runs). ``thread_id`` names the run's checkpoint thread:
    an unfinished thread is resumed, a finished one returns its result. ``on_event`` receives progress
    events (queries, sources, tokens...). ``database`` is an open database to use (default: opened from
    ``settings`` for the run). ``settings.web`` (timeouts, caps, allow/deny lists) applies when the search
    mode uses the web. ``history``: the thread's earlier turns, which a follow-up question builds on (they
    open the model's conversation; see ``conversation.py``). ``cancel``: set it to stop the run, also in
    the middle of a model call (which then raises ``GenerationCancelled``; the checkpoint keeps the run
    resumable).
    """
    started = time.monotonic()
    emit = on_event or (lambda event: None)
    options = options or ResearchOptions()
    spec = options.model or settings.model
    if model is not None and not isinstance(model, ChatModel):
        raise ResearchInputError(
            f"model must be a loaded ChatModel, not {type(model).__name__}; put a model spec in options.model"
        )
    question = " ".join(question.split())
    resume_requested = thread_id is not None
    thread_id = thread_id or uuid.uuid4().hex
    with ExitStack() as cleanup:
        checkpointer = sqlite_checkpointer(settings.home)
        cleanup.callback(checkpointer.conn.close)
        graph = build_graph(checkpointer)
        config: RunnableConfig = {"configurable": {"thread_id": thread_id}, "recursion_limit": 200}
        snapshot = graph.get_state(config)
        stored: ResearchState = snapshot.values  # type: ignore[assignment]
        # a run killed right after LangGraph stored its input-only checkpoint has no run id yet: start over
        resuming = "run_id" in stored
        # Time spent by earlier invocations of this thread (its checkpointed steps), so a resumed run
        # reports its whole latency rather than the last invocation's.
        earlier = sum(step["seconds"] for step in stored.get("trace", [])) if resuming else 0.0
        if resuming:
            if not snapshot.next and not snapshot.tasks:  # finished (a node done but not saved has a task)
                return _result(stored, thread_id, earlier)
            question = stored["question"]
        elif not question:
            if resume_requested:
                raise ResearchInputError(
                    f"no run with thread id {thread_id!r} to resume, and no question was given; check the "
                    "id printed when the run started, or ask a question"
                )
            raise ResearchInputError("the question is empty; ask something, e.g. 'Who directed Alien?'")
        elif (reason := unstorable_reason(question)) is not None:
            raise ResearchInputError(f"the question {reason}")
        db = database or open_database(settings)
        if database is None:
            cleanup.callback(db.dispose)
        corpus = CorpusIndex(db.session_factory)
        if options.search in ("local", "both"):
            corpus.require_documents()
        chat = model if model is not None else load_chat_model(spec, settings=settings)
        budget = options.budgets
        limit = budget.context_tokens(chat.context_window)
        deadline = started + budget.wall_time_s
        tool_context = ToolContext(
            session_factory=db.session_factory,
            corpus=corpus,
            settings=settings,
            quotas=ToolQuotas(max_calls=budget.max_tool_calls),
            collection=options.collection,
            deadline=deadline,
            retriever=build_retriever(options.retrieval, corpus, db.session_factory, settings.cache_dir),
        )
        tool_context.provenance.add_from_user_text(question)
        reserve = options.reflect_max_tokens + options.answer_max_tokens + PROMPT_OVERHEAD_TOKENS
        run_context = RunContext(
            model=chat,
            tools=build_tools(options.search, tool_context),
            tool_context=tool_context,
            options=options,
            context=ContextManager(chat, limit_tokens=limit, reserve_tokens=reserve),
            session_factory=db.session_factory,
            deadline=deadline,
            loop_deadline=deadline - options.answer_time_share * budget.wall_time_s,
            emit=emit,
            cancel=cancel or threading.Event(),
        )
        if resuming:
            run_id = stored["run_id"]
            emit({"type": "resume", "thread_id": thread_id, "run_id": run_id, "step": stored.get("step", 0)})
            graph_input: ResearchState | None = None
        else:
            with write_session(db.session_factory) as session:
                repository.get_or_create_thread(session, thread_id=thread_id, title=question[:200])
                run = repository.create_run(
                    session,
                    question=question,
                    settings={**options.model_dump(mode="json"), "model": spec},
                    manifest={"model": spec, "corpus": corpus.manifest(), "search": options.search},
                    sampling={"temperature": options.temperature},
                    thread_id=thread_id,
                )
                run_id = run.id
            emit({"type": "start", "thread_id": thread_id, "run_id": run_id, "question": question})
            graph_input = {
                "question": question,
                "run_id": run_id,
                "step": 0,
                "tool_calls_used": 0,
                "transcript": opening(question, history),
            }
        try:
            graph.invoke(graph_input, config, context=run_context)
        except BaseException as error:
            stopped = isinstance(error, (KeyboardInterrupt, GenerationCancelled))
            status = "interrupted" if stopped else "failed"
            with write_session(db.session_factory) as session:
                message = f"{type(error).__name__}: {error}"
                repository.finish_run(session, run_id=run_id, status=status, error=message)
            raise
        final: ResearchState = graph.get_state(config).values  # type: ignore[assignment]
        result = _result(final, thread_id, earlier + time.monotonic() - started)
        with write_session(db.session_factory) as session:
            repository.finish_run(session, run_id=run_id, status="succeeded", usage=result.usage.as_dict())
        return result


class StreamArguments(TypedDict, total=False):
    """The keyword arguments of :func:`research` that :func:`aresearch_stream` passes on (all but
    ``on_event``, which the stream takes)."""

    settings: Required[Settings]
    options: ResearchOptions | None
    model: ChatModel | None
    thread_id: str | None
    database: Database | None
    history: Sequence[PriorTurn]
    cancel: threading.Event | None


async def aresearch_stream(question: str, **arguments: Unpack[StreamArguments]) -> AsyncIterator[Event]:
    """Like :func:`research` (same arguments but ``on_event``), as an async stream of progress events
    ending with ``{"type": "result", "result": ResearchResult}``; an error in the run is raised from the
    iterator.

    The run itself executes in a worker thread (the embedded model computes on the CPU), so the event
    loop stays free while it works.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def push(event: Event) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    def work() -> None:
        try:
            result = research(question, on_event=push, **arguments)
            push({"type": "result", "result": result})
        except BaseException as error:  # handed to the consumer
            push({"type": "error", "error": error})  # raised by the consumer, never yielded

    worker = threading.Thread(target=work, name="deepscout-research", daemon=True)
    worker.start()
    while True:
        event = await events.get()
        if event["type"] == "error":
            raise event["error"]
        yield event
        if event["type"] == "result":
            break
    await asyncio.to_thread(worker.join)
