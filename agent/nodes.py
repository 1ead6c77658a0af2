"""The research graph's nodes: plan → act → read → reflect → (act | plan | answer).

Each node reads the state, does one job, records it (trace, database) and routes with a ``Command``.
What a node needs beyond the state (model, tools, context manager, deadlines, database) comes from the
run's :class:`RunContext`, handed to the graph as LangGraph's runtime context (never checkpointed).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.runtime import Runtime
from langgraph.types import Command
from sqlalchemy.orm import Session, sessionmaker

from deepscout.agent import prompts
from deepscout.agent.citations import resolve_citations
from deepscout.agent.context import (
    ContextManager,
    DocumentText,
    bm25_scores,
    documents_in,
    split_passages,
    terms,
)
from deepscout.agent.options import AgentSettings
from deepscout.agent.state import (
    HitRecord,
    QueryPlan,
    Reflection,
    ResearchState,
    SourceRecord,
    StepRecord,
    StopReason,
)
from deepscout.agent.structured import UsageRecorder, structured_call
from deepscout.memory import repository
from deepscout.memory.db import write_session
from deepscout.memory.tables import Step
from deepscout.model_runtime.chat import ChatModel, GenerationDeadlineExceeded, StructuredOutputError
from deepscout.tools.base import ToolContext
from deepscout.tools.registry import tools_with_role

logger = logging.getLogger(__name__)
Event = dict[str, Any]


@dataclass
class RunContext:
    """Run-scoped, non-checkpointed things the nodes use."""

    model: ChatModel
    tools: list[BaseTool]
    tool_context: ToolContext
    settings: AgentSettings
    context: ContextManager
    session_factory: sessionmaker[Session]
    deadline: float
    """``time.monotonic()`` when the wall-time budget ends (the answer's deadline)."""
    loop_deadline: float
    """When the search loop stops, leaving the rest of the wall time to the answer."""
    emit: Callable[[Event], None] = field(default=lambda event: None)


# --------------------------------------------------------------------------- helpers


_EXAMPLE_TERMS = frozenset(terms(" ".join(prompts.EXAMPLE_ENTITIES)))
"""The worked example's named entities (a reply naming them, unprompted, copied the example)."""

_META_TERMS = frozenset(
    terms("answer question source document passage text according based provided given found information")
)
"""Words about the task rather than the world: an answer made of these and the question's words says nothing
(measured on SmolLM2 over the demo corpus: 'The answer to the question "Who directed …?" is [1].')."""


def _compact(value: dict[str, Any]) -> str:
    """JSON as the worked example writes it (no spaces), for the model's own turns in the transcript."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _vocabulary(state: ResearchState, transcript: Sequence[BaseMessage]) -> set[str]:
    """Terms of the question and of the documents read."""
    words = set(terms(state["question"]))
    for _, doc in documents_in(transcript):
        words.update(terms(doc.title))
        words.update(terms(doc.text))
    return words


def _without_example(query: str, vocabulary: set[str]) -> str:
    """``query`` without the worked example's entities that the question and documents do not name.

    SmolLM2 often carries them into its own queries ("The Four Seasons is both a destination and a
    airport in the same state"), and full-text search then reads unrelated documents ("season")."""
    for entity in prompts.EXAMPLE_ENTITIES:
        if not set(terms(entity)) & vocabulary:
            query = re.sub(re.escape(entity), " ", query, flags=re.IGNORECASE)
    return " ".join(query.split())


def _clean_queries(
    queries: Sequence[str], done: Sequence[str], limit: int, vocabulary: set[str] | None = None
) -> list[str]:
    """Queries normalised, new, and rid of what was copied from the worked example."""
    seen = {q.casefold() for q in done}
    cleaned: list[str] = []
    for query in queries:
        text = " ".join(query.split()).strip(" \"'")
        if vocabulary is not None:
            text = _without_example(text, vocabulary)
        if not terms(text):  # punctuation or stopwords only, e.g. a stray "]}"
            continue
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            cleaned.append(text)
    return cleaned[:limit]


def _trace(
    state: ResearchState,
    node: str,
    started: float,
    usage: dict[str, Any] | None,
    tool_calls: int,
    **detail: Any,
) -> StepRecord:
    usage = usage or {}
    return {
        "step": state.get("step", 0),
        "node": node,
        "seconds": round(time.monotonic() - started, 4),
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "reused_tokens": int(usage.get("reused_tokens", 0)),
        "computed_tokens": int(usage.get("computed_tokens", 0)),
        "output_tokens": int(usage.get("output_tokens", 0)),
        "first_token_s": usage.get("first_token_s"),
        "tool_calls": tool_calls,
        "detail": detail,
    }


def _persist(
    run: RunContext, state: ResearchState, record: StepRecord, tool_calls: Sequence[dict[str, Any]] = ()
) -> None:
    """Store the step and its tool calls once: a step re-run after an interruption is not stored twice."""
    run_id = state.get("run_id")
    if run_id is None:
        return
    key = f"{len(state.get('trace', []))}:{record['node']}"
    usage = {
        "prompt_tokens": record["prompt_tokens"],
        "reused_tokens": record["reused_tokens"],
        "computed_tokens": record["computed_tokens"],
        "output_tokens": record["output_tokens"],
    }
    with write_session(run.session_factory) as session:
        existing = session.query(Step).filter(Step.run_id == run_id).all()
        if any(step.data.get("key") == key for step in existing):
            return
        step = repository.add_step(
            session,
            run_id=run_id,
            node=record["node"],
            data={"key": key, "round": record["step"], "seconds": record["seconds"], **record["detail"]},
            usage=usage,
        )
        for call in tool_calls:
            repository.add_tool_call(session, run_id=run_id, step_id=step.id, **call)


def _emit_usage(run: RunContext, node: str, record: StepRecord) -> None:
    if record["prompt_tokens"] or record["output_tokens"]:
        run.emit(
            {
                "type": "tokens",
                "node": node,
                "step": record["step"],
                "prompt_tokens": record["prompt_tokens"],
                "reused_tokens": record["reused_tokens"],
                "computed_tokens": record["computed_tokens"],
                "output_tokens": record["output_tokens"],
            }
        )


def _stop(reason: StopReason, run: RunContext) -> dict[str, Any]:
    run.emit({"type": "stop", "reason": reason})
    return {"stop_reason": reason}


def _run_tools(
    run: RunContext, calls: Sequence[tuple[BaseTool, dict[str, Any]]]
) -> list[tuple[ToolMessage | None, dict[str, Any]]]:
    """Invoke tool calls in parallel; returns (message or None on error, the database record) per call."""

    def invoke(item: tuple[BaseTool, dict[str, Any]]) -> tuple[ToolMessage | None, dict[str, Any]]:
        tool, args = item
        call_id = f"call_{uuid.uuid4().hex[:12]}"
        record: dict[str, Any] = {"name": tool.name, "arguments": args, "call_id": call_id}
        try:
            message = tool.invoke({"name": tool.name, "args": args, "id": call_id, "type": "tool_call"})
        except Exception as error:  # a failing tool is recorded and the run goes on
            logger.warning("tool %s failed: %s", tool.name, error)
            record.update(status="error", error=f"{type(error).__name__}: {error}")
            return None, record
        assert isinstance(message, ToolMessage)
        record["output"] = str(message.content)[:20_000]
        if message.status == "error":
            record.update(status="error", error=record["output"])
            return None, record
        return message, record

    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(calls)), thread_name_prefix="deepscout-tool") as pool:
        return list(pool.map(invoke, calls))


