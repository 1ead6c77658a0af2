"""What an eval run produces, as plain records: the runner stores them, the report reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from deepscout.evals.datasets import EvalItem
from deepscout.evals.judges import Outcome
from deepscout.evals.scoring import ObjectiveScore, score_answer

AnswerStatus = Literal["model", "fallback"]


@dataclass(frozen=True)
class SourceRef:
    source_id: int
    doc_id: str | None
    title: str
    url: str | None = None


@dataclass(frozen=True)
class AnswerCost:
    """What one answer cost."""

    tool_calls: int = 0
    """Calls to tools (searches and reads)."""
    prompt_tokens: int = 0
    """Tokens in the prompts of every model call."""
    computed_tokens: int = 0
    """Prompt tokens actually run through the model (not reused from a cache)."""
    output_tokens: int = 0
    """Tokens generated."""
    latency_s: float = 0.0
    """Wall time of the answer."""


@dataclass(frozen=True)
class SystemAnswer:
    item_id: str
    system: str
    answer: str
    sources: tuple[SourceRef, ...] = ()
    read_doc_ids: tuple[str, ...] = ()
    usage: AnswerCost = field(default_factory=AnswerCost)
    error: str | None = None
    status: AnswerStatus = "model"
    """``model``: the model wrote the answer; ``fallback``: sentences quoted from the sources stood in."""

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "system": self.system,
            "answer": self.answer,
            "sources": [s.__dict__ for s in self.sources],
            "read_doc_ids": list(self.read_doc_ids),
            "usage": self.usage.__dict__,
            "error": self.error,
            "status": self.status,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SystemAnswer:
        return cls(
            item_id=data["item_id"],
            system=data["system"],
            answer=data["answer"],
            sources=tuple(SourceRef(**s) for s in data.get("sources", [])),
            read_doc_ids=tuple(data.get("read_doc_ids", [])),
            usage=AnswerCost(**data.get("usage", {})),
            error=data.get("error"),
            status=data.get("status", "model"),
        )


@dataclass(frozen=True)
class Verdict:
    """The pairwise outcome for the first system against the second on one item."""

    item_id: str
    first: str
    second: str
    outcome: Outcome
    order_flip: bool
    reason_first_as_a: str
    reason_first_as_b: str
    winner_first_as_a: str | None = None
    """The judge's pick ("A", "B" or "tie") with the first system shown as A; None in older runs."""
    winner_first_as_b: str | None = None
    """The judge's pick with the first system shown as B (so "B" there means the first system)."""


@dataclass(frozen=True)
class EvidenceRecall:
    share: float
    all_found: bool


def evidence_recall(item: EvalItem, answer: SystemAnswer) -> EvidenceRecall | None:
    """Share of the gold supporting documents the system actually read; None when there is no gold."""
    if not item.supporting_doc_ids:
        return None
    read = set(answer.read_doc_ids)
    found = sum(1 for doc in item.supporting_doc_ids if doc in read)
    return EvidenceRecall(found / len(item.supporting_doc_ids), found == len(item.supporting_doc_ids))


def objective(item: EvalItem, answer: SystemAnswer) -> ObjectiveScore:
    return score_answer(answer.answer, item.answers)
