"""The web tools' costs and limits, measured against the test suite's loopback server (no real web).

* fetch + extract of the boilerplate article, the PDF, the 3-hop redirect chain (median of N runs);
* a 50 MB body and a 1 GiB gzip bomb under the default 10 MB cap: time, bytes kept, peak Python memory;
* a trickling server against a 2 s total deadline;
* web search with no network (ddgs through a proxy on a closed port) and with every backend answering
  429 (ddgs's HTTP client patched): time until the corpus fallback answers, with the default settings.

    python benchmarks/web_tools.py [--n 20]

Prints a table and writes benchmarks/results/web_tools.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.schemas import CorpusDocument
from deepscout.settings import Settings, WebSettings
from deepscout.tools.base import ToolContext
from deepscout.tools.extract import extract_document
from deepscout.tools.guards import DomainRateLimiter
from deepscout.tools.http_client import FetchDeadlineExceeded, GuardedHttpClient
from deepscout.tools.quotas import ToolQuotas
from deepscout.tools.web_search import WebSearcher

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "web_tools.json"


def _load_test_server() -> Any:
    """The loopback server of tests/tools/conftest.py (pages, PDF, bomb...), loaded by path."""
    spec = importlib.util.spec_from_file_location("web_test_server", REPO / "tests" / "tools" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fetch(client: GuardedHttpClient, url: str) -> tuple[Any, float]:
    started = time.perf_counter()
    response = asyncio.run(client.get(url))
    return response, time.perf_counter() - started


def _fetch_traced(client: GuardedHttpClient, url: str) -> tuple[Any, float, int]:
    """The response, the seconds, and the peak of Python memory allocated meanwhile."""
    tracemalloc.start()
    try:
        response, elapsed = _fetch(client, url)
        return response, elapsed, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="runs per fetch measurement")
    args = parser.parse_args()

    server_module = _load_test_server()
    servers = server_module._serve("127.0.0.1")
    server = next(servers)
    settings = WebSettings(allow_loopback=True, allowed_ports=[server.port], per_domain_min_interval_s=0.0)
    client = GuardedHttpClient(settings, DomainRateLimiter(0.0))
    rows: list[dict[str, Any]] = []

    for label, path in (
        ("article (HTML)", "/article"),
        ("survey (PDF)", "/doc.pdf"),
        ("3 redirects", "/redirect/3"),
    ):
        fetch_s, extract_s = [], []
        chars = 0
        for _ in range(args.n):
            response, elapsed = _fetch(client, server.url(path))
            started = time.perf_counter()
            doc = extract_document(response.body, response.content_type, response.final_url)
            extract_s.append(time.perf_counter() - started)
            fetch_s.append(elapsed)
            chars = len(doc.text)
        rows.append(
            {
                "case": f"fetch {label}",
                "fetch_ms_median": round(1000 * statistics.median(fetch_s), 1),
                "extract_ms_median": round(1000 * statistics.median(extract_s), 1),
                "text_chars": chars,
            }
        )

    for label, path in (("50 MB body", "/big"), ("1 GiB gzip bomb", "/bomb")):
        response, elapsed, peak = _fetch_traced(client, server.url(path))
        rows.append(
            {
                "case": f"{label}, cap {settings.fetch_max_bytes / 1e6:g} MB",
                "seconds": round(elapsed, 3),
                "bytes_kept": len(response.body),
                "truncated": response.truncated,
                "peak_python_mb": round(peak / 1e6, 1),
            }
        )

    trickle = settings.model_copy(update={"fetch_deadline_s": 2.0})
    started = time.perf_counter()
    try:
        _fetch(GuardedHttpClient(trickle, DomainRateLimiter(0.0)), server.url("/trickle"))
        outcome = "finished (unexpected)"
    except FetchDeadlineExceeded:
        outcome = "cut by the deadline"
    rows.append(
        {
            "case": "trickle, 2 s deadline",
            "seconds": round(time.perf_counter() - started, 3),
            "outcome": outcome,
        }
    )

    with tempfile.TemporaryDirectory() as home:
        db = open_database(Settings(home=Path(home)))
        corpus = CorpusIndex(db.session_factory)
        corpus.add(
            [CorpusDocument(doc_id="a", title="Aletsch Glacier", text="The largest glacier of the Alps.")],
            collection="demo",
        )

        def searched(label: str, web: WebSettings) -> None:
            ctx = ToolContext(
                session_factory=db.session_factory,
                corpus=corpus,
                settings=Settings(home=Path(home), web=web),
                quotas=ToolQuotas(max_calls=10),
            )
            state = ctx.web
            started = time.perf_counter()
            outcome = WebSearcher(ctx).search("Aletsch glacier")
            rows.append(
                {
                    "case": label,
                    "seconds": round(time.perf_counter() - started, 3),
                    "outcome": outcome.origin,
                    "backend_attempts": state.counters["search_requests"],
                }
            )

        searched(
            "search, no network (closed proxy)",
            WebSettings(search_proxy=f"http://127.0.0.1:{_closed_port()}"),
        )
        from ddgs.http_client import HttpClient

        fake = server_module.FakeSearchHttp()
        fake.status = 429
        original = HttpClient.request
        HttpClient.request = lambda self, *a, **k: fake.request(*a, **k)  # type: ignore[method-assign]
        try:
            searched("search, every backend 429", WebSettings())
        finally:
            HttpClient.request = original  # type: ignore[method-assign]
        db.dispose()

    next(servers, None)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    print(f"web tools on {machine}")
    for row in rows:
        print("  " + " | ".join(f"{k}={v}" for k, v in row.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
