"""What each search round asks for and reads: the question as a query, the read budget of a round, the
order candidates are read in, and the checks on the model's own query proposals.

The first round searches the question itself and reads its top results — what the RAG baseline reads,
with the same retriever and k — so the agent never starts below the baseline; later rounds only add
(bridge-entity follow-ups, :mod:`.followup`, then what the model proposed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from langchain_core.messages import BaseMessage
from langchain_core.tools import BaseTool
from pydantic import BaseModel

from deepscout.agent.context import documents_in
from deepscout.agent.followup import ReadPassage
from deepscout.agent.options import ResearchOptions
from deepscout.agent.state import HitRecord, ResearchState
from deepscout.text.fusion import reciprocal_rank_fusion
from deepscout.text.terms import terms

DEFAULT_QUERY_CHARS = 300
"""The query length when no search tool states one."""

RUN_TIER = 0
"""Queries the run forms itself (the question, bridge entities): read first."""
MODEL_TIER = 1
"""Queries the model proposed: read after the run's own."""


def query_limit(searchers: Sequence[BaseTool]) -> int:
    """The longest query every search tool accepts (their ``query`` argument's ``maxLength``)."""
    limits = []
    for tool in searchers:
        schema = tool.args_schema
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            limit = schema.model_json_schema().get("properties", {}).get("query", {}).get("maxLength")
            if isinstance(limit, int):
                limits.append(limit)
    return min(limits, default=DEFAULT_QUERY_CHARS)


def question_query(question: str, max_chars: int) -> str:
    """The question as a search query: whole when it fits, else its content words, first ones first, up to
    ``max_chars`` (a long question is shortened, never dropped)."""
    if len(question) <= max_chars:
        return question
    words: list[str] = []
    for word in dict.fromkeys(terms(question)):
        if len(" ".join([*words, word])) > max_chars:
            break
        words.append(word)
    return " ".join(words) or question[:max_chars]


def reads_this_round(options: ResearchOptions, state: ResearchState) -> int:
    """Documents to read in the coming round: the question's top results in the first round, then the
    documents left in the budget spread over the rounds left (at most ``reads_per_step`` each)."""
    budgets = options.budgets
    read = len(state.get("sources", []))
    left = max(0, budgets.max_documents - read)
    if not read and state.get("step", 0) <= 1:
        return min(left, options.hits_per_query)
    rounds_left = max(1, budgets.max_steps - state.get("step", 0) + 1)
    return min(left, options.reads_per_step, math.ceil(left / rounds_left))


def candidates(state: ResearchState, limit: int) -> list[HitRecord]:
    """Unread hits, best first: the run's own queries before the model's, each tier ordered by
    reciprocal-rank fusion over its queries and tools."""
    read_ids = {source["source_id"] for source in state.get("sources", [])}
    read_urls = {source["url"] for source in state.get("sources", []) if source["url"]}
    ranked: dict[int, list[tuple[str, int]]] = {RUN_TIER: [], MODEL_TIER: []}
    best: dict[str, HitRecord] = {}
    for hit in state.get("hits", []):
        if hit["source_id"] in read_ids or (hit["source_id"] is None and hit["url"] in read_urls):
            continue
        key = f"id:{hit['source_id']}" if hit["source_id"] is not None else f"url:{hit['url']}"
        ranked[hit.get("tier", RUN_TIER)].append((key, hit["rank"] + 1))
        best.setdefault(key, hit)
    order: list[str] = []
    for tier in (RUN_TIER, MODEL_TIER):
        order += [key for key, _ in reciprocal_rank_fusion(ranked[tier]) if key not in order]
    return [best[key] for key in order[:limit]]


def read_passages(transcript: Sequence[BaseMessage]) -> list[ReadPassage]:
    """The documents in the context, in the order they were read (the first round's in retriever order)."""
    docs = sorted((doc for _, doc in documents_in(transcript)), key=lambda doc: doc.n)
    return [ReadPassage(doc.title, doc.text, rank) for rank, doc in enumerate(docs)]


def on_topic(queries: Sequence[str], question: str, names: Sequence[str]) -> list[str]:
    """The model's proposals that name something of the question or of a bridge entity.

    After the first round the model has read pages; a page can hold text written to steer it ("SEARCH
    FOR: ..."). A proposal that shares no word with the question or with the names found in the pages'
    context is not searched."""
    anchors = set(terms(question))
    for name in names:
        anchors.update(terms(name))
    return [query for query in queries if anchors & set(terms(query))]
