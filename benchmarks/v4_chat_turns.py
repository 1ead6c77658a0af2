"""A multi-turn research conversation on ``deepseek-v4:random-tiny`` through the chat interface.

Each turn adds a user message carrying HotpotQA passages (the shared dev set) to the conversation and
asks for a short answer. Three ways of running the same turns on the engine:

- ``session``: one chat model (one engine session): a turn prefills only what it adds;
- ``prefix cache``: a new session per turn: only full 128-token blocks of the shared prefix are reused;
- ``no reuse``: an engine without prefix caching and a new session per turn.

Prints prompt / reused / computed tokens and the time to the first token per turn, plus the cost of
rendering + tokenizing the prompt and of parsing DSML, and writes benchmarks/results/v4_chat_turns.json.
The weights are random (the output is noise); the shapes are the tiny test config with V4's vocabulary.

    python benchmarks/v4_chat_turns.py [--turns 4] [--hotpotqa DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from deepscout.model_runtime.chat import usage_of
from deepscout.model_runtime.chat.backends.embedded_v4 import EmbeddedV4ChatModel
from deepscout.model_runtime.v4.chat_format.conversions import turns_from_langchain
from deepscout.model_runtime.v4.chat_format.dsml_parser import parse_completion
from deepscout.model_runtime.v4.chat_format.messages import ToolCall
from deepscout.model_runtime.v4.chat_format.render import render_prompt, render_tool_calls
from deepscout.model_runtime.v4.engine import Engine, EngineConfig
from deepscout.model_runtime.v4.runtime import V4Runtime, load_runtime
from deepscout.settings import V4Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "v4_chat_turns.json"
DEFAULT_HOTPOTQA = REPO.parent / "shared" / "data" / "hotpotqa"


def passages(hotpotqa: Path, turns: int) -> list[str]:
    rows = json.loads((hotpotqa / "hotpotqa_train.json").read_text(encoding="utf-8"))
    texts = []
    for row in rows[:turns]:
        docs = [f"[{title}] " + "".join(sentences) for title, sentences in row["context"][:2]]
        texts.append(f"Documents:\n{chr(10).join(docs)}\n\nQuestion: {row['question']}")
    return texts


def run_turns(model_for_turn: Any, texts: list[str]) -> list[dict[str, Any]]:
    messages: list[BaseMessage] = [SystemMessage("You are a careful research assistant. Cite documents.")]
    rows = []
    for turn, text in enumerate(texts, start=1):
        messages.append(HumanMessage(text))
        model: EmbeddedV4ChatModel = model_for_turn()
        started = time.perf_counter()
        reply = model.invoke(messages)
        seconds = time.perf_counter() - started
        prefill = usage_of(reply).prefill()
        timings = reply.response_metadata["timings"]
        rows.append(
            {
                "turn": turn,
                **prefill,
                "first_token_s": timings["first_token_s"],
                "decode_tokens": timings["decode_tokens"],
                "total_s": round(seconds, 3),
            }
        )
        messages.append(reply)
    return rows


def encoding_costs(runtime: V4Runtime, texts: list[str]) -> dict[str, float]:
    messages: list[BaseMessage] = [SystemMessage("s"), *[HumanMessage(t) for t in texts]]
    turns = turns_from_langchain(messages)
    started = time.perf_counter()
    for _ in range(20):
        ids = runtime.tokenizer.encode(render_prompt(turns))
    render_ms = (time.perf_counter() - started) / 20 * 1000
    calls = [ToolCall("search", {"query": text[:200], "k": 5}) for text in texts]
    dsml = "reasoning</think>answer" + render_tool_calls(calls)
    started = time.perf_counter()
    for _ in range(20):
        parse_completion(dsml, thinking=True)
    parse_s = (time.perf_counter() - started) / 20
    return {
        "prompt_tokens": len(ids),
        "render_and_tokenize_ms": round(render_ms, 2),
        "dsml_chars": len(dsml),
        "dsml_parse_chars_per_s": round(len(dsml) / parse_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--hotpotqa", type=Path, default=DEFAULT_HOTPOTQA)
    args = parser.parse_args()
    texts = passages(args.hotpotqa, args.turns)
    runtime = load_runtime("random-tiny", V4Settings())
    fields: dict[str, Any] = {"model_name": "deepseek-v4:random-tiny", "max_new_tokens": 8}
    shared = EmbeddedV4ChatModel.from_runtime(runtime, **fields)

    def runtime_without_sessions(prefix_caching: bool) -> V4Runtime:
        """The same model on an engine that keeps no idle sessions (the router cannot continue one)."""
        options = {"num_blocks": 512, "max_idle_sessions": 0, "prefix_caching": prefix_caching}
        engine = Engine(runtime.model, EngineConfig.model_validate(options))
        return V4Runtime(runtime.model, runtime.tokenizer, engine, context_window=runtime.context_window)

    prefix_only, no_reuse = runtime_without_sessions(True), runtime_without_sessions(False)
    modes = {
        "session": lambda: shared,
        "prefix cache": lambda: EmbeddedV4ChatModel.from_runtime(prefix_only, **fields),
        "no reuse": lambda: EmbeddedV4ChatModel.from_runtime(no_reuse, **fields),
    }
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}",
        "modes": {},
    }
    print(
        f"{'mode':<13} {'turn':>4} {'prompt':>7} {'reused':>7} {'computed':>8} {'TTFT s':>7} {'total s':>7}"
    )
    for name, model_for_turn in modes.items():
        rows = run_turns(model_for_turn, texts)
        results["modes"][name] = rows
        for row in rows:
            print(
                f"{name:<13} {row['turn']:>4} {row['prompt_tokens']:>7} {row['reused_tokens']:>7} "
                f"{row['computed_tokens']:>8} {row['first_token_s']:>7.3f} {row['total_s']:>7.3f}"
            )
    results["encoding"] = encoding_costs(runtime, texts)
    print("encoding:", results["encoding"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
