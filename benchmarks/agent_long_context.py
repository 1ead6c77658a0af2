"""The research agent end to end on the embedded DeepSeek-V4 runtime, reading until its context is long.

The model is random: the 43-layer V4-Flash-shaped stack of ``long_context.py`` (bfloat16, fused kernels,
``--experts`` routed experts of real width), or with ``--tiny`` the ``deepseek-v4:random-tiny`` config
(float32, reference kernels) for a CPU smoke run; both speak through the real V4 tokenizer and chat
format, on the engine behind a :class:`V4Runtime` (what a ``deepseek-v4:`` spec loads), so every part of
the path is real but the answers are noise. This measures plumbing and speed, not answer quality.

How the agent reaches a long context through its normal reading path: the context manager appends every
document read whole as its own user turn (append-only, so each model call prefills only the new tokens)
while it fits the window. The benchmark builds a corpus of long documents in a temporary home (runs of
consecutive HotpotQA passages, about ``--doc-tokens`` tokens each, the corpus wrapping around), gives the
runtime a window with room past ``--context``, and sets the budgets so that reading stops only when the
documents read fill ``--context`` tokens: ``max_documents`` is that many documents, rounds and tool
calls are at their maximum, the wall time is unbounded. Later rounds go on because the bridge-entity
follow-ups (capitalised names in what was read; no model involved) always find unread documents; the
model's own proposals (one per round, decoded free, then under the query grammar when the free reply is
no JSON) are noise and are filtered out, and its answer falls back to quoted sentences. Model outputs are
capped at 16 tokens and structured output is not retried, so the run is dominated by prefill.

Reported per model call (each is one engine request: the plan, each round's reflection, the answer; a
reflection whose free reply is not JSON is followed by its grammar-constrained retry): the round, the
node and how it decoded, prompt tokens (the context length), tokens prefilled vs reused from the
engine's sessions and prefix cache, output tokens, wall seconds (in the runtime: rendering and tokenizing
the prompt are not in it). The runtime records them (:class:`RecordingRuntime`): the agent's trace drops
the usage of a structured call whose output is invalid, and random weights make many such. Totals:
tokens prefilled vs reused, reuse ratio, seconds per call, model time, whole run wall time (the agent's
host-side work included: context counting, bridge entities, searches), documents read, stop reason.

    python benchmarks/agent_long_context.py                                        # GPU, 256K tokens
    python benchmarks/agent_long_context.py --context 65536 --layers 8
    python benchmarks/agent_long_context.py --tiny --device cpu --context 4096    # CPU smoke run

Prints each call as it completes (a run cut short keeps them), then a table, and writes
``benchmarks/results/agent_long_context.json`` (or ``--out PATH``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Generator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from annotated_types import Le
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from long_context import flash_stack

from deepscout.agent import prompts
from deepscout.agent.api import ResearchResult, research
from deepscout.agent.context import DocumentText, document_message
from deepscout.agent.conversation import opening
from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.agent.run_context import Event
from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.ingest import CorpusDocument
from deepscout.model_runtime.chat.backends.embedded_v4 import EmbeddedV4ChatModel
from deepscout.model_runtime.chat.embedded_base import GenerationOutcome
from deepscout.model_runtime.v4.chat_format.tokenizer import V4Tokenizer, load_v4_tokenizer
from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.runtime import BLOCK_TOKENS, V4Runtime, random_tiny_args
from deepscout.process import configure_process
from deepscout.settings import Settings, V4Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "agent_long_context.json"
HOTPOTQA = Path(os.environ.get("DEEPSCOUT_HOTPOTQA_DIR", REPO.parent / "shared" / "data" / "hotpotqa"))
OUTPUT_TOKENS = 16
"""Tokens each model call may write (the least the options allow): the run measures prefill."""


def budget_limit(name: str) -> int:
    """The largest value :class:`Budgets` allows for the field ``name``."""
    for rule in Budgets.model_fields[name].metadata:
        if isinstance(rule, Le) and isinstance(rule.le, int):
            return rule.le
    raise ValueError(f"Budgets.{name} has no upper limit")


class RecordingRuntime(V4Runtime):
    """The V4 runtime, recording each engine request it serves (usage and wall time), labelled with the
    agent node and round that made it (set by :class:`NodeLabels` and the run's events)."""

    def __init__(
        self, model: DeepseekV4Model, tokenizer: V4Tokenizer, engine: Engine, *, context_window: int
    ) -> None:
        super().__init__(model, tokenizer, engine, context_window=context_window)
        self.calls: list[dict[str, Any]] = []
        self.node = "?"
        self.round = 0

    def stream_tokens(
        self, prompt_ids: Sequence[int], **options: Any
    ) -> Generator[int, None, GenerationOutcome]:
        started = time.perf_counter()
        outcome = yield from super().stream_tokens(prompt_ids, **options)
        usage = outcome.usage
        self.calls.append(
            {
                "round": self.round,
                "node": self.node,
                "decoding": "free" if options["guide"] is None else "grammar",
                "prompt_tokens": usage.prompt_tokens,
                "prefilled_tokens": usage.computed_tokens,
                "reused_tokens": usage.reused_tokens,
                "output_tokens": usage.output_tokens,
                "prefill_s": round(outcome.prefill_seconds, 3),
                "wall_s": round(time.perf_counter() - started, 3),
            }
        )
        print(f"call {len(self.calls)}: {self.calls[-1]}", flush=True)  # a cut-short run keeps its calls
        return outcome

    def on_event(self, event: Event) -> None:
        """Follow the run's rounds (every event of a round carries its number)."""
        if isinstance(event.get("step"), int):
            self.round = event["step"]


class NodeLabels(BaseCallbackHandler):
    """Tells the runtime which agent node (LangGraph's ``langgraph_node``) each model call comes from."""

    def __init__(self, runtime: RecordingRuntime) -> None:
        self.runtime = runtime

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.runtime.node = str((metadata or {}).get("langgraph_node", "?"))


def build_model(opts: argparse.Namespace, tokenizer: V4Tokenizer, window: int) -> DeepseekV4Model:
    """``--tiny``: the ``random-tiny`` config, its positions stretched to ``window``; else the V4-Flash-shaped
    stack of ``long_context.py`` (a million positions)."""
    device = torch.device(opts.device)
    if opts.tiny:
        tiny = random_tiny_args(tokenizer.vocab_size)
        args = replace(tiny, max_position_embeddings=max(window, tiny.max_position_embeddings))
        return DeepseekV4Model.random(args, seed=0, dtype=torch.float32, device=device).eval()
    return flash_stack(opts.layers, opts.experts, device)


def start_runtime(
    model: DeepseekV4Model, tokenizer: V4Tokenizer, opts: argparse.Namespace, window: int
) -> RecordingRuntime:
    """The engine (a pool of two windows, as ``load_runtime`` sizes it) warmed up on ``--warmup`` random
    tokens (kernel compilation is not the agent's time), and the runtime on it."""
    config = EngineConfig.model_validate(
        {
            "kv_dtype": "float32" if opts.tiny else "bfloat16",
            "num_blocks": 2 * -(-window // BLOCK_TOKENS),
            "max_running": 2,
            "num_state_slots": 2 + EngineConfig.model_fields["max_idle_sessions"].default,
            "prefill_chunk": opts.chunk,
            "max_tokens_per_step": opts.chunk,
            "device": opts.device,
        }
    )
    engine = Engine(model, config)
    if opts.warmup:
        ids = torch.randint(
            2, model.args.vocab_size, (opts.warmup,), generator=torch.Generator().manual_seed(1)
        )
        engine.generate(
            [GenerationRequest(prompt_ids=ids.tolist(), max_new_tokens=2, sampling=SamplingParams())]
        )
    return RecordingRuntime(model, tokenizer, engine, context_window=window)


def long_documents(passages: Sequence[tuple[str, str]], *, count: int, chars: int) -> list[CorpusDocument]:
    """``count`` documents of ``chars`` characters: runs of consecutive titled passages, each starting at
    another passage (the corpus wraps around), titled by their first passage."""
    stride = max(1, len(passages) // count)
    docs = []
    for i in range(count):
        paragraphs: list[str] = []
        size = 0
        position = i * stride
        while size < chars:
            title, text = passages[position % len(passages)]
            paragraphs.append(f"{title}. {text}")
            size += len(paragraphs[-1]) + 2
            position += 1
        first = passages[(i * stride) % len(passages)][0]
        docs.append(
            CorpusDocument(
                doc_id=f"long-{i}", title=f"{first} (part {i})", text="\n\n".join(paragraphs)[:chars]
            )
        )
    return docs


def documents_needed(chat: EmbeddedV4ChatModel, question: str, target: int, sample: CorpusDocument) -> int:
    """Documents like ``sample`` that bring the agent's context to ``target`` tokens: the opening turns, then
    per round a document and a reflection (its instruction and a short reply)."""
    start = opening(question)
    base = chat.count_tokens(start)
    doc = DocumentText(n=1, source_id=1, title=sample.title, url=None, text=sample.text)
    reflection = [
        HumanMessage(content=prompts.REFLECT_INSTRUCTION.format(question=question, n=1, used="")),
        AIMessage(content='{"next_queries":[]}'),
    ]
    per_round = chat.count_tokens([*start, document_message(doc), *reflection]) - base
    documents = math.ceil(max(1, target - base) / per_round)
    most = budget_limit("max_documents")
    if documents > most:
        raise SystemExit(
            f"a context of {target} tokens needs {documents} documents of {per_round} tokens with their "
            f"rounds, more than the agent's limit of {most}; raise --doc-tokens"
        )
    return documents


def run(opts: argparse.Namespace) -> dict[str, Any]:
    configure_process()
    corpus = json.loads((HOTPOTQA / "hotpotqa_train_corpus.json").read_text())
    passages = [(title, "".join(sentences)) for title, sentences in corpus.items()]
    question = json.loads((HOTPOTQA / "hotpotqa_train.json").read_text())[0]["question"]
    tokenizer = load_v4_tokenizer()
    sample = "\n\n".join(text for _, text in passages[:400])
    chars_per_token = len(sample) / len(tokenizer.encode(sample))
    doc_tokens = opts.doc_tokens or max(256, opts.context // 40)
    doc_chars = int(doc_tokens * chars_per_token)
    # Room past the target for the last documents, the reflections (their instruction lists every query
    # searched, so it grows round by round) and the answer: the context manager must never cut passages.
    window = opts.context + opts.context // 4 + 2 * doc_tokens + 4096
    start = time.perf_counter()
    model = build_model(opts, tokenizer, window)
    runtime = start_runtime(model, tokenizer, opts, window)
    init_s = time.perf_counter() - start
    v4 = V4Settings(structured_retries=0, max_new_tokens=OUTPUT_TOKENS)
    chat = EmbeddedV4ChatModel.from_runtime(
        runtime,
        model_name="deepseek-v4:random-tiny" if opts.tiny else f"deepseek-v4:random-flash-{opts.layers}",
        callbacks=[NodeLabels(runtime)],
        **EmbeddedV4ChatModel.fields_from(v4, exclude={"context_window"}),
    )
    documents = documents_needed(
        chat, question, opts.context, long_documents(passages, count=1, chars=doc_chars)[0]
    )
    options = ResearchOptions(
        budgets=Budgets(
            max_steps=budget_limit("max_steps"),
            max_documents=documents,
            max_tool_calls=budget_limit("max_tool_calls"),
            wall_time_s=1e9,
        ),
        queries_per_step=1,
        hits_per_query=10,
        reads_per_step=20,
        read_chars=max(500, doc_chars),
        plan_max_tokens=OUTPUT_TOKENS,
        reflect_max_tokens=OUTPUT_TOKENS,
        answer_max_tokens=OUTPUT_TOKENS,
    )
    with tempfile.TemporaryDirectory(prefix="deepscout-agent-long-context-") as home:
        settings = Settings(home=Path(home), model=chat.model_name, v4=v4)
        database = open_database(settings)
        CorpusIndex(database.session_factory).add(
            long_documents(passages, count=2 * documents + 10, chars=doc_chars), collection="long"
        )
        start = time.perf_counter()
        result = research(
            question,
            settings=settings,
            options=options,
            model=chat,
            on_event=runtime.on_event,
            database=database,
        )
        wall_s = time.perf_counter() - start
        database.dispose()
    runtime.close()
    return report(opts, runtime.calls, result, wall_s=wall_s, init_s=init_s, doc_tokens=doc_tokens)


def report(
    opts: argparse.Namespace,
    calls: list[dict[str, Any]],
    result: ResearchResult,
    *,
    wall_s: float,
    init_s: float,
    doc_tokens: int,
) -> dict[str, Any]:
    prefilled = sum(call["prefilled_tokens"] for call in calls)
    reused = sum(call["reused_tokens"] for call in calls)
    model_s = sum(call["wall_s"] for call in calls)
    reads = [step for step in result.trace if step["node"] == "read"]
    return {
        "model": "random-tiny" if opts.tiny else "random-flash",
        "layers": None if opts.tiny else opts.layers,
        "experts": None if opts.tiny else opts.experts,
        "device": opts.device,
        "target_context": opts.context,
        "doc_tokens": doc_tokens,
        "init_s": round(init_s, 1),
        "documents_read": len(result.sources),
        "rounds": result.usage.steps,
        "final_context_tokens": reads[-1]["detail"]["context_tokens"] if reads else 0,
        "max_prompt_tokens": max((call["prompt_tokens"] for call in calls), default=0),
        "stop_reason": result.stop_reason,
        "answer_status": result.status,
        "model_calls": len(calls),
        "prefilled_tokens": prefilled,
        "reused_tokens": reused,
        "reuse_ratio": round(reused / max(1, prefilled + reused), 3),
        "model_s": round(model_s, 2),
        "s_per_call": round(model_s / max(1, len(calls)), 3),
        "wall_s": round(wall_s, 2),
        "calls": calls,
        "steps": [
            {key: step[key] for key in ("step", "node", "seconds", "tool_calls")}
            | {"context_tokens": step["detail"].get("context_tokens")}
            for step in result.trace
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", type=int, default=262144, help="tokens of documents to read")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=43)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--tiny", action="store_true", help="the random-tiny config (float32), for a CPU run")
    parser.add_argument(
        "--doc-tokens", type=int, default=None, help="tokens per document (default: context/40)"
    )
    parser.add_argument("--chunk", type=int, default=8192, help="prefill tokens per engine step")
    parser.add_argument(
        "--warmup", type=int, default=None, help="kernel warm-up tokens (default: 16K on cuda)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args()
    if opts.warmup is None:
        opts.warmup = 16384 if opts.device.startswith("cuda") else 0
    result = run(opts)
    print(
        f"{'#':>3} {'round':>5} {'call':<16} {'prompt':>8} {'prefilled':>9} {'reused':>8} {'out':>4} "
        f"{'wall s':>8}"
    )
    for number, call in enumerate(result["calls"], 1):
        kind = f"{call['node']}/{call['decoding']}"
        print(
            f"{number:>3} {call['round']:>5} {kind:<16} {call['prompt_tokens']:>8} "
            f"{call['prefilled_tokens']:>9} {call['reused_tokens']:>8} {call['output_tokens']:>4} "
            f"{call['wall_s']:>8}"
        )
    for key, value in result.items():
        if key not in ("calls", "steps"):
            print(f"{key:>22} {value}")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(
        json.dumps({"benchmark": "agent_long_context", "torch": torch.__version__, **result}, indent=2) + "\n"
    )
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
