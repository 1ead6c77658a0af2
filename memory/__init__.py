"""deepscout.memory: persistence (SQLAlchemy + Alembic, SQLite by default, PostgreSQL supported) and
the local corpus.

Modules: ``db`` (engines, sessions, ``write_session``, ``migrate``, ``open_database``), ``tables``
(SQLAlchemy tables), ``repository`` (keyword-only read/write functions for runs and threads),
``source_records`` (the same for sources, fetched pages and the web search cache), ``corpus``
(``CorpusIndex``: full-text search), ``ingest`` (JSONL / HotpotQA / text readers), ``demo_corpus`` (the
Wikipedia demo corpus), ``schemas`` (value objects). Nothing runs at import time.
"""
