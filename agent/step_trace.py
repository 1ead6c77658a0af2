"""Recording what each node did: the trace record kept in the state, the step and its tool calls stored
through the memory repository (once, even when a node re-runs after an interruption), the token events
and the stop event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from deepscout.agent.run_context import RunContext
from deepscout.agent.state import ResearchState, StepRecord, StopReason
from deepscout.agent.structured import CallsUsage
from deepscout.memory import repository
from deepscout.memory.db import write_session
from deepscout.model_runtime.chat import Usage


def step_tokens(record: StepRecord) -> Usage:
    """The tokens a step's model calls spent, as its trace record keeps them."""
    return Usage(
        prompt_tokens=record["prompt_tokens"],
        reused_tokens=record["reused_tokens"],
        computed_tokens=record["computed_tokens"],
        output_tokens=record["output_tokens"],
    )


def step_record(
    state: ResearchState,
    node: str,
    started: float,
    usage: CallsUsage | None,
    tool_calls: int,
    **detail: Any,
) -> StepRecord:
    """The trace record of ``node``'s work since ``started`` (``time.monotonic()``)."""
    usage = usage or CallsUsage(Usage())
    tokens = usage.tokens
    return {
        "step": state.get("step", 0),
        "node": node,
        "seconds": round(time.monotonic() - started, 4),
        "prompt_tokens": tokens.prompt_tokens,
        "reused_tokens": tokens.reused_tokens,
        "computed_tokens": tokens.computed_tokens,
        "output_tokens": tokens.output_tokens,
        "first_token_s": usage.first_token_s,
        "tool_calls": tool_calls,
        "detail": detail,
    }


def persist_step(
    run: RunContext, state: ResearchState, record: StepRecord, tool_calls: Sequence[dict[str, Any]] = ()
) -> None:
    """Store the step and its tool calls once: a step re-run after an interruption is not stored twice."""
    run_id = state.get("run_id")
    if run_id is None:
        return
    key = f"{len(state.get('trace', []))}:{record['node']}"
    with write_session(run.session_factory) as session:
        if repository.find_step(session, run_id=run_id, key=key) is not None:
            return
        step = repository.add_step(
            session,
            run_id=run_id,
            node=record["node"],
            data={"key": key, "round": record["step"], "seconds": record["seconds"], **record["detail"]},
            usage=step_tokens(record).as_dict(),
        )
        for call in tool_calls:
            repository.add_tool_call(session, run_id=run_id, step_id=step.id, **call)


def record_step(
    run: RunContext,
    state: ResearchState,
    node: str,
    started: float,
    usage: CallsUsage | None = None,
    *,
    tool_calls: Sequence[dict[str, Any]] = (),
    **detail: Any,
) -> StepRecord:
    """:func:`step_record` and :func:`persist_step` in one: the record of a step that made ``tool_calls``."""
    record = step_record(state, node, started, usage, len(tool_calls), **detail)
    persist_step(run, state, record, tool_calls)
    return record


def emit_usage(run: RunContext, node: str, record: StepRecord) -> None:
    """A ``tokens`` event for a step that called the model."""
    if record["prompt_tokens"] or record["output_tokens"]:
        run.emit({"type": "tokens", "node": node, "step": record["step"], **step_tokens(record).as_dict()})


def stop(reason: StopReason, run: RunContext) -> dict[str, Any]:
    """Announce why the loop stops; the state update that records it."""
    run.emit({"type": "stop", "reason": reason})
    return {"stop_reason": reason}
