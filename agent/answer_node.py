"""The graph's last node: write the cited answer (streamed), resolve its citations, and store it.

When the model writes nothing, runs out of wall time, or writes an answer not grounded in the documents
read, the answer is the one or two sentences read that best answer the question, cited
(:func:`grounding.fallback_answer`); its status says so, and the reason is kept beside it.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.runtime import Runtime
from langgraph.types import Command

from deepscout.agent import prompts
from deepscout.agent.context import focus_text
from deepscout.agent.grounding import fallback_answer, ungrounded
from deepscout.agent.run_context import RunContext
from deepscout.agent.state import ResearchState
from deepscout.agent.step_trace import emit_usage, persist_step, step_record
from deepscout.agent.structured import CallsUsage, UsageRecorder
from deepscout.memory import repository
from deepscout.memory.db import write_session
from deepscout.model_runtime.chat import GenerationDeadlineExceeded
from deepscout.text.citations import resolve_citations

logger = logging.getLogger(__name__)

AnswerStatus = Literal["model", "fallback"]


Written = tuple[str, AnswerStatus, CallsUsage, float | None, str | None]
"""The answer's text and status, the model's usage, when its first token came, why it fell back."""


def _write(
    run: RunContext, state: ResearchState, transcript: list[BaseMessage], instruction: HumanMessage
) -> Written:
    """The model's answer streamed as ``answer_token`` events, or the fallback sentences; with the usage,
    the time of the first token and the reason for a fallback."""
    recorder = UsageRecorder()
    parts: list[str] = []
    first_token_at: float | None = None
    try:
        for chunk in run.model.stream(
            [*transcript, instruction],
            {"callbacks": [recorder]},
            deadline=run.deadline,
            cancel=run.cancel,
            max_new_tokens=run.options.answer_max_tokens,
        ):
            delta = chunk.content if isinstance(chunk.content, str) else ""
            if delta:
                if first_token_at is None:
                    first_token_at = time.monotonic()
                parts.append(delta)
                run.emit({"type": "answer_token", "text": delta})
    except GenerationDeadlineExceeded:
        run.emit({"type": "stop", "reason": "wall_time"})
        reason = "the wall-time budget ran out while it was writing"
        return fallback_answer(state, reason), "fallback", recorder.usage(), first_token_at, reason
    text = "".join(parts).strip()
    problem = (
        "it wrote nothing" if not text else ungrounded(text, state, transcript, run.options.min_grounding)
    )
    if problem:
        logger.warning("answer replaced by the best sentences read (%s): %r", problem, text)
        return fallback_answer(state, problem), "fallback", recorder.usage(), first_token_at, problem
    return text, "model", recorder.usage(), first_token_at, None


def answer(state: ResearchState, runtime: Runtime[RunContext]) -> Command[Literal["__end__"]]:
    """Write the cited answer (streamed), resolve its citations, and store it."""
    run = runtime.context
    started = time.monotonic()
    sources = state.get("sources", [])
    transcript = list(state.get("transcript", []))
    instruction = HumanMessage(content=prompts.ANSWER_INSTRUCTION.format(question=state["question"]))
    usage: CallsUsage | None = None
    first_token_at: float | None = None
    status: AnswerStatus
    reason: str | None = None
    if not sources:
        reason = "the searches found no documents"
        text, status = fallback_answer(state, reason), "fallback"
    else:
        placement = run.context.shrink_to(
            transcript, [instruction], run.options.answer_max_tokens, focus_text(state)
        )
        transcript = placement.transcript
        for drop in placement.dropped:
            run.emit({"type": "dropped", **drop})
        text, status, usage, first_token_at, reason = _write(run, state, transcript, instruction)
    resolved = resolve_citations(text, [source["n"] for source in sources])
    for marker in resolved.removed:
        run.emit({"type": "citation_removed", "marker": marker})
    record = step_record(
        state,
        "answer",
        started,
        usage,
        0,
        status=status,
        fallback_reason=reason,
        cited=resolved.cited,
        removed_citations=resolved.removed,
        answer_first_token_s=None if first_token_at is None else round(first_token_at - started, 4),
    )
    emit_usage(run, "answer", record)
    run_id = state.get("run_id")
    if run_id is not None:
        persist_step(run, state, record)
        by_n = {source["n"]: source for source in sources}
        with write_session(run.session_factory) as session:
            repository.save_answer(
                session,
                run_id=run_id,
                text=resolved.text,
                citations=[{"n": n, "source_id": by_n[n]["source_id"]} for n in resolved.cited],
                meta={
                    "status": status,
                    "fallback_reason": reason,
                    "removed_citations": resolved.removed,
                    "stop_reason": state.get("stop_reason"),
                },
            )
    run.emit(
        {
            "type": "answer",
            "text": resolved.text,
            "citations": resolved.cited,
            "status": status,
            "fallback_reason": reason,
        }
    )
    return Command(
        goto="__end__",
        update={
            "transcript": [*transcript, instruction, AIMessage(content=text)],
            "answer": resolved.text,
            "citations": resolved.cited,
            "removed_citations": resolved.removed,
            "answer_status": status,
            "fallback_reason": reason,
            "trace": [record],
        },
    )
