"""Long-context prefill and decode of the V4-Flash-shaped stack through the engine, against its floors.

One process per context (`--context N`): the 43-layer V4-Flash-shaped stack (2 sliding, then CSA/HCA
alternating; real attention, indexer and expert widths, `--experts` routed experts instead of 256, top-6)
with random weights (bfloat16, or with `--weights shipped` FP8 block-scaled projections and MXFP4 routed
experts as official checkpoints store them) and a bfloat16 paged KV pool, on the fused kernels. Measured
end to end:

* prefill of N prompt tokens (`--chunk` tokens per step), after a warm-up prefill of `--warmup` other
  tokens that compiles the kernels (its time is reported apart, as `warmup_s`);
* decode ms/token at batch 1, and at batch 8 on eight sequences forked from the prefilled prompt (the
  prefix cache shares its blocks; each fork recomputes one prompt token, then decodes);
* peak device memory, and KV bytes per token (pool bytes in use / tokens held).

Floors, from an 8192³ bf16 matmul and a device-to-device copy timed in the same process: prefill FLOPs
(weights: 2 · active parameters per token; attention: 4 · heads · head_dim per key each query sees —
window, CSA's top-512, every HCA entry; the indexer: 2 · 64 · 128 per CSA key scored) over the matmul rate;
decode bytes (the weights a step touches once, as stored — of the routed experts the expected number a
batch touches — plus each layer's KV a token reads) over the copy rate.

Prints a table and writes `benchmarks/results/long_context_<N>.json` (or `--json PATH`).

    python benchmarks/long_context.py --context 8192
    python benchmarks/long_context.py --context 131072 --decode 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from device_rates import ceilings

from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from deepscout.model_runtime.v4.engine.decode_runner import DecodeRunner
from deepscout.model_runtime.v4.engine.engine import Steppable
from deepscout.model_runtime.v4.model.attention import Attention
from deepscout.model_runtime.v4.model.moe import MoE
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, WeightFormat, flash_shaped


def flash_stack(
    layers: int, experts: int, device: torch.device, weights: WeightFormat = "dense"
) -> DeepseekV4Model:
    """The V4-Flash-shaped stack: `layers` layers, `experts` routed experts (top-min(6, experts)), random
    weights on the fused kernels: bfloat16, or ("shipped") FP8 block-scaled projections and MXFP4 experts
    as official checkpoints store them."""
    args = replace(flash_shaped(layers), n_routed_experts=experts, num_experts_per_tok=min(6, experts))
    return DeepseekV4Model.random(
        args, seed=0, dtype=torch.bfloat16, device=device, kernels="triton", weights=weights
    ).eval()


def active_parameters(args: ModelArgs) -> int:
    """Parameters one token's forward multiplies by: all but the embedding and the idle routed experts
    (counted on a dense copy on the meta device, so any weight format counts the same)."""
    with torch.device("meta"):
        dense = DeepseekV4Model(args)
    total = 0
    for name, param in dense.named_parameters():
        if name.startswith("embed.") or name.startswith("mtp."):
            continue
        share = args.num_experts_per_tok / args.n_routed_experts if ".ffn.experts." in name else 1.0
        total += int(param.numel() * share)
    return total


def weight_bytes_read(model: DeepseekV4Model, batch: int) -> float:
    """Bytes of weights one decode step reads, as stored (BF16, or FP8/MXFP4 with their scales): all but
    the embedding; of the routed experts, the expected number a batch of independently routed tokens
    touches, E·(1 - (1 - k/E)^batch); of what a rank of expert parallelism reads a share of, that share
    (`read_fraction`)."""
    args = model.args
    k, experts = args.num_experts_per_tok, args.n_routed_experts
    touched = 1 - (1 - k / experts) ** batch
    total = 0.0
    for name, tensor in model.state_dict().items():
        weight = tensor.is_floating_point() or tensor.dtype == torch.uint8  # not the routing tables
        if name.startswith("embed.") or name.startswith("mtp.") or not weight:
            continue
        share = touched if ".ffn.experts." in name else read_fraction(model, name)
        total += tensor.numel() * tensor.element_size() * share
    return total


def read_fraction(model: DeepseekV4Model, name: str) -> float:
    """The fraction of the tensor `name` this rank reads: under expert parallelism its share of the query
    heads (`wq_b`, `wo_a`, `wo_b`, the sinks), of the shared expert's units or of the vocabulary (the head);
    all of anything else."""
    parts = name.split(".")
    if parts[0] == "head":
        vocab = model.vocab_parallelism
        return 1.0 if vocab is None else (vocab.rows.stop - vocab.rows.start) / model.args.vocab_size
    if "attn" in parts and parts[parts.index("attn") + 1] in ("wq_b", "wo_a", "wo_b", "attn_sink"):
        attn = model.get_submodule(".".join(parts[: parts.index("attn") + 1]))
        assert isinstance(attn, Attention)
        return (attn.heads.stop - attn.heads.start) / attn.n_heads
    if "shared_experts" in parts:
        moe = model.get_submodule(".".join(parts[: parts.index("shared_experts")]))
        assert isinstance(moe, MoE)
        if moe.parallelism is None:
            return 1.0
        units = moe.shared_units
        return 0.0 if units is None else (units.stop - units.start) / model.args.moe_intermediate_size
    return 1.0


def keys_seen(args: ModelArgs, kind: LayerKind, position: int) -> tuple[int, int]:
    """(attention keys, indexer keys scored) of a query at `position` on one layer."""
    window = min(args.sliding_window, position + 1)
    if kind is LayerKind.SLIDING:
        return window, 0
    entries = (position + 1) // args.ratio(kind)
    if kind is LayerKind.HCA:
        return window + entries, 0
    return window + min(args.index_topk, entries), entries


def prefill_flops(args: ModelArgs, active: int, context: int) -> float:
    per_key = 4 * args.num_attention_heads * args.head_dim
    per_index_key = 2 * args.index_n_heads * args.index_head_dim
    flops = 2.0 * active * context
    for kind in args.layer_types:
        # keys seen grow linearly with position: integrate at the chunk ends, exact enough for a floor
        attn = sum(keys_seen(args, kind, p)[0] for p in range(0, context, 64)) * 64
        index = sum(keys_seen(args, kind, p)[1] for p in range(0, context, 64)) * 64
        flops += per_key * attn + per_index_key * index
    return flops


def decode_bytes(args: ModelArgs, weight_bytes: float, context: int, batch: int) -> float:
    """Bytes one decode step must read: the weights it touches once, plus every row's KV (BF16)."""
    kv = 0
    for kind in args.layer_types:
        attn, index = keys_seen(args, kind, context)
        kv += 2 * (attn * args.head_dim + index * args.index_head_dim)
    return weight_bytes + batch * kv