def _opening(question: str) -> list[BaseMessage]:
    """System prompt, worked example, question: the same prefix for every run but the last turn."""
    messages: list[BaseMessage] = [SystemMessage(content=prompts.SYSTEM_PROMPT)]
    for role, text in prompts.EXAMPLE_TURNS:
        messages.append(AIMessage(content=text) if role == "assistant" else HumanMessage(content=text))
    messages.append(HumanMessage(content=prompts.QUESTION.format(question=question)))
    return messages


def _focus(state: ResearchState) -> str:
    return " ".join([state["question"], *state.get("queries_done", []), *state.get("pending_queries", [])])


def _budget_left(run: RunContext, state: ResearchState) -> int:
    return run.settings.budgets.max_tool_calls - state.get("tool_calls_used", 0)


# --------------------------------------------------------------------------- nodes


def plan(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["act", "answer"]]:
    """Ask the model for search queries (structured output); fall back to the question itself."""
    run = runtime.context
    started = time.monotonic()
    transcript = list(state.get("transcript") or [])
    if not transcript:
        transcript = _opening(state["question"])
    limit = run.settings.queries_per_step
    instruction = HumanMessage(content=prompts.PLAN_INSTRUCTION.format(n=limit))
    usage: dict[str, Any] | None = None
    proposed: list[str] = []
    error: str | None = None
    out_of_time = time.monotonic() >= run.loop_deadline
    if not out_of_time:
        try:
            result, usage = structured_call(
                run.model,
                QueryPlan,
                [*transcript, instruction],
                max_tokens=run.settings.plan_max_tokens,
                deadline=run.loop_deadline,
            )
            proposed = result.queries
        except GenerationDeadlineExceeded:
            out_of_time = True
        except StructuredOutputError as exc:
            error = str(exc)
            logger.warning("planner gave no valid plan; searching the question itself: %s", exc)
    done = state.get("queries_done", [])
    queries = _clean_queries(proposed, done, limit, _vocabulary(state, transcript))
    if not done:
        # The first round also searches the question itself: full-text search on the whole question is a
        # strong baseline, and it keeps a poor plan from a small model from missing everything.
        queries += _clean_queries([state["question"]], queries, 1)
    queries = queries or _clean_queries([state["question"]], done, 1)
    record = _trace(state, "plan", started, usage, 0, queries=queries, proposed=proposed, error=error)
    _persist(run, state, record)
    _emit_usage(run, "plan", record)
    stop: dict[str, Any] = {}
    if out_of_time:
        # Out of time before anything was read: searching the question costs no model time.
        stop = _stop("wall_time", run)
        if state.get("sources") or not queries:
            return Command(goto="answer", update={"transcript": transcript, "trace": [record], **stop})
    if not queries:
        return Command(
            goto="answer", update={"transcript": transcript, "trace": [record], **_stop("no_queries", run)}
        )
    run.emit({"type": "queries", "step": state.get("step", 0) + 1, "queries": queries})
    transcript += [instruction, AIMessage(content=_compact({"queries": queries}))]
    update = {"transcript": transcript, "pending_queries": queries, "trace": [record], **stop}
    return Command(goto="act", update=update)


