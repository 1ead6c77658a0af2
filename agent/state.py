"""The research graph's state (checkpointed: plain JSON-able values and LangChain messages only),
its reducers, and the structured outputs asked of the model.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.messages import BaseMessage
from pydantic import BaseModel, ConfigDict, Field

# --------------------------------------------------------------------------- structured model outputs


Query = Annotated[str, Field(min_length=3, max_length=80)]
"""A search query: a few keywords (the lower bound stops a small model from writing empty strings)."""


class QueryPlan(BaseModel):
    """The planner's output: short keyword queries, one fact each."""

    model_config = ConfigDict(extra="forbid")

    queries: list[Query] = Field(min_length=1, max_length=4, description="Short keyword search queries.")


class Reflection(BaseModel):
    """The reflection's output: whether the documents read answer the question, and what to search next."""

    model_config = ConfigDict(extra="forbid")

    enough: bool = Field(description="True when the documents read already answer the question.")
    next_queries: list[Query] = Field(
        default_factory=list, max_length=4, description="Queries for the facts still missing."
    )


# --------------------------------------------------------------------------- records kept in the state


class HitRecord(TypedDict):
    """One search result: a stored source (``source_id``) or, from the web, a URL still to fetch."""

    query: str
    tool: str
    rank: int
    score: float
    title: str
    snippet: str
    url: str | None
    source_id: int | None


class SourceRecord(TypedDict):
    """A document the agent read, numbered ``n`` as the answer cites it (``[n]``)."""

    n: int
    source_id: int
    doc_id: str | None
    """The corpus document's id (``None`` for a web page). Checkpoints written before this key existed
    lack it: read it with ``.get("doc_id")``."""
    title: str
    url: str | None
    chars: int
    """Characters of the document's text read into the context."""


class DroppedRecord(TypedDict):
    """Text the context manager kept out of the context to stay within the token budget."""

    n: int
    source_id: int
    passages_dropped: int
    chars_dropped: int
    reason: str


class StepRecord(TypedDict):
    """One node's work, for the trace: model tokens prefilled vs reused, tool calls, time."""

    step: int
    node: str
    seconds: float
    prompt_tokens: int
    reused_tokens: int
    computed_tokens: int
    output_tokens: int
    first_token_s: float | None
    tool_calls: int
    detail: dict[str, Any]


StopReason = Literal["enough", "max_steps", "max_tool_calls", "max_context_tokens", "wall_time", "no_queries"]


class ResearchState(TypedDict, total=False):
    """Everything the graph carries from node to node (and across an interruption)."""

    question: str
    run_id: str
    step: int
    """Search rounds started so far."""
    pending_queries: list[str]
    queries_done: Annotated[list[str], operator.add]
    hits: Annotated[list[HitRecord], operator.add]
    sources: Annotated[list[SourceRecord], operator.add]
    transcript: list[BaseMessage]
    """The conversation the model sees; grows append-only unless the context manager compacts it."""
    dropped: Annotated[list[DroppedRecord], operator.add]
    trace: Annotated[list[StepRecord], operator.add]
    tool_calls_used: int
    stop_reason: StopReason | None
    answer: str
    citations: list[int]
    removed_citations: list[str]
    answer_status: Literal["model", "fallback"]
