"""The research loop's nodes: plan → act → read → reflect → (act | answer).

Each node reads the state, does one job, records it (:mod:`.step_trace`) and routes with a ``Command``.
What a node needs beyond the state (model, tools, context manager, deadlines, database) comes from the
run's :class:`~deepscout.agent.run_context.RunContext`, handed to the graph as LangGraph's runtime context
(never checkpointed). Tool calls run through :mod:`.tool_runner`; the checks that keep a small model's
queries tied to the run are in :mod:`.grounding`; the last node, ``answer``, is in :mod:`.answer_node`.

The first round searches the question and reads its top results (what the RAG baseline reads); each
later round searches the bridge entities of what was read (:mod:`.followup`) and what the model proposes
(decoded under the query grammar, :data:`.state.QUERY_PATTERN`), and reads the best new documents. The
loop goes on while there are new things to search (bridge entities not tried yet, on-topic proposals) and
the budgets (rounds, documents, tool calls, wall time) allow; the model's own opinion that it has enough
is not asked (a small model says so after any round).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from deepscout.agent import prompts
from deepscout.agent.context import DocumentText, focus_text
from deepscout.agent.conversation import opening
from deepscout.agent.followup import bridges, follow_up_queries
from deepscout.agent.grounding import clean_queries, vocabulary
from deepscout.agent.run_context import RunContext
from deepscout.agent.search_rounds import (
    MODEL_TIER,
    RUN_TIER,
    candidates,
    on_topic,
    query_limit,
    question_query,
    read_passages,
    reads_this_round,
)
from deepscout.agent.state import (
    HitRecord,
    QueryPlan,
    Reflection,
    ResearchState,
    SourceRecord,
    StopReason,
)
from deepscout.agent.step_trace import emit_usage, record_step, stop
from deepscout.agent.structured import CallsUsage, structured_call
from deepscout.agent.tool_runner import ToolCallSpec, run_tools
from deepscout.model_runtime.chat import GenerationDeadlineExceeded, StructuredOutputError
from deepscout.tools.registry import tools_with_role

logger = logging.getLogger(__name__)


def _compact(value: dict[str, Any]) -> str:
    """JSON as the worked example writes it (no spaces), for the model's own turns in the transcript."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _budget_left(run: RunContext, state: ResearchState) -> int:
    return run.options.budgets.max_tool_calls - state.get("tool_calls_used", 0)


PROPOSAL_TIME_SHARE = 0.5
"""Most of the loop's time left that one call for the model's query proposals may take: the run's own
queries of the round still get searched and read when the model is slow."""


def _proposals(
    run: RunContext,
    schema: type[QueryPlan] | type[Reflection],
    transcript: list[BaseMessage],
    instruction: HumanMessage,
    max_tokens: int,
) -> tuple[list[str], CallsUsage | None, str | None]:
    """The model's proposed queries (decoded under the query grammar), its usage, and why it proposed
    none (no valid output, or its share of the loop's time ran out)."""
    now = time.monotonic()
    if run.options.queries_per_step == 0 or now >= run.loop_deadline:
        return [], None, None
    deadline = now + PROPOSAL_TIME_SHARE * (run.loop_deadline - now)
    try:
        result, usage = structured_call(
            run.model,
            schema,
            [*transcript, instruction],
            max_tokens=max_tokens,
            deadline=deadline,
            cancel=run.cancel,
        )
    except GenerationDeadlineExceeded:
        return [], None, "its share of the loop's time ran out"
    except StructuredOutputError as exc:
        logger.warning("the model proposed no valid queries: %s", exc)
        return [], None, str(exc)
    proposed = result.queries if isinstance(result, QueryPlan) else result.next_queries
    return list(proposed), usage, None


def plan(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["act", "answer"]]:
    """The first round's queries: the question itself (shortened to the search tools' limit), then the
    model's proposals."""
    run = runtime.context
    started = time.monotonic()
    transcript = list(state.get("transcript") or []) or opening(state["question"])
    limit = run.options.queries_per_step
    instruction = HumanMessage(content=prompts.PLAN_INSTRUCTION.format(n=max(1, limit)))
    proposed, usage, error = _proposals(run, QueryPlan, transcript, instruction, run.options.plan_max_tokens)
    own = clean_queries(
        [question_query(state["question"], query_limit(tools_with_role(run.tools, "search")))], [], 1
    )
    known = vocabulary(state, transcript)
    model_queries = on_topic(clean_queries(proposed, own, limit, known), state["question"], [])
    queries = own + model_queries
    record = record_step(run, state, "plan", started, usage, queries=queries, proposed=proposed, error=error)
    emit_usage(run, "plan", record)
    # Out of the loop's time before anything was read: searching the question costs no model time.
    stopped = stop("wall_time", run) if time.monotonic() >= run.loop_deadline else {}
    if not queries:
        return Command(
            goto="answer", update={"transcript": transcript, "trace": [record], **stop("no_queries", run)}
        )
    run.emit({"type": "queries", "step": state.get("step", 0) + 1, "queries": queries})
    if usage is not None:
        transcript += [instruction, AIMessage(content=_compact({"queries": model_queries}))]
    update = {
        "transcript": transcript,
        "pending_queries": queries,
        "pending_tiers": [RUN_TIER] * len(own) + [MODEL_TIER] * len(model_queries),
        "trace": [record],
        **stopped,
    }
    return Command(goto="act", update=update)


