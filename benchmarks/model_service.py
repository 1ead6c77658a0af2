"""Throughput of one loaded model serving concurrent chat calls (what the server's model service does).

For each model and each concurrency level N (1, 4, 8), N client threads share one loaded chat model and
run ``--calls`` chat calls between them (each a new conversation: a shared system prompt, a question of
its own), ``--max-new-tokens`` tokens each, greedy. The embedded backends batch the calls in flight (the
V4 engine's steps, the HF generator's ragged batch). Reported per level: output tokens/s, the process's
CPU seconds and tokens per CPU second (less sensitive than wall time to other work on a shared machine),
calls/s, mean latency per call, batched forward steps, and throughput relative to one client; the levels run
interleaved ``--repeats`` times and each keeps its best round (a shared machine's load varies).

    python benchmarks/model_service.py [--models smollm2 deepseek-v4:random-tiny] [--levels 1 4 8]
        [--calls 8] [--max-new-tokens 32] [--repeats 2]

Prints a table and writes benchmarks/results/model_service.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from deepscout.model_runtime.chat import ChatModel, load_chat_model, usage_of
from deepscout.model_runtime.chat.backends.embedded_hf import EmbeddedHFChatModel
from deepscout.model_runtime.chat.backends.embedded_v4 import EmbeddedV4ChatModel
from deepscout.model_runtime.chat.backends.smollm2 import fetch_smollm2
from deepscout.process import configure_process
from deepscout.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "model_service.json"
SYSTEM = "You are a careful research assistant. Answer in one or two sentences and cite your sources."
TOPICS = ["lighthouses", "volcanoes", "glaciers", "comets", "coral reefs", "deserts", "rivers", "tides"]


def steps_of(model: ChatModel) -> int:
    """Batched forward steps the model has run so far."""
    if isinstance(model, EmbeddedV4ChatModel):
        return model.runtime.engine.steps
    if isinstance(model, EmbeddedHFChatModel):
        return model.generator.steps
    return 0


def conversations(calls: int) -> list[list[BaseMessage]]:
    tag = uuid.uuid4().hex[:8]
    return [
        [
            SystemMessage(SYSTEM),
            HumanMessage(f"({tag}-{i}) Tell me one fact about {TOPICS[i % len(TOPICS)]}."),
        ]
        for i in range(calls)
    ]


def run_level(model: ChatModel, clients: int, calls: int, max_new_tokens: int) -> dict[str, Any]:
    work = conversations(calls)
    latencies: list[float] = []

    def one(messages: list[BaseMessage]) -> int:
        started = time.perf_counter()
        reply = model.invoke(messages, max_new_tokens=max_new_tokens)
        latencies.append(time.perf_counter() - started)
        return usage_of(reply).output_tokens

    steps = steps_of(model)
    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(one, work))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "clients": clients,
        "calls": calls,
        "output_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "cpu_s": round(cpu, 2),
        "tokens_per_cpu_s": round(tokens / cpu, 2),
        "calls_per_s": round(calls / wall, 3),
        "mean_latency_s": round(sum(latencies) / len(latencies), 2),
        "steps": steps_of(model) - steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "deepseek-v4:random-tiny"])
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the levels; the best is kept")
    args = parser.parse_args()
    configure_process()
    settings = Settings()
    results: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "calls": args.calls,
        "max_new_tokens": args.max_new_tokens,
        "models": {},
    }
    header = ("clients", "tokens", "wall s", "tok/s", "cpu s", "tok/cpu", "lat s")
    print(f"{'model':<26}" + "".join(f"{name:>8}" for name in header) + f"{'steps':>7}{'x1':>7}")
    for spec in args.models:
        if spec == "smollm2":
            fetch_smollm2(settings, quiet=True)
        model = load_chat_model(spec, settings=settings)
        model.invoke(conversations(1)[0], max_new_tokens=2)  # warm up (grammar, threads, first forward)
        # levels interleaved, best of --repeats each: a shared machine's load spreads over all levels
        runs = [
            [run_level(model, clients, args.calls, args.max_new_tokens) for clients in args.levels]
            for _ in range(args.repeats)
        ]
        rows = [max(level, key=lambda row: row["tokens_per_s"]) for level in zip(*runs, strict=True)]
        for row in rows:
            row["speedup"] = round(row["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
            print(
                f"{spec:<26}{row['clients']:>8}{row['output_tokens']:>8}{row['wall_s']:>8}"
                f"{row['tokens_per_s']:>8}{row['cpu_s']:>8}{row['tokens_per_cpu_s']:>8}"
                f"{row['mean_latency_s']:>8}{row['steps']:>7}{row['speedup']:>7}"
            )
        results["models"][spec] = rows
        if isinstance(model, EmbeddedV4ChatModel):
            model.runtime.close()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
