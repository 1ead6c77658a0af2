"""The research loop's nodes: plan → act → read → reflect → (act | plan | answer).

Each node reads the state, does one job, records it (:mod:`.step_trace`) and routes with a ``Command``.
What a node needs beyond the state (model, tools, context manager, deadlines, database) comes from the
run's :class:`~deepscout.agent.run_context.RunContext`, handed to the graph as LangGraph's runtime context
(never checkpointed). Tool calls run through :mod:`.tool_runner`; the checks that keep a small model's
queries tied to the run are in :mod:`.grounding`; the last node, ``answer``, is in :mod:`.answer_node`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from deepscout.agent import prompts
from deepscout.agent.context import DocumentText, focus_text
from deepscout.agent.grounding import clean_queries, vocabulary
from deepscout.agent.run_context import RunContext
from deepscout.agent.state import (
    HitRecord,
    QueryPlan,
    Reflection,
    ResearchState,
    SourceRecord,
    StopReason,
)
from deepscout.agent.step_trace import emit_usage, record_step, stop
from deepscout.agent.structured import CallsUsage, Schema, structured_call
from deepscout.agent.tool_runner import ToolCallSpec, run_tools
from deepscout.model_runtime.chat import GenerationDeadlineExceeded, StructuredOutputError
from deepscout.text.fusion import reciprocal_rank_fusion
from deepscout.tools.registry import tools_with_role

logger = logging.getLogger(__name__)


def _compact(value: dict[str, Any]) -> str:
    """JSON as the worked example writes it (no spaces), for the model's own turns in the transcript."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _opening(question: str) -> list[BaseMessage]:
    """System prompt, worked example, question: the same prefix for every run but the last turn."""
    messages: list[BaseMessage] = [SystemMessage(content=prompts.SYSTEM_PROMPT)]
    for role, text in prompts.EXAMPLE_TURNS:
        messages.append(AIMessage(content=text) if role == "assistant" else HumanMessage(content=text))
    messages.append(HumanMessage(content=prompts.QUESTION.format(question=question)))
    return messages


def _budget_left(run: RunContext, state: ResearchState) -> int:
    return run.options.budgets.max_tool_calls - state.get("tool_calls_used", 0)


def _ask(
    run: RunContext,
    schema: type[Schema],
    transcript: list[BaseMessage],
    instruction: HumanMessage,
    max_tokens: int,
) -> tuple[Schema, CallsUsage]:
    """The loop's structured model call (plan, reflection), bounded by the loop's deadline."""
    return structured_call(
        run.model, schema, [*transcript, instruction], max_tokens=max_tokens, deadline=run.loop_deadline
    )


def plan(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["act", "answer"]]:
    """Ask the model for search queries (structured output); fall back to the question itself."""
    run = runtime.context
    started = time.monotonic()
    transcript = list(state.get("transcript") or []) or _opening(state["question"])
    limit = run.options.queries_per_step
    instruction = HumanMessage(content=prompts.PLAN_INSTRUCTION.format(n=limit))
    usage: CallsUsage | None = None
    proposed: list[str] = []
    error: str | None = None
    out_of_time = time.monotonic() >= run.loop_deadline
    if not out_of_time:
        try:
            result, usage = _ask(run, QueryPlan, transcript, instruction, run.options.plan_max_tokens)
            proposed = result.queries
        except GenerationDeadlineExceeded:
            out_of_time = True
        except StructuredOutputError as exc:
            error = str(exc)
            logger.warning("planner gave no valid plan; searching the question itself: %s", exc)
    done = state.get("queries_done", [])
    queries = clean_queries(proposed, done, limit, vocabulary(state, transcript))
    if not done:
        # The first round also searches the question itself: full-text search on the whole question is a
        # strong baseline, and it keeps a poor plan from a small model from missing everything.
        queries += clean_queries([state["question"]], queries, 1)
    queries = queries or clean_queries([state["question"]], done, 1)
    record = record_step(run, state, "plan", started, usage, queries=queries, proposed=proposed, error=error)
    emit_usage(run, "plan", record)
    stopped: dict[str, Any] = {}
    if out_of_time:
        # Out of time before anything was read: searching the question costs no model time.
        stopped = stop("wall_time", run)
        if state.get("sources") or not queries:
            return Command(goto="answer", update={"transcript": transcript, "trace": [record], **stopped})
    if not queries:
        return Command(
            goto="answer", update={"transcript": transcript, "trace": [record], **stop("no_queries", run)}
        )
    run.emit({"type": "queries", "step": state.get("step", 0) + 1, "queries": queries})
    transcript += [instruction, AIMessage(content=_compact({"queries": queries}))]
    update = {"transcript": transcript, "pending_queries": queries, "trace": [record], **stopped}
    return Command(goto="act", update=update)


