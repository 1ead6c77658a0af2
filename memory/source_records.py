"""Reading and writing sources and the web search cache: keyword-only functions taking a Session.

The caller owns the transaction, as for :mod:`deepscout.memory.repository` (runs and threads): wrap writes
in ``deepscout.memory.db.write_session(session_factory)`` and never hold one across a model call or a
network fetch; reads can use a plain ``session_factory()`` session. Functions flush so that generated ids
are set on the returned objects.

Sources (corpus documents and web pages share one table; see docs/architecture.md)
    ``upsert_source(s, *, key, kind, title, text, ...)`` → Source, inserted or updated by ``key``;
    ``upsert_page(s, *, url, final_url, title, text, http_status, ...)`` → the page under
    ``web:<final_url>``; ``find_page(s, *, url)`` → the stored page requested as, or redirected to, ``url``;
    ``get_source(s, *, source_id)``, ``get_sources(s, *, source_ids)`` (in the order asked),
    ``get_source_by_key(s, *, key)``; ``corpus_source_key``, ``web_source_key``, ``content_hash``,
    ``clean_text``/``clean_json`` (text and meta are stored without NUL characters or lone surrogates).

Web search cache (keyed by normalised query, backend, region and time limit; the reader applies the TTL)
    ``search_cache_get(s, *, search: SearchQuery, max_age, now=None)`` → the cached
    results or None when absent or older than ``max_age``;
    ``search_cache_put(s, *, search: SearchQuery, results)`` (replaces).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict, TypeVar, Unpack

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from deepscout.memory.tables import SOURCE_KINDS, SearchCacheEntry, Source, utcnow

Row = TypeVar("Row", Source, SearchCacheEntry)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _find_or_insert(
    session: Session, find: Callable[[], Row | None], make: Callable[[], Row]
) -> tuple[Row, bool]:
    """The row ``find()`` returns, else ``make()`` inserted in a savepoint; when a concurrent writer stores
    the same key in between (PostgreSQL: a unique violation), that writer's row. Also says whether this call
    inserted it."""
    found = find()
    if found is not None:
        return found, False
    try:
        with session.begin_nested():
            row = make()
            session.add(row)
        return row, True
    except IntegrityError:
        found = find()
        if found is None:
            raise
        return found, False


# --- sources ----------------------------------------------------------------------------------------


def corpus_source_key(collection: str, doc_id: str) -> str:
    return f"corpus:{collection}:{doc_id}"


def web_source_key(final_url: str) -> str:
    return f"web:{final_url}"


def clean_text(value: str) -> str:
    """Text every database accepts: NUL characters dropped (PostgreSQL refuses them), lone surrogates
    (possible in JSON input) replaced by U+FFFD."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return _SURROGATE.sub("\ufffd", value)