def act(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["read", "answer"]]:
    """Run the pending queries on every search tool, in parallel, within the tool-call budget."""
    run = runtime.context
    started = time.monotonic()
    step = state.get("step", 0) + 1
    queries = state.get("pending_queries", [])
    searchers = tools_with_role(run.tools, "search")
    calls = [
        (tool, {"query": query, "k": run.settings.hits_per_query}) for query in queries for tool in searchers
    ][: max(0, _budget_left(run, state))]
    if not calls:
        return Command(goto="answer", update={"step": step, **_stop("max_tool_calls", run)})
    results = _run_tools(run, calls)
    hits: list[HitRecord] = []
    records: list[dict[str, Any]] = []
    for (tool, args), (message, call_record) in zip(calls, results, strict=True):
        found = list(message.artifact or []) if message is not None else []
        call_record["source_ids"] = [hit["source_id"] for hit in found if hit.get("source_id")]
        records.append(call_record)
        for rank, hit in enumerate(found):
            hits.append(
                {
                    "query": str(args["query"]),
                    "tool": tool.name,
                    "rank": rank,
                    "score": float(hit.get("score", 0.0)),
                    "title": hit.get("title", ""),
                    "snippet": hit.get("snippet", ""),
                    "url": hit.get("url"),
                    "source_id": hit.get("source_id"),
                }
            )
        run.emit(
            {"type": "search", "step": step, "tool": tool.name, "query": args["query"], "hits": len(found)}
        )
    state_for_record: ResearchState = {**state, "step": step}
    record = _trace(state_for_record, "act", started, None, len(calls), queries=queries, hits=len(hits))
    _persist(run, state, record, records)
    return Command(
        goto="read",
        update={
            "step": step,
            "hits": hits,
            "queries_done": list(queries),
            "pending_queries": [],
            "tool_calls_used": state.get("tool_calls_used", 0) + len(calls),
            "trace": [record],
        },
    )