def run(opts: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cuda")
    rates = ceilings(device)
    copy_rate, mm_rate = rates.copy_bytes_per_s, rates.matmul_flop_per_s
    start = time.perf_counter()
    model = flash_stack(opts.layers, opts.experts, device, opts.weights)
    args = model.args
    torch.cuda.synchronize()
    init_s = time.perf_counter() - start
    weights_gib = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**30
    blocks_per_seq = -(-(opts.context + opts.decode + 1) // 128)
    config = EngineConfig(
        kv_dtype="bfloat16",
        num_blocks=max(blocks_per_seq, -(-opts.warmup // 128)) + 9 * (opts.decode // 128 + 2),
        num_state_slots=10,
        max_running=9,
        prefill_chunk=opts.chunk,
        max_tokens_per_step=opts.chunk,
        device="cuda",
        overlap=not opts.no_overlap,
    )
    engine = Engine(model, config)
    prompt = torch.randint(
        2, args.vocab_size, (opts.context,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    torch.cuda.reset_peak_memory_stats()

    def request(tokens: int, ids: list[int] = prompt) -> GenerationRequest:
        return GenerationRequest(prompt_ids=ids, max_new_tokens=tokens, sampling=SamplingParams())

    other = torch.randint(2, args.vocab_size, (opts.warmup,), generator=torch.Generator().manual_seed(2))
    start = time.perf_counter()
    if opts.warmup:
        engine.generate([request(1, other.tolist())])
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    profiled = max(opts.context // opts.chunk - 1, 0) if opts.profile else None
    chunk_s = prefill(engine, request(1), budget_s=opts.prefill_budget, profile_step=profiled)
    prefill_s = sum(chunk_s)
    kv_bytes = engine.caches.kv.nbytes / config.num_blocks * blocks_per_seq
    result: dict[str, Any] = {
        "chunk_s": [round(t, 3) for t in chunk_s],
        "context": opts.context,
        "layers": opts.layers,
        "experts": opts.experts,
        "weights": opts.weights,
        "overlap": config.overlap,
        "weights_gib": round(weights_gib, 2),
        "init_s": round(init_s, 1),
        "warmup_s": round(warmup_s, 2),
        "prefill_s": round(prefill_s, 2),
        "prefill_tok_s": round(opts.context / prefill_s, 1),
        "kv_bytes_per_token": round(kv_bytes / opts.context, 1),
        "copy_tb_s": round(copy_rate / 1e12, 2),
        "matmul_tflop_s": round(mm_rate / 1e12, 1),
    }
    active = active_parameters(args)
    floor = prefill_flops(args, active, opts.context) / mm_rate
    result["prefill_floor_s"] = round(floor, 2)
    result["prefill_x_floor"] = round(prefill_s / floor, 2)
    for batch in (int(b) for b in opts.batch.split(",")):
        runs = decode_ms_runs(engine, request(opts.decode + 2), batch, opts.repeats)
        ms = statistics.median(runs)
        floor_ms = 1000 * decode_bytes(args, weight_bytes_read(model, batch), opts.context, batch) / copy_rate
        result[f"decode_b{batch}_ms_per_step"] = round(ms, 2)
        result[f"decode_b{batch}_ms_runs"] = [round(r, 2) for r in runs]
        result[f"decode_b{batch}_tok_s"] = round(1000 * batch / ms, 1)
        result[f"decode_b{batch}_floor_ms"] = round(floor_ms, 2)
        result[f"decode_b{batch}_x_floor"] = round(ms / floor_ms, 2)
    result["graph_replays"] = engine.runner.decoder.graph_replays
    if opts.profile:
        profile_decode(engine, engine.runner.decoder, request(12), opts.profile_batch, opts.trace)
    result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def start_copies(engine: Steppable, request: GenerationRequest, batch: int) -> None:
    """Add `batch` copies of `request` and step until each has sampled its first token (the prefix cache
    gives them the prefilled prompt; each recomputes its last prompt token)."""
    started: set[str] = set()
    ids = {engine.add_request(request) for _ in range(batch)}
    while started != ids:
        started.update(out.request_id for out in engine.step() if out.new_token_ids)


def decode_ms_runs(engine: Steppable, request: GenerationRequest, batch: int, repeats: int) -> list[float]:
    """`decode_ms_per_step` `repeats` times over (fresh copies each time). The tables report the median and
    the JSON every run: a lone slow run (a machine's first, still compiling or clocking up) shows in the
    runs without moving the figure."""
    return [decode_ms_per_step(engine, request, batch) for _ in range(repeats)]


def decode_ms_per_step(engine: Steppable, request: GenerationRequest, batch: int) -> float:
    """Milliseconds per decode step of `batch` copies of `request` (a prompt already prefilled and cached:
    each copy recomputes its last prompt token and samples its first token, then one step captures the
    decode graph of this shape; the steps after it are timed until every copy finishes). Steps are counted
    by the tokens they give: an overlapped step's tokens come back with the next step."""
    start_copies(engine, request, batch)
    untimed = sum(len(out.new_token_ids) for out in engine.step())
    torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = 0
    while engine.has_unfinished():
        tokens += sum(len(out.new_token_ids) for out in engine.step())
    torch.cuda.synchronize()
    steps = (tokens + untimed) / batch - 1  # less the untimed step, whatever step returned its tokens
    return 1000 * (time.perf_counter() - start) / max(steps, 1)


def prefill(
    engine: Steppable, request: GenerationRequest, *, budget_s: float, profile_step: int | None = None
) -> list[float]:
    """Seconds per engine step (one prompt chunk each) of the request's prefill, printed as they go; stops
    with an error once `budget_s` is spent (the chunk times so far are printed). Step `profile_step`
    (0-based) runs under the profiler (its time then includes the profiler's)."""
    rid = engine.add_request(request)
    times: list[float] = []
    done = False
    while not done:
        torch.cuda.synchronize()
        start = time.perf_counter()
        if len(times) == profile_step:
            done = profile_prefill_step(engine, rid)
        else:
            done = any(out.request_id == rid and out.new_token_ids for out in engine.step())
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        print(f"prefill step {len(times)}: {times[-1]:.3f} s (total {sum(times):.1f} s)", flush=True)
        if sum(times) > budget_s and not done:
            raise SystemExit(f"prefill passed its {budget_s:.0f} s budget after {len(times)} steps")
    while engine.has_unfinished():
        engine.step()
    return times


def profile_prefill_step(engine: Steppable, rid: str) -> bool:
    """Host and GPU time per op over one prefill step (one chunk at its place in the context), and the
    host syncs it makes; whether the step finished the request's prefill."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        done = any(out.request_id == rid and out.new_token_ids for out in engine.step())
        torch.cuda.synchronize()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    print(events.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60))
    syncs = {e.key: e.count for e in events if "Synchronize" in e.key or "MemcpyAsync" in e.key}
    print(f"prefill step host syncs and copies: {syncs}")
    return done


def profile_decode(
    engine: Steppable,
    decoder: DecodeRunner | None,
    request: GenerationRequest,
    batch: int,
    trace: Path | None = None,
) -> None:
    """GPU time per kernel over three eager decode steps of `batch` copies of `request` (the graph replays
    the same kernels), then host time per op over three graph-replayed steps (what the GPU waits for
    between replays), their timeline written to `trace` (Chrome trace JSON) when given."""
    from torch.profiler import ProfilerActivity, profile

    assert decoder is not None, "decode runs on the device path (fused kernels)"
    start_copies(engine, request, batch)
    for graphs, activities, sort in (
        (False, [ProfilerActivity.CUDA], "self_cuda_time_total"),
        (True, [ProfilerActivity.CPU, ProfilerActivity.CUDA], "self_cpu_time_total"),
    ):
        decoder.use_graphs = graphs
        engine.step()
        torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(3):
                engine.step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by=sort, row_limit=45, max_name_column_width=60))
        if graphs and trace is not None:
            prof.export_chrome_trace(str(trace))
    while engine.has_unfinished():
        engine.step()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=43)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--weights", choices=["dense", "shipped"], default="dense")
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed decode runs a batch (median shown)")
    parser.add_argument("--warmup", type=int, default=16384, help="tokens of the kernel warm-up prefill")
    parser.add_argument("--prefill-budget", type=float, default=480.0, help="seconds before prefill gives up")
    parser.add_argument("--batch", default="1,8")
    parser.add_argument(
        "--no-overlap", action="store_true", help="read each decode step's tokens before the next step"
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--profile", action="store_true", help="profile the last full prefill chunk and decode steps"
    )
    parser.add_argument("--profile-batch", type=int, default=1, help="sequences in the profiled decode steps")
    parser.add_argument(
        "--trace", type=Path, default=None, help="with --profile: the graph-replayed steps' Chrome trace"
    )
    opts = parser.parse_args()
    if opts.repeats < 1:
        parser.error(f"--repeats takes a positive count of timed decode runs, got {opts.repeats}")
    result = run(opts)
    for key, value in result.items():
        print(f"{key:>24} {value}")
    path = opts.json or Path(__file__).parent / "results" / f"long_context_{opts.context}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"benchmark": "long_context", "torch": torch.__version__, **result}, indent=2) + "\n"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
