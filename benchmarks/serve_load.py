"""Load on ``deepscout serve``: N concurrent clients (1, 4, 16) asking research questions over HTTP.

The server runs in this process under uvicorn on loopback, on the embedded default model (SmolLM2 unless
``--model``), over the HotpotQA corpus in a temporary home. Each client posts ``--requests`` questions one
after the other (``POST /v1/research``) and reads each job's SSE stream to its end. Reported per level:
requests/s, time to first event, p50/p95 latency (post → final event), errors (non-``done`` endings or
HTTP errors; must be 0), peak RSS of the process, and throughput relative to one client.

    python benchmarks/serve_load.py [--clients 1 4 16] [--requests 1] [--max-steps 1]

Prints a table and writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.ingest import read_hotpotqa
from deepscout.model_runtime.chat.backends.smollm2 import fetch_smollm2
from deepscout.process import configure_process
from deepscout.settings import ServerSettings, Settings
from deepscout.ui.server import build_server

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "serve_load.json"
HOTPOTQA = Path(os.environ.get("DEEPSCOUT_HOTPOTQA_DIR", REPO.parent / "shared" / "data" / "hotpotqa"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def one_request(client: httpx.AsyncClient, question: str, max_steps: int) -> dict[str, Any]:
    started = time.perf_counter()
    job = (await client.post("/v1/research", json={"question": question, "max_steps": max_steps})).json()
    first_event: float | None = None
    last_type = None
    async with client.stream("GET", job["events_url"]) as response:
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                first_event = first_event or time.perf_counter() - started
                last_type = line[len("event: ") :]
    return {
        "latency_s": time.perf_counter() - started,
        "first_event_s": first_event,
        "ok": last_type == "done",
    }


async def level(
    url: str, clients: int, requests: int, questions: list[str], max_steps: int
) -> dict[str, Any]:
    async def run_client(index: int) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=1800) as client:
            results = []
            for turn in range(requests):
                question = questions[(index * requests + turn) % len(questions)]
                try:
                    results.append(await one_request(client, question, max_steps))
                except httpx.HTTPError:
                    results.append({"latency_s": 0.0, "first_event_s": None, "ok": False})
            return results

    started = time.perf_counter()
    outcomes = [
        result for batch in await asyncio.gather(*map(run_client, range(clients))) for result in batch
    ]
    wall = time.perf_counter() - started
    latencies = sorted(result["latency_s"] for result in outcomes if result["ok"])
    firsts = [result["first_event_s"] for result in outcomes if result["first_event_s"] is not None]
    return {
        "clients": clients,
        "requests": len(outcomes),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 4),
        "first_event_s": round(statistics.median(firsts), 3) if firsts else None,
        "p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2)
        if latencies
        else None,
        "errors": sum(not result["ok"] for result in outcomes),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=1, help="Questions each client asks in turn.")
    parser.add_argument("--max-steps", type=int, default=1)
    parser.add_argument("--model", default=None, help="Model spec served (default: Settings.model).")
    args = parser.parse_args()
    configure_process()
    shared = Settings()
    model = args.model or shared.model
    if model == "smollm2":
        fetch_smollm2(shared, quiet=True)
    questions = [item["question"] for item in json.loads((HOTPOTQA / "hotpotqa_train.json").read_text())]
    with tempfile.TemporaryDirectory(prefix="deepscout-serve-load-") as home:
        settings = Settings(
            home=Path(home),
            cache_dir=shared.cache_dir,
            model=model,
            server=ServerSettings(port=0, rate_limit_per_minute=100_000, max_active_runs=max(args.clients)),
        )
        database = open_database(settings)
        CorpusIndex(database.session_factory).add(
            read_hotpotqa(HOTPOTQA / "hotpotqa_train_corpus.json"), collection="hotpotqa"
        )
        database.dispose()
        server = build_server(settings)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        asyncio.run(level(url, 1, 1, questions[-1:], args.max_steps))  # load the model once
        rows = [asyncio.run(level(url, n, args.requests, questions, args.max_steps)) for n in args.clients]
        server.should_exit = True
        thread.join()
    base = rows[0]["requests_per_s"] or 1e-9
    print(
        f"{'clients':>7} {'req':>4} {'req/s':>8} {'x1':>6} {'first ev s':>10} {'p50 s':>7} {'p95 s':>7} "
        f"{'errors':>6} {'peak RSS MiB':>12}"
    )
    for row in rows:
        row["speedup"] = round(row["requests_per_s"] / base, 2)
        print(
            f"{row['clients']:>7} {row['requests']:>4} {row['requests_per_s']:>8.3f} {row['speedup']:>6.2f} "
            f"{row['first_event_s']!s:>10} {row['p50_s']!s:>7} {row['p95_s']!s:>7} {row['errors']:>6} "
            f"{row['peak_rss_mib']:>12}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "model": model,
                "max_steps": args.max_steps,
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "load_average_at_end": os.getloadavg(),
                "requests_per_client": args.requests,
                "levels": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