def _candidates(state: ResearchState, limit: int) -> list[HitRecord]:
    """Unread hits of this round, best first by reciprocal-rank fusion over queries and tools."""
    read_ids = {source["source_id"] for source in state.get("sources", [])}
    read_urls = {source["url"] for source in state.get("sources", []) if source["url"]}
    fused: dict[str, float] = {}
    best: dict[str, HitRecord] = {}
    for hit in state.get("hits", []):
        key = f"id:{hit['source_id']}" if hit["source_id"] is not None else f"url:{hit['url']}"
        if hit["source_id"] in read_ids or (hit["source_id"] is None and hit["url"] in read_urls):
            continue
        fused[key] = fused.get(key, 0.0) + 1.0 / (60 + hit["rank"])
        best.setdefault(key, hit)
    ranked = sorted(fused, key=lambda key: -fused[key])
    return [best[key] for key in ranked[:limit]]


def read(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["reflect", "answer"]]:
    """Read the best unread documents whole (in parallel) and place them in the context."""
    run = runtime.context
    started = time.monotonic()
    limit = min(run.settings.reads_per_step, max(0, _budget_left(run, state)))
    candidates = _candidates(state, limit)
    readers = tools_with_role(run.tools, "read")
    fetchers = tools_with_role(run.tools, "fetch")
    calls: list[tuple[BaseTool, dict[str, Any]]] = []
    for hit in candidates:
        if hit["source_id"] is not None and readers:
            args = {"source_id": hit["source_id"], "offset": 0, "length": run.settings.read_chars}
            calls.append((readers[0], args))
        elif hit["url"] and fetchers:
            calls.append((fetchers[0], {"url": hit["url"]}))
    results = _run_tools(run, calls)
    sources = list(state.get("sources", []))
    known = {source["source_id"] for source in sources}
    docs: list[DocumentText] = []
    records: list[dict[str, Any]] = []
    for message, call_record in results:
        records.append(call_record)
        if message is None or not message.artifact:
            continue
        artifact = message.artifact
        call_record["source_ids"] = [artifact["source_id"]]
        if artifact["source_id"] in known:
            continue
        known.add(artifact["source_id"])
        docs.append(
            DocumentText(
                n=len(sources) + len(docs) + 1,
                source_id=artifact["source_id"],
                title=artifact["title"],
                url=artifact["url"],
                text=artifact["text"],
            )
        )
    transcript = list(state.get("transcript", []))
    new_sources: list[SourceRecord] = []
    dropped = []
    if docs:
        placement = run.context.add_documents(transcript, docs, _focus(state))
        transcript, dropped = placement.transcript, placement.dropped
        for doc in docs:
            source: SourceRecord = {
                "n": doc.n,
                "source_id": doc.source_id,
                "title": doc.title,
                "url": doc.url,
                "chars": placement.kept_chars.get(doc.n, 0),
            }
            new_sources.append(source)
            run.emit({"type": "source", "step": state.get("step", 0), **source})
        for drop in dropped:
            run.emit({"type": "dropped", **drop})
    else:
        transcript.append(HumanMessage(content=prompts.NO_DOCUMENTS.format(step=state.get("step", 0))))
    record = _trace(
        state,
        "read",
        started,
        None,
        len(calls),
        read=[doc.source_id for doc in docs],
        dropped=dropped,
        context_tokens=run.context.count(transcript),
    )
    _persist(run, state, record, records)
    return Command(
        goto="reflect",
        update={
            "transcript": transcript,
            "sources": new_sources,
            "dropped": dropped,
            "tool_calls_used": state.get("tool_calls_used", 0) + len(calls),
            "trace": [record],
        },
    )