def act(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["read", "answer"]]:
    """Run the pending queries on every search tool, in parallel, within the tool-call budget."""
    run = runtime.context
    started = time.monotonic()
    step = state.get("step", 0) + 1
    queries = state.get("pending_queries", [])
    searchers = tools_with_role(run.tools, "search")
    calls: list[ToolCallSpec] = [
        (tool, {"query": query, "k": run.options.hits_per_query}) for query in queries for tool in searchers
    ][: max(0, _budget_left(run, state))]
    if not calls:
        return Command(goto="answer", update={"step": step, **stop("max_tool_calls", run)})
    hits: list[HitRecord] = []
    records: list[dict[str, Any]] = []
    for (tool, args), (message, call_record) in zip(calls, run_tools(calls), strict=True):
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
    stepped: ResearchState = {**state, "step": step}
    record = record_step(run, stepped, "act", started, tool_calls=records, queries=queries, hits=len(hits))
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
    ranked: list[tuple[str, int]] = []
    best: dict[str, HitRecord] = {}
    for hit in state.get("hits", []):
        if hit["source_id"] in read_ids or (hit["source_id"] is None and hit["url"] in read_urls):
            continue
        key = f"id:{hit['source_id']}" if hit["source_id"] is not None else f"url:{hit['url']}"
        ranked.append((key, hit["rank"] + 1))
        best.setdefault(key, hit)
    return [best[key] for key, _ in reciprocal_rank_fusion(ranked)[:limit]]


def _read_calls(run: RunContext, candidates: list[HitRecord]) -> list[ToolCallSpec]:
    """A read of each stored candidate, a fetch of each web result not stored yet."""
    readers = tools_with_role(run.tools, "read")
    fetchers = tools_with_role(run.tools, "fetch")
    calls: list[ToolCallSpec] = []
    for hit in candidates:
        if hit["source_id"] is not None and readers:
            args = {"source_id": hit["source_id"], "offset": 0, "length": run.options.read_chars}
            calls.append((readers[0], args))
        elif hit["url"] and fetchers:
            calls.append((fetchers[0], {"url": hit["url"]}))
    return calls


def read(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["reflect", "answer"]]:
    """Read the best unread documents whole (in parallel) and place them in the context."""
    run = runtime.context
    started = time.monotonic()
    limit = min(run.options.reads_per_step, max(0, _budget_left(run, state)))
    calls = _read_calls(run, _candidates(state, limit))
    sources = list(state.get("sources", []))
    known = {source["source_id"] for source in sources}
    docs: list[DocumentText] = []
    records: list[dict[str, Any]] = []
    for message, call_record in run_tools(calls):
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
                doc_id=artifact.get("doc_id"),
            )
        )
    transcript = list(state.get("transcript", []))
    new_sources: list[SourceRecord] = []
    dropped = []
    if docs:
        placement = run.context.add_documents(transcript, docs, focus_text(state))
        transcript, dropped = placement.transcript, placement.dropped
        for doc in docs:
            source: SourceRecord = {
                "n": doc.n,
                "source_id": doc.source_id,
                "doc_id": doc.doc_id,
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
    record = record_step(
        run,
        state,
        "read",
        started,
        tool_calls=records,
        read=[doc.source_id for doc in docs],
        dropped=dropped,
        context_tokens=run.context.count(transcript),
    )
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


def _budget_spent(run: RunContext, state: ResearchState) -> StopReason | None:
    budgets = run.options.budgets
    if state.get("step", 0) >= budgets.max_steps:
        return "max_steps"
    if _budget_left(run, state) <= 0:
        return "max_tool_calls"
    if time.monotonic() >= run.loop_deadline:
        return "wall_time"
    return None


def reflect(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["act", "plan", "answer"]]:
    """Check the budgets, then ask the model whether the documents suffice and what to search next."""
    run = runtime.context
    started = time.monotonic()
    spent = _budget_spent(run, state)
    if spent is not None:
        record = record_step(run, state, "reflect", started, budget_spent=spent)
        return Command(goto="answer", update={"trace": [record], **stop(spent, run)})
    transcript = list(state.get("transcript", []))
    done = state.get("queries_done", [])
    limit = run.options.queries_per_step
    instruction = HumanMessage(
        content=prompts.REFLECT_INSTRUCTION.format(question=state["question"], n=limit, used="; ".join(done))
    )
    try:
        result, usage = _ask(run, Reflection, transcript, instruction, run.options.reflect_max_tokens)
    except GenerationDeadlineExceeded:
        record = record_step(run, state, "reflect", started, budget_spent="wall_time")
        return Command(goto="answer", update={"trace": [record], **stop("wall_time", run)})
    except StructuredOutputError as exc:
        logger.warning("reflection gave no valid output; planning again: %s", exc)
        record = record_step(run, state, "reflect", started, error=str(exc))
        return Command(goto="plan", update={"trace": [record]})
    queries = clean_queries(result.next_queries, done, limit, vocabulary(state, transcript))
    shown = _compact({"enough": result.enough, "next_queries": queries})
    transcript += [instruction, AIMessage(content=shown)]
    record = record_step(run, state, "reflect", started, usage, enough=result.enough, next_queries=queries)
    emit_usage(run, "reflect", record)
    step = state.get("step", 0)
    run.emit({"type": "reflection", "step": step, "enough": result.enough, "queries": queries})
    update: dict[str, Any] = {"transcript": transcript, "trace": [record]}
    if result.enough:
        return Command(goto="answer", update={**update, **stop("enough", run)})
    if queries:
        return Command(goto="act", update={**update, "pending_queries": queries})
    return Command(goto="plan", update=update)
