"""What every tool of a run shares: the :class:`ToolContext` (database, corpus, run, settings, quotas,
counters, the web tools' run state and URL provenance) and the artifacts tools hand to the agent.

Tools are LangChain ``StructuredTool``s with pydantic arguments; the function's docstring is the
description the model sees. Tools return ``(content, artifact)``: ``content`` is the text for the model,
wrapped as untrusted data (:mod:`deepscout.tools.untrusted`); ``artifact`` is structured data for the
agent (search hits, the document read). ``tool.metadata["role"]`` says what a tool does for the agent:
``search`` (artifact: a list of hits, see :class:`SearchHitArtifact`), ``read`` (artifact: a
:class:`DocumentArtifact`), or ``fetch`` (a URL in, a stored page out, artifact: a DocumentArtifact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypedDict

from deepscout.tools.guards import UrlProvenance
from deepscout.tools.quotas import ToolCounters, ToolQuotas
from deepscout.tools.web_state import WebRunState

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from deepscout.memory.corpus import CorpusIndex
    from deepscout.settings import Settings
    from deepscout.tools.retrieval import Retriever

ToolRole = Literal["search", "read", "fetch"]


class SearchHitArtifact(TypedDict):
    """One search result as a ``search`` tool hands it to the agent."""

    source_id: int | None
    """The stored source (corpus documents, cached pages); None for a web result not fetched yet."""
    title: str
    snippet: str
    score: float
    url: str | None


class DocumentArtifact(TypedDict):
    """A window of a stored document, as ``read``/``fetch`` tools hand it to the agent."""

    source_id: int
    doc_id: str | None
    """The corpus document's id; None for a web page."""
    title: str
    url: str | None
    offset: int
    end: int
    total_chars: int
    text: str


@dataclass
class ToolContext:
    """Everything the tools of one run share. Built by the agent (or a test) per run."""

    session_factory: sessionmaker[Session]
    corpus: CorpusIndex
    settings: Settings
    quotas: ToolQuotas
    run_id: str | None = None
    collection: str | None = None
    """Restrict corpus search to this collection (None: all)."""
    counters: ToolCounters = field(default_factory=ToolCounters)
    provenance: UrlProvenance = field(default_factory=UrlProvenance)
    deadline: float | None = None
    """``time.monotonic()`` by which tools should give up (the run's wall-time budget)."""
    retriever: Retriever | None = None
    """What ``corpus_search`` ranks with (see :mod:`deepscout.tools.retrieval`); None: the corpus's BM25."""
    web: WebRunState = field(init=False)
    """The web tools' state for this run, from ``settings.web`` (see :mod:`deepscout.tools.web_state`)."""

    def __post_init__(self) -> None:
        self.web = WebRunState.start(self.settings.web)

    def charge(self, name: str) -> None:
        self.counters.charge(name, self.quotas)
