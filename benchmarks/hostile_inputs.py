"""What hostile inputs cost on the fetch → extract → store path and in corpus search (loopback only).

Each page of ``tests/tools/hostile_pages.py`` is fetched through ``fetch_url``'s own path (the guarded
client, the extraction worker pool with its default deadline and memory cap, the sources table); the
table shows the wall time, the outcome, the peak RSS of the extraction worker (its ``VmHWM``, sampled)
and how much the parent's RSS grew. Then a corpus holding one 50 MB document that matches every query
word is searched: the slowest of several searches must stay under a second.

    python benchmarks/hostile_inputs.py [--search-mb 50] [--repeats 5]

Prints a table and writes benchmarks/results/hostile_inputs.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from deepscout.errors import DeepscoutError
from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.schemas import CorpusDocument
from deepscout.settings import Settings, WebSettings
from deepscout.tools.base import ToolContext
from deepscout.tools.fetch import PageFetcher
from deepscout.tools.quotas import ToolQuotas

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "hostile_inputs.json"
WORDS = [
    "the",
    "glacier",
    "ice",
    "retreat",
    "alps",
    "valley",
    "river",
    "snow",
    "measure",
    "record",
    "of",
    "and",
    "in",
    "to",
    "a",
]


def _load_hostile_pages() -> Any:
    path = REPO / "tests" / "tools" / "hostile_pages.py"
    spec = importlib.util.spec_from_file_location("hostile_pages", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class _PeakSampler:
    """Samples, every 10 ms, the peak RSS (``VmHWM``) of the extraction workers and this process's RSS."""

    def __init__(self, ctx: ToolContext) -> None:
        self._pool = ctx.web.extraction
        self._me = psutil.Process()
        self.worker_peak = 0
        self.parent_peak = self._me.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.parent_peak = max(self.parent_peak, self._me.memory_info().rss)
            for worker in list(self._pool._all):
                try:
                    status = Path(f"/proc/{worker.process.pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.worker_peak = max(self.worker_peak, int(line.split()[1]) * 1024)

    def __enter__(self) -> _PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _fetch_rows(hostile: Any, home: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    pages = dict(hostile.PAGES)
    pages["/pdf-bomb-2000-pages"] = ("application/pdf", hostile.shared_stream_pdf(pages=2000))
    hostile.PAGES.update(pages)
    with hostile.serve("127.0.0.1") as server:
        web = WebSettings(
            allow_loopback=True,
            allowed_ports=[server.port],
            per_domain_min_interval_s=0.0,
            require_provenance=False,
        )
        settings = Settings(home=home, web=web)
        database = open_database(settings)
        corpus = CorpusIndex(database.session_factory)
        for path, (content_type, body) in pages.items():
            ctx = ToolContext(
                session_factory=database.session_factory,
                corpus=corpus,
                settings=settings,
                quotas=ToolQuotas(max_calls=10),
            )
            ctx.web.extraction.prepare()
            time.sleep(1.0)  # the worker is up: the row measures the page, not the interpreter's start
            rss_before = psutil.Process().memory_info().rss
            started = time.perf_counter()
            with _PeakSampler(ctx) as sampler:
                try:
                    page = asyncio.run(PageFetcher(ctx).fetch(server.url(path)))
                    outcome = f"stored, {len(page.text):,} chars, {len(page.links)} links"
                except DeepscoutError as error:
                    outcome = f"{type(error).__name__}: {str(error).split(': ', 1)[-1][:70]}"
            seconds = time.perf_counter() - started
            ctx.web.extraction.close()
            rows.append(
                {
                    "input": path.lstrip("/"),
                    "body_kb": round(len(body) / 1024, 1),
                    "content_type": content_type.split(";")[0],
                    "seconds": round(seconds, 2),
                    "worker_peak_rss_mib": round(sampler.worker_peak / (1 << 20), 1),
                    "parent_rss_growth_mib": round((sampler.parent_peak - rss_before) / (1 << 20), 1),
                    "outcome": outcome,
                }
            )
        database.dispose()
    return rows


def _search_rows(home: Path, megabytes: int, repeats: int) -> list[dict[str, Any]]:
    rng = random.Random(0)
    words = WORDS + [f"w{i}" for i in range(3000)]
    huge = " ".join(rng.choice(words) for _ in range(megabytes * 1_000_000 // 5))
    database = open_database(Settings(home=home))
    corpus = CorpusIndex(database.session_factory)
    started = time.perf_counter()
    docs = [CorpusDocument(doc_id="huge", title="Everything at once", text=huge)]
    docs += [CorpusDocument(doc_id=f"n{i}", title=f"Note {i}", text=f"glacier note {i}") for i in range(200)]
    corpus.add(docs, collection="hostile")
    indexed_s = time.perf_counter() - started
    rows = []
    for query in ("the", "glacier ice retreat alps valley river snow measure record", "w17 glacier"):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            hits = corpus.search(query, k=10)
            times.append(time.perf_counter() - started)
        rows.append(
            {
                "input": f"corpus search {query!r}",
                "document_mb": round(len(huge) / 1e6, 1),
                "indexed_s": round(indexed_s, 1),
                "seconds_max": round(max(times), 3),
                "seconds_median": round(sorted(times)[len(times) // 2], 3),
                "huge_ranked": any(hit.doc_id == "huge" for hit in hits),
                "under_1s": max(times) < 1.0,
            }
        )
    database.dispose()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search-mb", type=int, default=50, help="size of the document the search ranks")
    parser.add_argument("--repeats", type=int, default=5, help="searches per query")
    args = parser.parse_args()
    hostile = _load_hostile_pages()
    defaults = WebSettings()
    with tempfile.TemporaryDirectory() as home:
        fetch_rows = _fetch_rows(hostile, Path(home) / "fetch")
        search_rows = _search_rows(Path(home) / "search", args.search_mb, args.repeats)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    limits = (
        f"extract deadline {defaults.extract_deadline_s:g} s, memory cap {defaults.extract_memory_mb} MiB"
    )
    print(f"hostile inputs on {machine}; {limits}")
    for row in fetch_rows + search_rows:
        print("  " + " | ".join(f"{k}={v}" for k, v in row.items()))
    within = all(
        row["seconds"] <= defaults.extract_deadline_s + 1.0
        and row["worker_peak_rss_mib"] <= defaults.extract_memory_mb
        for row in fetch_rows
    )
    print(f"every extraction within its deadline and memory cap: {within}")
    print(f"every search under 1 s: {all(row['under_1s'] for row in search_rows)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"machine": machine, "limits": limits, "fetch": fetch_rows, "search": search_rows}, indent=2
        )
    )
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