def reflect(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["act", "plan", "answer"]]:
    """Check the budgets, then ask the model whether the documents suffice and what to search next."""
    run = runtime.context
    started = time.monotonic()
    budgets = run.settings.budgets
    spent: StopReason | None = None
    if state.get("step", 0) >= budgets.max_steps:
        spent = "max_steps"
    elif _budget_left(run, state) <= 0:
        spent = "max_tool_calls"
    elif time.monotonic() >= run.loop_deadline:
        spent = "wall_time"
    if spent is not None:
        record = _trace(state, "reflect", started, None, 0, budget_spent=spent)
        _persist(run, state, record)
        return Command(goto="answer", update={"trace": [record], **_stop(spent, run)})
    transcript = list(state.get("transcript", []))
    done = state.get("queries_done", [])
    limit = run.settings.queries_per_step
    instruction = HumanMessage(
        content=prompts.REFLECT_INSTRUCTION.format(question=state["question"], n=limit, used="; ".join(done))
    )
    try:
        result, usage = structured_call(
            run.model,
            Reflection,
            [*transcript, instruction],
            max_tokens=run.settings.reflect_max_tokens,
            deadline=run.loop_deadline,
        )
    except GenerationDeadlineExceeded:
        record = _trace(state, "reflect", started, None, 0, budget_spent="wall_time")
        _persist(run, state, record)
        return Command(goto="answer", update={"trace": [record], **_stop("wall_time", run)})
    except StructuredOutputError as exc:
        logger.warning("reflection gave no valid output; planning again: %s", exc)
        record = _trace(state, "reflect", started, None, 0, error=str(exc))
        _persist(run, state, record)
        return Command(goto="plan", update={"trace": [record]})
    queries = _clean_queries(result.next_queries, done, limit, _vocabulary(state, transcript))
    shown = _compact({"enough": result.enough, "next_queries": queries})
    transcript += [instruction, AIMessage(content=shown)]
    record = _trace(state, "reflect", started, usage, 0, enough=result.enough, next_queries=queries)
    _persist(run, state, record)
    _emit_usage(run, "reflect", record)
    step = state.get("step", 0)
    run.emit({"type": "reflection", "step": step, "enough": result.enough, "queries": queries})
    update: dict[str, Any] = {"transcript": transcript, "trace": [record]}
    if result.enough:
        return Command(goto="answer", update={**update, **_stop("enough", run)})
    if queries:
        return Command(goto="act", update={**update, "pending_queries": queries})
    return Command(goto="plan", update=update)


def _ungrounded(
    text: str, state: ResearchState, transcript: Sequence[BaseMessage], min_share: float
) -> str | None:
    """Why the answer is not grounded in what was read, or None when it is.

    A small model sometimes writes the worked example's answer again (measured on SmolLM2 over HotpotQA:
    "The Four Seasons was directed by Antonio Vivaldi."), or an answer from nowhere."""
    words = set(terms(re.sub(r"\[\d+\]", " ", text)))
    if not words:
        return None
    vocabulary = _vocabulary(state, transcript)
    if words & _EXAMPLE_TERMS - vocabulary:
        return "its answer repeated the worked example"
    if words - _META_TERMS <= set(terms(state["question"])):
        return "its answer only repeated the question"
    if len(words & vocabulary) / len(words) < min_share:
        return "its answer used too few words of the question and the documents read"
    return None


