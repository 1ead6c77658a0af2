"""``corpus_search``: search over the local corpus, one query per call, with the run's retriever
(BM25 by default; dense or hybrid, see :mod:`deepscout.tools.retrieval`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, ConfigDict, Field

from deepscout.memory.schemas import SearchHit
from deepscout.tools.base import SearchHitArtifact, ToolContext
from deepscout.tools.tool_building import content_and_artifact_tool
from deepscout.tools.untrusted import wrap_untrusted

NAME = "corpus_search"


class CorpusSearchArgs(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"query": "Bram Stoker birthplace"}, {"query": "Dracula author"}]},
    )

    query: str = Field(min_length=1, max_length=300, description="Short keyword query naming one fact.")
    k: int = Field(default=5, ge=1, le=20, description="How many results to return.")


def hit_artifacts(hits: Iterable[SearchHit]) -> list[SearchHitArtifact]:
    """Corpus search hits as a ``search`` tool hands them to the agent."""
    return [
        {
            "source_id": hit.source_id,
            "title": hit.title,
            "snippet": hit.snippet,
            "score": float(hit.score),
            "url": hit.url,
        }
        for hit in hits
    ]


def hit_lines(artifact: Sequence[SearchHitArtifact]) -> str:
    """One line per corpus hit, for the model: source id, title, snippet."""
    return "\n".join(f"source {hit['source_id']}: {hit['title']} — {hit['snippet']}" for hit in artifact)


def build_corpus_search(ctx: ToolContext) -> StructuredTool:
    def corpus_search(query: str, k: int = 5) -> tuple[str, list[SearchHitArtifact]]:
        """Search the local document collection. Returns numbered results: source id, title, snippet."""
        ctx.charge(NAME)
        retriever = ctx.retriever or ctx.corpus
        artifact = hit_artifacts(retriever.search(query, k=k, collection=ctx.collection))
        ctx.provenance.add_many((hit["url"] for hit in artifact if hit["url"]), "search")
        if not artifact:
            return f"No documents match {query!r}.", artifact
        return wrap_untrusted(hit_lines(artifact), origin=NAME, label=query), artifact

    return content_and_artifact_tool(corpus_search, name=NAME, args_schema=CorpusSearchArgs, role="search")
