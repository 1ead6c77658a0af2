"""The evidence table an eval run is held to: for the agent, the RAG baseline and single-shot retrieval of
the question at top-5/10/20, the share of gold supporting documents found and the share of questions
with all of them found, with the documents read per question.

The systems' rows count the documents whose text was in the model's context; the retrieval rows are
what a reader of the top k results of the question (same retriever, same corpus collection) would see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deepscout.evals.datasets import EvalItem
from deepscout.evals.records import SystemAnswer
from deepscout.evals.stats import Interval, wilson_interval
from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.settings import Settings
from deepscout.tools.retrieval import RetrievalKind, build_retriever

RETRIEVAL_KS = (5, 10, 20)


@dataclass(frozen=True)
class EvidenceRow:
    name: str
    questions: int
    recall: float
    """Share of the gold supporting documents found, over all questions' documents."""
    all_found: Interval
    """Share of questions with every supporting document found (Wilson 95% interval)."""
    documents: float
    """Documents read per question."""


def _row(name: str, found: Sequence[tuple[int, int, int]]) -> EvidenceRow:
    """``found``: per question (gold documents found, gold documents, documents read)."""
    gold = sum(total for _, total, _ in found)
    complete = sum(1 for hits, total, _ in found if hits == total)
    return EvidenceRow(
        name=name,
        questions=len(found),
        recall=sum(hits for hits, _, _ in found) / gold if gold else float("nan"),
        all_found=wilson_interval(complete, len(found)),
        documents=sum(read for _, _, read in found) / len(found) if found else float("nan"),
    )


def evidence_rows(
    settings: Settings,
    *,
    retrieval: RetrievalKind,
    collection: str | None,
    items: Sequence[EvalItem],
    answers: Sequence[SystemAnswer],
) -> list[EvidenceRow]:
    """One row per system in ``answers``, then single-shot ``retrieval`` of each question at top-k over
    the run's corpus ``collection``."""
    gold_items = [item for item in items if item.supporting_doc_ids]
    by_key = {(a.item_id, a.system): a for a in answers}
    rows = []
    for system in sorted({a.system for a in answers}):
        found = []
        for item in gold_items:
            answer = by_key.get((item.id, system))
            if answer is not None:
                read = set(answer.read_doc_ids)
                hits = sum(doc in read for doc in item.supporting_doc_ids)
                found.append((hits, len(item.supporting_doc_ids), len(read)))
        rows.append(_row(system, found))
    db = open_database(settings)
    try:
        corpus = CorpusIndex(db.session_factory)
        retriever = build_retriever(retrieval, corpus, db.session_factory, settings.cache_dir)
        ranked = {
            item.id: [hit.doc_id for hit in retriever.search(item.question, max(RETRIEVAL_KS), collection)]
            for item in gold_items
        }
    finally:
        db.dispose()
    for k in RETRIEVAL_KS:
        found = []
        for item in gold_items:
            top = set(ranked[item.id][:k])
            hits = sum(doc in top for doc in item.supporting_doc_ids)
            found.append((hits, len(item.supporting_doc_ids), min(k, len(ranked[item.id]))))
        rows.append(_row(f"{retrieval} top-{k}", found))
    return rows


def evidence_table(rows: Sequence[EvidenceRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| system | questions | evidence recall | all supporting found [95% CI] | documents read |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        interval = row.all_found
        lines.append(
            f"| {row.name} | {row.questions} | {100 * row.recall:.1f}% | {100 * interval.estimate:.0f}% "
            f"[{100 * interval.low:.0f}, {100 * interval.high:.0f}] | {row.documents:.1f} |"
        )
    return "\n".join(lines)
