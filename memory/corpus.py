"""The local corpus: documents stored whole in ``sources`` and ranked by full-text search.

SQLite ranks with FTS5's ``bm25()`` (title weighted above body text; Porter stemming, diacritics folded);
PostgreSQL with ``ts_rank`` (normalised by log document length) over a weighted ``tsvector`` (title A,
text B). On HotpotQA (recall@5 of supporting titles, 100 questions) ``ts_rank`` with length
normalisation measured 0.785 against 0.55-0.695 for ``ts_rank_cd`` with any normalisation: cover density
rewards terms close together, which suits AND queries, not the OR-ed terms used here. FTS5 (recall@5
0.81, @10 0.895) also matched an in-memory bm25s index with stemming (0.795, 0.90), so the index stays
in the database (benchmarks/corpus_retrieval.py). Queries from users and
models are reduced to plain terms before they reach either engine (:func:`query_terms`), so no query
syntax (quotes, ``NEAR``, ``*``, ``:``, ``&``, parentheses…) can raise or change the meaning: the terms
are quoted and OR-ed, and stopwords are dropped.

Writes are batched in short transactions through ``write_session`` so that a large ingest never holds
the SQLite write lock for long. Re-adding documents is idempotent: a document whose content hash has
not changed is left untouched. The collection's row always tells the truth about what is stored: each
batch commits together with the collection's document count, and the content hash is cleared when an
add starts and set only when it finishes, so an add that was killed leaves a collection listed with the
documents it holds and marked incomplete (no hash) until an add of it completes.

Snippets are cut in Python from a bounded head of each hit (:mod:`deepscout.memory.snippets`), so a
search costs the same whatever the size of the documents it ranks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice
from typing import Any

from sqlalchemy import Row, delete, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from deepscout.errors import DeepscoutError
from deepscout.memory.db import write_session
from deepscout.memory.schemas import AddReport, CollectionInfo, CorpusDocument, ProgressCallback, SearchHit
from deepscout.memory.snippets import SNIPPET_SCAN_CHARS, snippet, term_pattern
from deepscout.memory.source_records import clean_json, clean_text, content_hash, corpus_source_key
from deepscout.memory.tables import CorpusCollection, Source, utcnow
from deepscout.text.terms import STOPWORDS
from deepscout.text.terms import WORD as _TERM

FETCH_HINT = (
    "run `deepscout setup` or `deepscout corpus fetch-demo` for the demo corpus, "
    "or `deepscout corpus add PATH` for your own documents"
)
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_QUERY_TERMS = 32
MAX_TERM_CHARS = 64
# FTS5 bm25() column weights (title, text): measured on HotpotQA by benchmarks/corpus_retrieval.py.
SQLITE_TITLE_WEIGHT = 3.0
BATCH_SIZE = 500


class CorpusError(DeepscoutError):
    """Base class of corpus errors; the message says what to do."""


class CorpusEmptyError(CorpusError):
    """The corpus has no documents yet."""


class UnknownCollectionError(CorpusError):
    """A collection was named that does not exist."""


class InvalidCollectionNameError(CorpusError, ValueError):
    """A collection name that cannot be used as part of a source key."""


class SourceNotFoundError(CorpusError, LookupError):
    """No source with the requested id."""


def query_terms(query: str) -> list[str]:
    """The search terms of a free-text query: words, case-folded, stopwords dropped, duplicates removed.

    Everything that is not a letter or digit separates terms, so query syntax never survives. A query made
    only of stopwords keeps them (so "The Who" still finds something); at most ``MAX_QUERY_TERMS`` terms.
    """
    words = [w[:MAX_TERM_CHARS] for w in _TERM.findall(query.casefold())]
    content = [w for w in words if w not in STOPWORDS]
    return list(dict.fromkeys(content or words))[:MAX_QUERY_TERMS]


def fts5_match_expression(terms: list[str]) -> str:
    """An FTS5 MATCH expression that ORs the quoted terms (terms are letters and digits only)."""
    return " OR ".join(f'"{term}"' for term in terms)


def tsquery_expression(terms: list[str]) -> str:
    """A ``to_tsquery`` expression that ORs the terms (terms are letters and digits only)."""
    return " | ".join(terms)


def validate_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name):
        raise InvalidCollectionNameError(
            f"Invalid collection name {name!r}: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class CorpusIndex:
    """Add, search, read, list and remove corpus documents; works on SQLite and PostgreSQL."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    # --- writing ------------------------------------------------------------------------------------

    def add(
        self,
        docs: Iterable[CorpusDocument],
        *,
        collection: str,
        description: str | None = None,
        meta: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
        total: int | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> AddReport:
        """Store ``docs`` in ``collection`` (created if needed); unchanged documents are skipped.

        A document with the same ``doc_id`` but other content replaces the stored one (same source id).
        ``progress(description, done, total)`` is called after each batch.
        """
        validate_collection_name(collection)
        with write_session(self._sessions) as session:
            row = session.scalar(select(CorpusCollection).where(CorpusCollection.name == collection))
            if row is None:
                session.add(CorpusCollection(name=collection, description=description, meta=meta or {}))
            else:
                if description is not None:
                    row.description = description
                if meta is not None:
                    row.meta = {**row.meta, **meta}
                row.content_hash = None  # incomplete until this add finishes
        added = updated = unchanged = done = 0
        label = f"Indexing {collection}"
        if progress:
            progress(label, 0, total)
        for batch in _batches(docs, batch_size):
            with write_session(self._sessions) as session:
                counts = self._write_batch(session, collection, batch)
                session.execute(
                    update(CorpusCollection)
                    .where(CorpusCollection.name == collection)
                    .values(document_count=CorpusCollection.document_count + counts[0], updated_at=utcnow())
                )
            added, updated, unchanged = added + counts[0], updated + counts[1], unchanged + counts[2]
            done += len(batch)
            if progress:
                progress(label, done, total)
        with write_session(self._sessions) as session:
            collection_hash = self._refresh_collection(session, collection)
        return AddReport(
            collection=collection,
            added=added,
            updated=updated,
            unchanged=unchanged,
            content_hash=collection_hash,
        )

    def _write_batch(
        self, session: Session, collection: str, batch: list[CorpusDocument]
    ) -> tuple[int, int, int]:
        by_key = {corpus_source_key(collection, doc.doc_id): doc for doc in batch}  # a later duplicate wins
        stored = {
            key: (source_id, digest)
            for key, source_id, digest in session.execute(
                select(Source.key, Source.id, Source.content_hash).where(Source.key.in_(list(by_key)))
            )
        }
        inserts: list[dict[str, Any]] = []
        updated = unchanged = 0
        for key, original in by_key.items():
            doc = replace(
                original,
                title=clean_text(original.title),
                text=clean_text(original.text),
                meta=clean_json(original.meta),
            )
            digest = content_hash(doc.title, doc.text)
            if key not in stored:
                inserts.append(_source_row(key, collection, doc, digest))
            elif stored[key][1] == digest:
                unchanged += 1
            else:
                row = _source_row(key, collection, doc, digest)
                session.execute(update(Source).where(Source.id == stored[key][0]).values(**row))
                updated += 1
        if inserts:
            session.execute(insert(Source), inserts)
        return len(inserts), updated, unchanged

    def _refresh_collection(self, session: Session, collection: str) -> str:
        digest = hashlib.sha256()
        count = 0
        rows = session.execute(
            select(Source.doc_id, Source.content_hash)
            .where(Source.kind == "corpus", Source.collection == collection)
            .order_by(Source.doc_id)
        )
        for doc_id, doc_hash in rows:
            digest.update(f"{doc_id}\x00{doc_hash}\n".encode())
            count += 1
        collection_hash = digest.hexdigest()
        session.execute(
            update(CorpusCollection)
            .where(CorpusCollection.name == collection)
            .values(document_count=count, content_hash=collection_hash, updated_at=utcnow())
        )
        return collection_hash

    def remove(self, collection: str) -> int:
        """Delete the collection and its documents; returns how many documents were removed."""
        with write_session(self._sessions) as session:
            self.require_collection(collection, session)
            removed = session.execute(
                delete(Source).where(Source.kind == "corpus", Source.collection == collection)
            )
            session.execute(delete(CorpusCollection).where(CorpusCollection.name == collection))
            return int(getattr(removed, "rowcount", 0) or 0)

    # --- reading ------------------------------------------------------------------------------------

    def search(self, query: str, k: int = 10, collection: str | None = None) -> list[SearchHit]:
        """The ``k`` best corpus documents for ``query`` (any text; never a syntax error).

        Raises CorpusEmptyError when the corpus has no documents and UnknownCollectionError for a
        collection that does not exist.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        with self._sessions() as session:
            if collection is None:
                self.require_documents(session)
            else:
                self.require_collection(collection, session)
            terms = query_terms(query)
            if not terms:
                return []
            if session.get_bind().dialect.name == "postgresql":
                return _search_postgresql(session, terms, k, collection)
            return _search_sqlite(session, terms, k, collection)

    def get(self, source_id: int) -> Source:
        with self._sessions() as session:
            source = session.get(Source, source_id)
            if source is None:
                raise SourceNotFoundError(f"No source with id {source_id}")
            return source

    def collections(self) -> list[CollectionInfo]:
        with self._sessions() as session:
            rows = session.scalars(select(CorpusCollection).order_by(CorpusCollection.name))
            return [
                CollectionInfo(
                    name=row.name,
                    document_count=row.document_count,
                    content_hash=row.content_hash,
                    description=row.description,
                    meta=dict(row.meta),
                    updated_at=row.updated_at,
                )
                for row in rows
            ]

    def manifest(self) -> dict[str, str | None]:
        """Collection name → content hash, for run manifests."""
        return {info.name: info.content_hash for info in self.collections()}

    def require_documents(self, session: Session | None = None) -> None:
        """Raise CorpusEmptyError (naming the commands that fill it) when the corpus has no documents."""
        if session is None:
            with self._sessions() as own:
                return self.require_documents(own)
        if session.scalar(select(Source.id).where(Source.kind == "corpus").limit(1)) is None:
            raise CorpusEmptyError(f"The local corpus is empty: {FETCH_HINT}.")
        return None

    def require_collection(self, collection: str, session: Session | None = None) -> None:
        """Raise UnknownCollectionError (naming the collections there are) unless ``collection`` exists."""
        if session is None:
            with self._sessions() as own:
                return self.require_collection(collection, own)
        names = list(session.scalars(select(CorpusCollection.name).order_by(CorpusCollection.name)))
        if collection not in names:
            known = ", ".join(names) if names else f"none yet; {FETCH_HINT}"
            raise UnknownCollectionError(f"No corpus collection named {collection!r} (collections: {known})")
        return None


def _source_row(key: str, collection: str, doc: CorpusDocument, digest: str) -> dict[str, Any]:
    now = utcnow()
    return {
        "key": key,
        "kind": "corpus",
        "collection": collection,
        "doc_id": doc.doc_id,
        "url": doc.url,
        "title": doc.title,
        "text": doc.text,
        "content_hash": digest,
        "meta": doc.meta,
        "created_at": now,
        "updated_at": now,
    }


def _batches(docs: Iterable[CorpusDocument], size: int) -> Iterator[list[CorpusDocument]]:
    iterator = iter(docs)
    while batch := list(islice(iterator, size)):
        yield batch


def _search_sqlite(session: Session, terms: list[str], k: int, collection: str | None) -> list[SearchHit]:
    where_collection = "AND s.collection = :collection" if collection is not None else ""
    statement = text(
        f"""
        WITH best AS (
            SELECT sources_fts.rowid AS id, bm25(sources_fts, {SQLITE_TITLE_WEIGHT}, 1.0) AS rank
            FROM sources_fts JOIN sources AS s ON s.id = sources_fts.rowid
            WHERE sources_fts MATCH :match AND s.kind = 'corpus' {where_collection}
            ORDER BY rank LIMIT :k
        )
        SELECT s.id, s.title, s.url, s.collection, s.doc_id, best.rank,
               substr(s.text, 1, {SNIPPET_SCAN_CHARS}) AS head
        FROM best JOIN sources AS s ON s.id = best.id
        ORDER BY best.rank, s.id
        """
    )
    params: dict[str, Any] = {"match": fts5_match_expression(terms), "k": k, "collection": collection}
    return _hits(session.execute(statement, params), terms, rank_sign=-1.0)  # bm25(): lower is better


def _search_postgresql(session: Session, terms: list[str], k: int, collection: str | None) -> list[SearchHit]:
    where_collection = "AND s.collection = :collection" if collection is not None else ""
    statement = text(
        f"""
        WITH q AS (SELECT to_tsquery('english', :tsquery) AS query),
        best AS (
            SELECT s.id, ts_rank(s.search_vector, q.query, 1) AS rank
            FROM sources AS s, q
            WHERE s.search_vector @@ q.query AND s.kind = 'corpus' {where_collection}
            ORDER BY rank DESC, s.id LIMIT :k
        )
        SELECT s.id, s.title, s.url, s.collection, s.doc_id, best.rank,
               left(s.text, {SNIPPET_SCAN_CHARS}) AS head
        FROM best JOIN sources AS s ON s.id = best.id
        ORDER BY best.rank DESC, s.id
        """
    )
    params: dict[str, Any] = {"tsquery": tsquery_expression(terms), "k": k, "collection": collection}
    return _hits(session.execute(statement, params), terms, rank_sign=1.0)


def _hits(rows: Iterable[Row[Any]], terms: list[str], *, rank_sign: float) -> list[SearchHit]:
    """Rows of a ranked search (id, title, url, collection, doc_id, rank, head of the text) as hits whose
    score is higher-is-better (the engine's rank times ``rank_sign``), each with a snippet cut from its
    head around the first query term (:mod:`deepscout.memory.snippets`)."""
    pattern = term_pattern(terms)
    return [
        SearchHit(
            source_id=row.id,
            title=row.title,
            snippet=snippet(row.head or "", pattern),
            score=rank_sign * float(row.rank),
            url=row.url,
            collection=row.collection,
            doc_id=row.doc_id,
        )
        for row in rows
    ]
