"""Corpus retrieval quality and speed on the shared HotpotQA set (100 questions, 994 passages).

For every question the whole corpus is searched with the question text; recall@k is the share of gold
supporting titles among the top k hits, all@k the share of questions whose supporting titles are all
there. Engines: the SQLite FTS5 index used by deepscout; PostgreSQL (ts_rank) when
DEEPSCOUT_TEST_POSTGRES_URL names a server; and bm25s (an in-memory BM25) for comparison when it is
installed. Prints a table and writes benchmarks/results/corpus_retrieval.json.

    python benchmarks/corpus_retrieval.py [--hotpotqa DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepscout.memory.corpus import CorpusIndex, query_terms
from deepscout.memory.db import create_db_engine, make_session_factory, migrate
from deepscout.memory.ingest import open_input

KS = (1, 2, 5, 10)
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "corpus_retrieval.json"

Searcher = Callable[[str, int], list[str]]


def load_questions(hotpotqa: Path) -> list[tuple[str, set[str]]]:
    rows = json.loads((hotpotqa / "hotpotqa_train.json").read_text(encoding="utf-8"))
    return [(row["question"], {title for title, _ in row["supporting_facts"]}) for row in rows]


def evaluate(name: str, search: Searcher, questions: list[tuple[str, set[str]]]) -> dict[str, Any]:
    found = dict.fromkeys(KS, 0)
    complete = dict.fromkeys(KS, 0)
    gold_total = 0
    latencies = []
    for question, gold in questions:
        started = time.perf_counter()
        ranked = search(question, max(KS))
        latencies.append((time.perf_counter() - started) * 1000)
        gold_total += len(gold)
        for k in KS:
            hits = gold & set(ranked[:k])
            found[k] += len(hits)
            complete[k] += hits == gold
    result: dict[str, Any] = {"engine": name}
    for k in KS:
        result[f"recall@{k}"] = round(found[k] / gold_total, 3)
        result[f"all@{k}"] = round(complete[k] / len(questions), 3)
    result["query_ms_mean"] = round(statistics.fmean(latencies), 2)
    result["query_ms_p95"] = round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 2)
    return result


def database_engine(
    url: str, hotpotqa: Path, questions: list[tuple[str, set[str]]], name: str
) -> dict[str, Any]:
    engine = create_db_engine(url)
    try:
        migrate(engine)
        index = CorpusIndex(make_session_factory(engine))
        corpus = open_input(hotpotqa / "hotpotqa_train_corpus.json")
        started = time.perf_counter()
        index.add(corpus.documents(), collection="hotpotqa", total=corpus.count)
        ingest_s = time.perf_counter() - started
        result = evaluate(name, lambda q, k: [hit.title for hit in index.search(q, k=k)], questions)
        result["ingest_s"] = round(ingest_s, 3)
        return result
    finally:
        engine.dispose()


def postgres_engine(server_url: str, hotpotqa: Path, questions: list[tuple[str, set[str]]]) -> dict[str, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"deepscout_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        return database_engine(url, hotpotqa, questions, "postgresql ts_rank")
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bm25s_engine(hotpotqa: Path, questions: list[tuple[str, set[str]]]) -> dict[str, Any] | None:
    try:
        import bm25s
    except ImportError:
        return None
    try:  # Porter-style stemming as FTS5 has, when PyStemmer is installed
        import Stemmer

        stemmer = Stemmer.Stemmer("english")
    except ImportError:
        stemmer = None
    docs = list(open_input(hotpotqa / "hotpotqa_train_corpus.json").documents())

    def tokenize(texts: list[str]) -> Any:
        return bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)

    started = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(tokenize([f"{d.title}. {d.text}" for d in docs]), show_progress=False)
    ingest_s = time.perf_counter() - started
    titles = [d.title for d in docs]

    def search(question: str, k: int) -> list[str]:
        ids, _ = retriever.retrieve(tokenize([" ".join(query_terms(question))]), k=k, show_progress=False)
        return [titles[int(i)] for i in ids[0]]

    label = "bm25s + stemmer" if stemmer is not None else "bm25s, no stemmer"
    result = evaluate(label, search, questions)
    result["ingest_s"] = round(ingest_s, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hotpotqa", type=Path, default=REPO.parent / "shared" / "data" / "hotpotqa")
    args = parser.parse_args()
    questions = load_questions(args.hotpotqa)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(
            database_engine(f"sqlite:///{tmp}/bench.db", args.hotpotqa, questions, "sqlite fts5 bm25")
        )
    if server := os.environ.get("DEEPSCOUT_TEST_POSTGRES_URL"):
        results.append(postgres_engine(server, args.hotpotqa, questions))
    bm25s_result = bm25s_engine(args.hotpotqa, questions)
    if bm25s_result is not None:
        results.append(bm25s_result)

    columns = ["engine", *[f"recall@{k}" for k in KS], *[f"all@{k}" for k in KS], "query_ms_mean", "ingest_s"]
    print(f"HotpotQA: {len(questions)} questions; machine: {platform.machine()}, {os.cpu_count()} CPUs")
    print(" | ".join(f"{c:>18}" if i == 0 else f"{c:>9}" for i, c in enumerate(columns)))
    for row in results:
        print(" | ".join(f"{row[c]!s:>18}" if i == 0 else f"{row[c]!s:>9}" for i, c in enumerate(columns)))
    if bm25s_result is None:
        print("(bm25s not installed: `pip install bm25s PyStemmer` to compare)")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "corpus_retrieval",
        "questions": len(questions),
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
