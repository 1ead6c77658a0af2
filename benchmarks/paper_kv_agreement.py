"""The paper KV layout on the GPU against BF16 KV: bytes per token, greedy agreement and logit error.

The 43-layer V4-Flash-shaped stack of ``long_context.py`` (random bfloat16 weights, fused kernels) runs
one prompt of ``--context`` tokens through two engines that share the model: one keeps the compressed
entries as bfloat16 rows, the other in the paper layout (main entries FP8 e4m3 + BF16 RoPE dims, indexer
keys MXFP4), quantised on the device and read as stored by the kernels. Both then decode ``--steps``
tokens teacher-forced on the BF16 engine's greedy tokens (the paper engine is fed the same tokens, so one
disagreement does not derail the rest), through the device decode path (CUDA graphs).

Reported: KV bytes per token of each pool (allocated bytes over the tokens its blocks hold, the per-
sequence window state excluded) beside the paper's 3,450 B/token; the share of steps where the paper
engine's greedy token equals the BF16 one (and counting exact ties in the BF16 logits, which a
greedy argmax breaks arbitrarily, as agreements); the max and median over steps of the relative logit error
(max |Δ logit| / max |logit|); the top-1/top-2 logit gap at steps that disagree; decode ms/token of each.

    python benchmarks/paper_kv_agreement.py --context 8192 --steps 1000

Prints a table and writes ``benchmarks/results/paper_kv_agreement.json`` (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from long_context import flash_stack

from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from deepscout.model_runtime.v4.engine.engine_config import KvDtype
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model

PAPER_BYTES_PER_TOKEN = 3450


class Recorder:
    """A logits processor that keeps each step's logits and, when given tokens to follow, forces them."""

    def __init__(self, follow: list[int] | None = None) -> None:
        self.logits: list[torch.Tensor] = []
        self.follow = follow

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        self.logits.append(logits.clone())
        if self.follow is None:
            return logits
        forced = torch.full_like(logits, float("-inf"))
        forced[self.follow[len(generated)]] = 0.0
        return forced


def decode(
    model: DeepseekV4Model, kv_dtype: KvDtype, prompt: list[int], steps: int, recorder: Recorder
) -> dict[str, Any]:
    device = model.embed.weight.device
    blocks = -(-(len(prompt) + steps + 1) // 128) + 2
    config = EngineConfig(
        kv_dtype=kv_dtype,
        num_blocks=blocks,
        num_state_slots=2,
        max_running=1,
        prefill_chunk=8192,
        max_tokens_per_step=8192,
        device=str(device),
    )
    engine = Engine(model, config)
    sampling = SamplingParams(logits_processor=recorder)
    rid = engine.add_request(GenerationRequest(prompt_ids=prompt, max_new_tokens=steps, sampling=sampling))
    while not any(out.request_id == rid and out.new_token_ids for out in engine.step()):
        pass  # prefill, and the first token
    synchronize(device)
    start = time.perf_counter()
    tokens = 1
    while engine.has_unfinished():
        tokens += sum(len(out.new_token_ids) for out in engine.step())
    synchronize(device)
    ms = 1000 * (time.perf_counter() - start) / max(tokens - 1, 1)
    pool = engine.caches.kv
    result = {
        "kv_bytes_per_token": round(pool.nbytes / (pool.num_blocks * pool.block_tokens), 1),
        "kv_bytes_by_kind": pool.nbytes_by_kind(),
        "decode_ms_per_token": round(ms, 2),
        "graph_replays": engine.runner.decoder.graph_replays if engine.runner.decoder else 0,
    }
    del engine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(reference: list[torch.Tensor], paper: list[torch.Tensor]) -> dict[str, Any]:
    """Agreement of the greedy tokens; a disagreement is "tied" when the paper engine's token has the BF16
    engine's top logit too (an exact tie in the BF16 logits, broken the other way)."""
    agree, tied, errors, gaps = 0, 0, [], []
    for ref, got in zip(reference, paper, strict=True):
        errors.append(float((got - ref).abs().max() / ref.abs().max()))
        choice = int(got.argmax())
        if choice == int(ref.argmax()):
            agree += 1
            continue
        tied += int(ref[choice] == ref.max())
        top2 = ref.topk(2).values
        gaps.append(float(top2[0] - top2[1]))
    errors_t = torch.tensor(errors)
    return {
        "steps": len(reference),
        "greedy_agreement": round(agree / len(reference), 4),
        "greedy_agreement_ties_counted": round((agree + tied) / len(reference), 4),
        "disagreements": len(reference) - agree,
        "tied_disagreements": tied,
        "max_rel_logit_error": round(float(errors_t.max()), 5),
        "median_rel_logit_error": round(float(errors_t.median()), 5),
        "ref_top2_gap_at_disagreements": [round(g, 4) for g in gaps[:20]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=43)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args()
    model = flash_stack(opts.layers, opts.experts, torch.device("cuda"))
    vocab = model.args.vocab_size
    prompt = torch.randint(2, vocab, (opts.context,), generator=torch.Generator().manual_seed(1)).tolist()
    reference = Recorder()
    bf16 = decode(model, "bfloat16", prompt, opts.steps, reference)
    followed = [int(logits.argmax()) for logits in reference.logits]
    forced = Recorder(follow=followed)
    paper = decode(model, "paper", prompt, opts.steps, forced)
    result = {
        "context": opts.context,
        "layers": opts.layers,
        "paper_target_bytes_per_token": PAPER_BYTES_PER_TOKEN,
        "bf16": bf16,
        "paper": paper,
        **compare(reference.logits, forced.logits),
    }
    report(result, benchmark="paper_kv_agreement", path=opts.json)


def report(result: dict[str, Any], *, benchmark: str, path: Path | None) -> None:
    """Print `result` a key a line and write it as JSON to `path` (default
    `benchmarks/results/<benchmark>.json`)."""
    for key, value in result.items():
        print(f"{key:>32} {value}")
    path = path or Path(__file__).parent / "results" / f"{benchmark}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"benchmark": benchmark, "torch": torch.__version__, **result}, indent=2) + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