def act(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["read", "answer"]]:
    """Run the pending queries on every search tool, in parallel, leaving the tool-call budget room for
    the round's reads."""
    run = runtime.context
    started = time.monotonic()
    step = state.get("step", 0) + 1
    queries = state.get("pending_queries", [])
    tiers = state.get("pending_tiers") or [RUN_TIER] * len(queries)
    searchers = tools_with_role(run.tools, "search")
    reads = reads_this_round(run.options, {**state, "step": step})
    room = max(1, _budget_left(run, state) - reads)
    calls: list[ToolCallSpec] = [
        (tool, {"query": query, "k": run.options.hits_per_query}) for query in queries for tool in searchers
    ][: min(room, max(0, _budget_left(run, state)))]
    if not calls:
        return Command(goto="answer", update={"step": step, **stop("max_tool_calls", run)})
    tier_of = dict(zip(queries, tiers, strict=False))
    hits: list[HitRecord] = []
    records: list[dict[str, Any]] = []
    for (tool, args), (message, call_record) in zip(calls, run_tools(calls, run.deadline), strict=True):
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
                    "tier": tier_of.get(str(args["query"]), RUN_TIER),
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
            "pending_tiers": [],
            "tool_calls_used": state.get("tool_calls_used", 0) + len(calls),
            "trace": [record],
        },
    )


def _read_calls(run: RunContext, chosen: list[HitRecord]) -> list[ToolCallSpec]:
    """A read of each stored candidate, a fetch of each web result not stored yet."""
    readers = tools_with_role(run.tools, "read")
    fetchers = tools_with_role(run.tools, "fetch")
    calls: list[ToolCallSpec] = []
    for hit in chosen:
        if hit["source_id"] is not None and readers:
            args = {"source_id": hit["source_id"], "offset": 0, "length": run.options.read_chars}
            calls.append((readers[0], args))
        elif hit["url"] and fetchers:
            calls.append((fetchers[0], {"url": hit["url"]}))
    return calls


def read(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["reflect", "answer"]]:
    """Read the round's best unread documents whole (in parallel) and place them in the context."""
    run = runtime.context
    started = time.monotonic()
    limit = min(reads_this_round(run.options, state), max(0, _budget_left(run, state)))
    calls = _read_calls(run, candidates(state, limit))
    sources = list(state.get("sources", []))
    known = {source["source_id"] for source in sources}
    docs: list[DocumentText] = []
    records: list[dict[str, Any]] = []
    for message, call_record in run_tools(calls, run.deadline):
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
    if len(state.get("sources", [])) >= budgets.max_documents:
        return "max_documents"
    if _budget_left(run, state) <= 1:  # a search and a read at least
        return "max_tool_calls"
    if time.monotonic() >= run.loop_deadline:
        return "wall_time"
    return None


def reflect(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["act", "answer"]]:
    """Decide whether to search again (budgets left and the last round found new documents) and what:
    the bridge entities of what was read, with the unresolved part of the question, then the model's
    proposals that stay on the question's topic."""
    run = runtime.context
    started = time.monotonic()
    spent = _budget_spent(run, state)
    if spent is not None:
        record = record_step(run, state, "reflect", started, budget_spent=spent)
        return Command(goto="answer", update={"trace": [record], **stop(spent, run)})
    transcript = list(state.get("transcript", []))
    done = state.get("queries_done", [])
    question = state["question"]
    passages = read_passages(transcript)
    own = follow_up_queries(question, passages, done, run.options.follow_ups_per_step)
    limit = run.options.queries_per_step
    instruction = HumanMessage(
        content=prompts.REFLECT_INSTRUCTION.format(question=question, n=max(1, limit), used="; ".join(done))
    )
    proposed, usage, error = _proposals(
        run, Reflection, transcript, instruction, run.options.reflect_max_tokens
    )
    names = [bridge.name for bridge in bridges(question, passages)]
    model_queries = on_topic(
        clean_queries(proposed, [*done, *own], limit, vocabulary(state, transcript)), question, names
    )
    if usage is not None:
        transcript += [instruction, AIMessage(content=_compact({"next_queries": model_queries}))]
    queries = own + model_queries
    record = record_step(
        run,
        state,
        "reflect",
        started,
        usage,
        follow_ups=own,
        proposed=proposed,
        next_queries=queries,
        error=error,
    )
    emit_usage(run, "reflect", record)
    run.emit({"type": "reflection", "step": state.get("step", 0), "queries": queries})
    update: dict[str, Any] = {"transcript": transcript, "trace": [record]}
    if time.monotonic() >= run.loop_deadline:
        return Command(goto="answer", update={**update, **stop("wall_time", run)})
    if not queries:  # no new document last round is no reason to stop while untried bridges remain
        return Command(goto="answer", update={**update, **stop("no_new_evidence", run)})
    tiers = [RUN_TIER] * len(own) + [MODEL_TIER] * len(model_queries)
    return Command(goto="act", update={**update, "pending_queries": queries, "pending_tiers": tiers})