def clean_json(value: Any) -> Any:
    """``value`` with :func:`clean_text` applied to every string in it (keys included)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def content_hash(title: str, text: str) -> str:
    """SHA-256 over title and text: what decides whether a stored document changed."""
    digest = hashlib.sha256()
    digest.update(title.encode("utf-8"))
    digest.update(b"\x00")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


def upsert_source(
    session: Session,
    *,
    key: str,
    kind: str,
    title: str,
    text: str,
    collection: str | None = None,
    doc_id: str | None = None,
    url: str | None = None,
    final_url: str | None = None,
    http_status: int | None = None,
    content_type: str | None = None,
    author: str | None = None,
    published: str | None = None,
    fetched_at: datetime | None = None,
    meta: dict[str, Any] | None = None,
) -> Source:
    """Insert the source, or update the one with the same ``key`` (its id stays the same)."""
    if kind not in SOURCE_KINDS:
        raise ValueError(f"Source kind must be one of {', '.join(SOURCE_KINDS)}, not {kind!r}")
    title, text = clean_text(title), clean_text(text)
    fields: dict[str, Any] = {
        "kind": kind,
        "title": title,
        "text": text,
        "content_hash": content_hash(title, text),
        "collection": collection,
        "doc_id": doc_id,
        "url": url,
        "final_url": final_url,
        "http_status": http_status,
        "content_type": content_type,
        "author": author,
        "published": published,
        "fetched_at": fetched_at,
        "meta": clean_json(meta or {}),
    }
    source, inserted = _find_or_insert(
        session, lambda: get_source_by_key(session, key=key), lambda: Source(key=key, **fields)
    )
    if not inserted:
        for name, value in fields.items():
            setattr(source, name, value)
        session.flush()
    return source


class PageDetails(TypedDict, total=False):
    """What a fetched page may carry besides its text; :func:`upsert_page` passes it on as given."""

    content_type: str | None
    author: str | None
    published: str | None
    meta: dict[str, Any] | None


def upsert_page(
    session: Session,
    *,
    url: str,
    final_url: str,
    title: str,
    text: str,
    http_status: int,
    fetched_at: datetime | None = None,
    **details: Unpack[PageDetails],
) -> Source:
    """Store a fetched web page under ``web:<final_url>``, fetched now unless ``fetched_at`` says otherwise;
    ``url`` is the address that was requested."""
    return upsert_source(
        session,
        key=web_source_key(final_url),
        kind="web",
        title=title,
        text=text,
        url=url,
        final_url=final_url,
        http_status=http_status,
        fetched_at=fetched_at or utcnow(),
        **details,
    )


def find_page(session: Session, *, url: str) -> Source | None:
    """The stored web page fetched from ``url`` or redirected to it (newest first), or None."""
    query = (
        select(Source)
        .where(Source.kind == "web", (Source.final_url == url) | (Source.url == url))
        .order_by(Source.fetched_at.desc(), Source.id.desc())
        .limit(1)
    )
    return session.scalar(query)


def get_source(session: Session, *, source_id: int) -> Source | None:
    return session.get(Source, source_id)


def get_sources(session: Session, *, source_ids: Sequence[int]) -> list[Source]:
    """The sources with these ids, in the order given; unknown ids are left out."""
    by_id = {s.id: s for s in session.scalars(select(Source).where(Source.id.in_(list(source_ids))))}
    return [by_id[i] for i in source_ids if i in by_id]


def get_source_by_key(session: Session, *, key: str) -> Source | None:
    return session.scalar(select(Source).where(Source.key == key))


# --- web search cache -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchQuery:
    """One search as the cache keys it: the query text, the backend, and its region and time limit."""

    query: str
    backend: str
    region: str | None = None
    timelimit: str | None = None

    @property
    def cache_key(self) -> str:
        """SHA-256 over the normalised query (whitespace collapsed, case folded), backend, region, time
        limit."""
        normalised = " ".join(self.query.split()).casefold()
        payload = json.dumps([normalised, self.backend, self.region, self.timelimit], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _cache_entry(session: Session, key: str) -> SearchCacheEntry | None:
    return session.scalar(select(SearchCacheEntry).where(SearchCacheEntry.key == key))


def search_cache_get(
    session: Session, *, search: SearchQuery, max_age: timedelta, now: datetime | None = None
) -> list[Any] | None:
    """The cached results, or None when there are none younger than ``max_age``."""
    entry = _cache_entry(session, search.cache_key)
    if entry is None or entry.created_at < (now or utcnow()) - max_age:
        return None
    return list(entry.results)


def search_cache_put(session: Session, *, search: SearchQuery, results: list[Any]) -> SearchCacheEntry:
    """Store (or replace) the results for this search, stamped now."""
    key = search.cache_key
    entry, inserted = _find_or_insert(
        session,
        lambda: _cache_entry(session, key),
        lambda: SearchCacheEntry(
            key=key,
            query=search.query,
            backend=search.backend,
            region=search.region,
            timelimit=search.timelimit,
            results=results,
        ),
    )
    if not inserted:
        entry.query, entry.results, entry.created_at = search.query, results, utcnow()
        session.flush()
    return entry
