"""Constrained vs unconstrained tool calling on the embedded SmolLM2: schema-valid rate and cost per token.

For the first N HotpotQA questions, SmolLM2 is asked (same prompt, greedy) to call a search tool,
once free-running and once under the llguidance JSON-schema grammar. A turn counts as *valid* when it
parses as JSON and satisfies the tool-call schema; *grounded* when every search query shares a content
word with the question (valid is not useful: this is a crude usefulness check). Per-token figures are
decode time per generated token, and the grammar's own share of it.

    python benchmarks/constrained_decoding.py [--n 20] [--max-new-tokens 96]

Prints a table and writes benchmarks/results/constrained_decoding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from deepscout.model_runtime.chat import load_chat_model
from deepscout.model_runtime.chat.backends.embedded_hf import EmbeddedHFChatModel
from deepscout.model_runtime.chat.backends.smollm2 import fetch_smollm2
from deepscout.model_runtime.chat.constrained import schema_errors
from deepscout.settings import Settings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "constrained_decoding.json"
SYSTEM = "You are a research assistant. Find the facts needed to answer the user's question in the corpus."
STOPWORDS = {
    "what",
    "which",
    "when",
    "where",
    "who",
    "whom",
    "whose",
    "that",
    "this",
    "with",
    "from",
    "were",
    "was",
    "the",
    "and",
    "for",
    "are",
    "did",
    "does",
    "how",
    "many",
    "much",
    "both",
    "have",
    "has",
    "is",
}


class SearchArgs(BaseModel):
    query: str = Field(description="A short keyword query naming an entity and the fact sought.")


@tool(args_schema=SearchArgs)
def search_corpus(query: str) -> str:
    """Search the local corpus; returns the best passages with their source ids."""
    return ""


class ReadArgs(BaseModel):
    source_id: int = Field(description="The id of a source listed in earlier search results.")


@tool(args_schema=ReadArgs)
def read_document(source_id: int) -> str:
    """Read a whole stored document by its source id."""
    return ""


def content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2 and w not in STOPWORDS}


def judge(text: str, schema: dict[str, Any], question: str) -> tuple[bool, bool]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False, False
    if schema_errors(schema, value):
        return False, False
    queries = [call["arguments"]["query"] for call in value if call["name"] == "search_corpus"]
    grounded = bool(queries) and all(content_words(q) & content_words(question) for q in queries)
    return True, grounded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--hotpotqa", type=Path, default=REPO.parent / "shared" / "data" / "hotpotqa")
    args = parser.parse_args()
    settings = Settings()
    fetch_smollm2(settings, log=print)
    model = load_chat_model("smollm2", settings=settings)
    assert isinstance(model, EmbeddedHFChatModel)
    questions = [row["question"] for row in json.loads((args.hotpotqa / "hotpotqa_train.json").read_text())][
        : args.n
    ]
    modes: dict[str, dict[str, Any]] = {}
    examples: list[dict[str, Any]] = []
    for constrained in (False, True):
        name = "constrained" if constrained else "unconstrained"
        valid = grounded = tokens = 0
        decode_s = grammar_s = 0.0
        for question in questions:
            messages = [SystemMessage(SYSTEM), HumanMessage(question)]
            raw = model.decode_raw(
                messages,
                tools=[search_corpus, read_document],
                constrained=constrained,
                max_new_tokens=args.max_new_tokens,
            )
            ok, useful = judge(raw.text, raw.schema, question)
            valid += ok
            grounded += useful
            tokens += raw.tokens
            decode_s += raw.decode_seconds
            grammar_s += raw.grammar_seconds
            examples.append(
                {"mode": name, "question": question, "output": raw.text, "valid": ok, "grounded": useful}
            )
            print(f"[{name}] valid={ok!s:5} grounded={useful!s:5} {raw.text[:110]!r}", flush=True)
        modes[name] = {
            "prompts": len(questions),
            "schema_valid": valid,
            "schema_valid_rate": valid / len(questions),
            "grounded": grounded,
            "generated_tokens": tokens,
            "ms_per_token": 1000 * decode_s / max(tokens, 1),
            "grammar_ms_per_token": 1000 * grammar_s / max(tokens, 1),
        }
    print()
    print(f"{'mode':<14} {'valid':>9} {'grounded':>9} {'tokens':>7} {'ms/token':>9} {'grammar ms/token':>17}")
    for name, row in modes.items():
        valid, grounded, n = row["schema_valid"], row["grounded"], row["prompts"]
        print(
            f"{name:<14} {valid:>4}/{n:<4} {grounded:>4}/{n:<4} {row['generated_tokens']:>7}"
            f" {row['ms_per_token']:>9.1f} {row['grammar_ms_per_token']:>17.2f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "constrained_decoding",
                "model": "smollm2 (SmolLM2-135M-Instruct, float32, CPU)",
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": sys.version.split()[0],
                },
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "max_new_tokens": args.max_new_tokens,
                "modes": modes,
                "examples": examples,
            },
            indent=2,
        )
    )
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
