"""The research graph's state (checkpointed: plain JSON-able values and LangChain messages only),
its reducers, and the structured outputs asked of the model.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.messages import BaseMessage
from pydantic import BaseModel, ConfigDict, Field

# --------------------------------------------------------------------------- structured model outputs


QUERY_PATTERN = r"^[^\W_][^{}\[\]<>\"\\=|\n]{2,79}$"
"""The grammar of a proposed query: starts with a letter or digit, 3-80 characters, none of the
characters of JSON and markup (``{...}``, ``[...]``, ``<...>``, quotes, ``key=value``). The plan and the
reflection are decoded under it (the schema's ``pattern``), a free reply is held to it too, and the
queries that pass are then checked for what a grammar cannot see (:func:`.grounding.clean_queries`:
schema words such as ``type: string``, the worked example's entities; :func:`.search_rounds.on_topic`:
no word of the question)."""

Query = Annotated[str, Field(min_length=3, max_length=80, pattern=QUERY_PATTERN)]
"""A search query: a few keywords."""


class QueryPlan(BaseModel):
    """The planner's output: short keyword queries, one fact each."""

    model_config = ConfigDict(extra="forbid")

    queries: list[Query] = Field(min_length=1, max_length=4, description="Short keyword search queries.")


class Reflection(BaseModel):
    """The reflection's output: what to search next (the loop's continue/stop decision is not the
    model's: a small model answered "enough" after any first round)."""

    model_config = ConfigDict(extra="forbid")

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
    tier: int
    """0 for the run's own queries (the question, bridge entities), 1 for the model's proposals: a
    round reads tier 0 first. Checkpoints written before this key existed lack it (read with ``.get``)."""


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


StopReason = Literal[
    "max_steps",
    "max_tool_calls",
    "max_documents",
    "max_context_tokens",
    "wall_time",
    "no_queries",
    "no_new_evidence",
]


class ResearchState(TypedDict, total=False):
    """Everything the graph carries from node to node (and across an interruption)."""

    question: str
    run_id: str
    step: int
    """Search rounds started so far."""
    pending_queries: list[str]
    pending_tiers: list[int]
    """The tier of each pending query (see ``HitRecord.tier``)."""
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
    fallback_reason: str | None
    """Why the answer is a fallback (None for the model's own answer)."""
