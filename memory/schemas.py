"""Plain value objects passed between the memory layer and its callers (no database state attached)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ProgressCallback = Callable[[str, int, int | None], None]
"""``progress(description, completed, total)``: called as work advances; ``total`` is None when unknown."""


@dataclass(frozen=True, slots=True)
class CorpusDocument:
    """One document to ingest: ``doc_id`` is unique within its collection; ``text`` is stored whole."""

    doc_id: str
    title: str
    text: str
    url: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One ranked result of a corpus search; ``score`` is higher-is-better within one result list."""

    source_id: int
    title: str
    snippet: str
    score: float
    url: str | None
    collection: str | None = None
    doc_id: str | None = None


@dataclass(frozen=True, slots=True)
class AddReport:
    """What ``CorpusIndex.add`` did: documents new, changed (text or title differed) and already present."""

    collection: str
    added: int
    updated: int
    unchanged: int
    content_hash: str

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    """A corpus collection as listed by ``CorpusIndex.collections``."""

    name: str
    document_count: int
    content_hash: str | None
    description: str | None
    meta: dict[str, Any]
    updated_at: datetime