def _fallback_answer(state: ResearchState, reason: str, limit: int = 3) -> str:
    """The most relevant passages of the sources read, each cited, when the model gave no answer."""
    transcript = state.get("transcript", [])
    pool = [(doc.n, passage) for _, doc in documents_in(transcript) for passage in split_passages(doc.text)]
    if not pool:
        return f"No answer: {reason}."
    scores = bm25_scores([p for _, p in pool], terms(_focus(state)))
    best = sorted(range(len(pool)), key=lambda i: -scores[i])[:limit]
    passages = "\n".join(f"- {pool[i][1][:400]} [{pool[i][0]}]" for i in sorted(best))
    return prompts.FALLBACK_ANSWER.format(reason=reason, passages=passages)


def answer(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["__end__"]]:
    """Write the cited answer (streamed), resolve its citations, and store it."""
    run = runtime.context
    started = time.monotonic()
    sources = state.get("sources", [])
    transcript = list(state.get("transcript", []))
    instruction = HumanMessage(content=prompts.ANSWER_INSTRUCTION.format(question=state["question"]))
    status: Literal["model", "fallback"] = "model"
    usage: dict[str, Any] | None = None
    first_token_at: float | None = None
    text = ""
    if not sources:
        text, status = _fallback_answer(state, "the searches found no documents"), "fallback"
    else:
        placement = run.context.shrink_to(
            transcript, [instruction], run.settings.answer_max_tokens, _focus(state)
        )
        transcript = placement.transcript
        for drop in placement.dropped:
            run.emit({"type": "dropped", **drop})
        recorder = UsageRecorder()
        parts: list[str] = []
        try:
            for chunk in run.model.stream(
                [*transcript, instruction],
                {"callbacks": [recorder]},
                deadline=run.deadline,
                max_new_tokens=run.settings.answer_max_tokens,
            ):
                delta = chunk.content if isinstance(chunk.content, str) else ""
                if delta:
                    if first_token_at is None:
                        first_token_at = time.monotonic()
                    parts.append(delta)
                    run.emit({"type": "answer_token", "text": delta})
            text = "".join(parts).strip()
            usage = recorder.usage()
        except GenerationDeadlineExceeded:
            usage = recorder.usage()
            reason = "the wall-time budget ran out while it was writing"
            text, status = _fallback_answer(state, reason), "fallback"
            run.emit({"type": "stop", "reason": "wall_time"})
        if status == "model" and not text:
            text, status = _fallback_answer(state, "it wrote nothing"), "fallback"
        elif status == "model" and (
            problem := _ungrounded(text, state, transcript, run.settings.min_grounding)
        ):
            logger.warning("answer not grounded in the documents, replaced by passages: %r", text)
            text, status = _fallback_answer(state, problem), "fallback"
    resolved = resolve_citations(text, [source["n"] for source in sources])
    for marker in resolved.removed:
        run.emit({"type": "citation_removed", "marker": marker})
    record = _trace(
        state,
        "answer",
        started,
        usage,
        0,
        status=status,
        cited=resolved.cited,
        removed_citations=resolved.removed,
        answer_first_token_s=None if first_token_at is None else round(first_token_at - started, 4),
    )
    _emit_usage(run, "answer", record)
    run_id = state.get("run_id")
    if run_id is not None:
        _persist(run, state, record)
        by_n = {source["n"]: source for source in sources}
        with write_session(run.session_factory) as session:
            repository.save_answer(
                session,
                run_id=run_id,
                text=resolved.text,
                citations=[{"n": n, "source_id": by_n[n]["source_id"]} for n in resolved.cited],
                meta={
                    "status": status,
                    "removed_citations": resolved.removed,
                    "stop_reason": state.get("stop_reason"),
                },
            )
    run.emit({"type": "answer", "text": resolved.text, "citations": resolved.cited, "status": status})
    return Command(
        goto="__end__",
        update={
            "transcript": [*transcript, instruction, AIMessage(content=text)],
            "answer": resolved.text,
            "citations": resolved.cited,
            "removed_citations": resolved.removed,
            "answer_status": status,
            "trace": [record],
        },
    )
