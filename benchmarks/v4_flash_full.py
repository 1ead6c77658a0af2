"""Full-size DeepSeek-V4-Flash on the GPUs of one machine: random weights in the shipped precisions,
expert-parallel over `--devices`, measured against the busiest GPU's floors and the serving peer.

The model is V4-Flash at real size (43 layers, 256 routed experts top-6 + 1 shared, the MTP layer; FP8
block-scaled projections, MXFP4 routed experts, BF16 embedding and head), launched as the runtime runs it
(`parallel/launcher.py`, one process per GPU, NCCL): every rank draws its shard's random weights on its GPU
(`RandomSource`: only its share of the experts, `--moe-sharding`, is ever allocated). Measured, for each
`--contexts` length:

* init: seconds until every rank holds its weights; memory per GPU (`nvidia-smi`), after the run;
* prefill of a fresh prompt of that length (`--chunk` tokens a step), after a warm-up prefill that
  compiles the kernels; tokens/s and the ratio to its compute floor;
* decode ms/step at each `--batch` on sequences forked from the prefilled prompt (the prefix cache shares
  its blocks; the median of `--repeats` timed runs, each run in the JSON), beside the byte floor — the
  bytes rank 0 reads per step (its shares of the heads, the shared expert, the head and the routed
  experts it holds that the step's tokens touch, every other dense weight, the whole KV), over the copy
  rate of that GPU measured in the same run — and the peer's 3.28 ms/token (SGLang, FP8, four H200s,
  with MTP).

No speculation: random weights make MTP drafts almost never accepted.

Prints a table and writes `benchmarks/results/v4_flash_full.json` (or `--json PATH`), rewritten as each
figure comes in.

    python benchmarks/v4_flash_full.py --devices cuda:0,cuda:1 --contexts 8192,131072 --batch 1,8,32
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

import torch
from device_rates import ceilings
from long_context import (
    active_parameters,
    decode_bytes,
    decode_ms_per_step,
    decode_ms_runs,
    prefill,
    prefill_flops,
    profile_decode,
    weight_bytes_read,
)

from deepscout.model_runtime.v4.engine import EngineConfig, GenerationRequest, SamplingParams
from deepscout.model_runtime.v4.model.moe import MoeSharding
from deepscout.model_runtime.v4.model_config import ModelArgs, flash_shaped
from deepscout.model_runtime.v4.parallel.launcher import LaunchSpec, RandomSource, launch

PEER_MS_PER_TOKEN = 3.28
"""SGLang serving V4-Flash (FP8, TP=4 on H200, MTP on), batch 1, 8K in / 1K out."""


def gpu_memory_gib() -> list[float]:
    """Memory in use on each GPU (every process's), from nvidia-smi."""
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [round(int(line) / 1024, 1) for line in out.split()]


def rank_active_parameters(args: ModelArgs, world_size: int) -> float:
    """Parameters one token's forward multiplies by on the busiest rank: all of the dense ones (attention
    and the shared expert run on every rank) and its share of the routed experts."""
    routed = args.num_experts_per_tok * 3 * args.hidden_size * args.moe_intermediate_size
    return active_parameters(args) - routed * args.num_hidden_layers * (1 - 1 / world_size)


def run(opts: argparse.Namespace) -> dict[str, Any]:
    devices = tuple(opts.devices.split(","))
    contexts = [int(c) for c in opts.contexts.split(",")]
    batches = [int(b) for b in opts.batch.split(",")]
    rates = ceilings(torch.device(devices[0]))
    copy_rate, mm_rate = rates.copy_bytes_per_s, rates.matmul_flop_per_s
    args = flash_shaped(43)
    blocks = sum(-(-(c + opts.decode + 1) // 128) for c in contexts) + -(-opts.warmup // 128)
    config = EngineConfig(
        kv_dtype=opts.kv,
        num_blocks=blocks + (max(batches) + 1) * (opts.decode // 128 + 2),
        num_state_slots=max(batches) + 2,
        max_running=max(batches) + 1,
        prefill_chunk=opts.chunk,
        max_tokens_per_step=opts.chunk,
        device=devices[0],
        overlap=not opts.no_overlap,
    )
    spec = LaunchSpec(
        source=RandomSource(args, seed=0),
        devices=devices,
        engine=config,
        rendezvous=Path(tempfile.mkdtemp()) / "rendezvous",
        dtype=torch.bfloat16,
        weights="shipped",
        moe_sharding=opts.moe_sharding,
        kernels="triton",
        timeout_s=600,
    )
    result: dict[str, Any] = {
        "devices": list(devices),
        "kv": opts.kv,
        "overlap": config.overlap,
        "moe_sharding": opts.moe_sharding,
        "copy_tb_s": round(copy_rate / 1e12, 2),
        "matmul_tflop_s": round(mm_rate / 1e12, 1),
        "contexts": {},
    }

    def request(ids: list[int], tokens: int) -> GenerationRequest:
        return GenerationRequest(prompt_ids=ids, max_new_tokens=tokens, sampling=SamplingParams())

    def prompt(length: int, seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(2, args.vocab_size, (length,), generator=gen).tolist()

    start = time.perf_counter()
    with launch(spec) as launched:
        engine = launched.engine
        engine.step()  # returns once every rank has loaded and stepped
        model = engine.engine.model
        result["init_s"] = round(time.perf_counter() - start, 1)
        result["rank0_weights_gib"] = round(
            sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**30, 2
        )
        result["gpu_memory_gib_loaded"] = gpu_memory_gib()
        report(opts.json, result)
        start = time.perf_counter()
        warm = prompt(opts.warmup, 0)
        engine.generate([request(warm, 1)])
        for batch in batches:  # compiles each batch's kernels before anything is timed
            decode_ms_per_step(engine, request(warm, 4), batch)
        result["warmup_s"] = round(time.perf_counter() - start, 1)
        report(opts.json, result)
        active = rank_active_parameters(args, len(devices))
        for seed, context in enumerate(contexts, start=1):
            ids = prompt(context, seed)
            chunk_s = prefill(engine, request(ids, 1), budget_s=opts.prefill_budget)
            floor_s = prefill_flops(args, int(active), context) / mm_rate
            row: dict[str, Any] = {
                "prefill_s": round(sum(chunk_s), 2),
                "prefill_tok_s": round(context / sum(chunk_s), 1),
                "prefill_floor_s": round(floor_s, 2),
                "prefill_x_floor": round(sum(chunk_s) / floor_s, 2),
            }
            for batch in batches:
                runs = decode_ms_runs(engine, request(ids, opts.decode + 2), batch, opts.repeats)
                ms = statistics.median(runs)
                floor_ms = (
                    1000 * decode_bytes(args, weight_bytes_read(model, batch), context, batch) / copy_rate
                )
                row[f"decode_b{batch}_ms"] = round(ms, 2)
                row[f"decode_b{batch}_ms_runs"] = [round(r, 2) for r in runs]
                row[f"decode_b{batch}_tok_s"] = round(1000 * batch / ms, 1)
                row[f"decode_b{batch}_floor_ms"] = round(floor_ms, 2)
                row[f"decode_b{batch}_x_floor"] = round(ms / floor_ms, 2)
            row["decode_b1_x_peer"] = round(row.get("decode_b1_ms", float("nan")) / PEER_MS_PER_TOKEN, 2)
            result["contexts"][str(context)] = row
            report(opts.json, result)
        result["graph_replays"] = (
            engine.engine.runner.decoder.graph_replays if engine.engine.runner.decoder else 0
        )
        result["gpu_memory_gib"] = gpu_memory_gib()
        result["rank0_peak_gib"] = round(torch.cuda.max_memory_allocated(devices[0]) / 2**30, 2)
        report(opts.json, result)
        if opts.profile:
            decoder = engine.engine.runner.decoder
            profile_decode(engine, decoder, request(prompt(contexts[0], 1), 12), 1, opts.trace)
    return result


def report(path: Path, result: dict[str, Any]) -> None:
    """Print the figures so far and write them to `path` (rewritten as the run goes, so a run cut short
    keeps what it measured)."""
    print(json.dumps(result), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"benchmark": "v4_flash_full", "torch": torch.__version__, **result}, indent=2) + "\n"
    )


def print_table(result: dict[str, Any], batches: list[int]) -> None:
    print(
        f"init {result['init_s']} s, warm-up {result['warmup_s']} s, rank 0 weights "
        f"{result['rank0_weights_gib']} GiB, GPU memory {result['gpu_memory_gib']} GiB, "
        f"copy {result['copy_tb_s']} TB/s, matmul {result['matmul_tflop_s']} TFLOP/s"
    )
    header = ["context", "prefill s", "tok/s", "x floor"]
    for b in batches:
        header += [f"b{b} ms", f"b{b} tok/s", f"b{b} floor ms", f"b{b} x floor"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for context, row in result["contexts"].items():
        cells = [context, row["prefill_s"], row["prefill_tok_s"], row["prefill_x_floor"]]
        for b in batches:
            cells += [row[f"decode_b{b}_{k}"] for k in ("ms", "tok_s", "floor_ms", "x_floor")]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print(f"peer: {PEER_MS_PER_TOKEN} ms/token (SGLang, 4x H200, FP8, MTP)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default="cuda:0,cuda:1")
    parser.add_argument("--contexts", default="8192,131072")
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument(
        "--no-overlap", action="store_true", help="read each decode step's tokens before the next step"
    )
    parser.add_argument("--kv", choices=["bfloat16", "paper"], default="bfloat16")
    parser.add_argument(
        "--moe-sharding",
        choices=list(get_args(MoeSharding)),
        default="units",
        help="how the ranks share the routed experts: every expert's units, or whole experts",
    )
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed decode runs a batch (median shown)")
    parser.add_argument("--warmup", type=int, default=16384, help="tokens of the kernel warm-up prefill")
    parser.add_argument(
        "--prefill-budget", type=float, default=400.0, help="seconds before a prefill gives up"
    )
    parser.add_argument("--profile", action="store_true", help="print rank 0's GPU time per kernel of decode")
    parser.add_argument(
        "--trace", type=Path, default=None, help="with --profile: the graph-replayed steps' Chrome trace"
    )
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "v4_flash_full.json")
    opts = parser.parse_args()
    if opts.repeats < 1:
        parser.error(f"--repeats takes a positive count of timed decode runs, got {opts.repeats}")
    result = run(opts)
    print_table(result, [int(b) for b in opts.batch.split(",")])
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
