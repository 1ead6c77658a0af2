"""Speed of the grouped-MoE kernel against its floors and the expert-by-expert reference
(`kernels/grouped_moe.py`).

V4-Flash widths with bfloat16 activations (hidden 4096, inter 2048, top-6) for each routed-expert count in
`--experts` and each expert format in `--weights` (bf16 stacks, or MXFP4 stacks quantised from them: W4A16),
router choices drawn at random: decode steps of N tokens (`--decode`, memory-bound: every active expert's
three projections read once) and a prefill chunk (`--prefill`, compute-bound). The floors come from the
same process: for decode, the active experts' weight bytes as stored (bf16: 2 bytes a weight; MXFP4: the
packed half byte plus a scale byte per 32) over a device-to-device copy's rate (bytes read + written per
second); for prefill, the FLOPs (2 · N · k · 3 · hidden · inter) over an 8192³ bf16 matmul's rate.
`--sweep` also times a few tile configurations per case and reports the fastest.

Prints a table and writes `benchmarks/results/moe_kernel.json` (or `--json PATH`).

    python benchmarks/moe_kernel.py                        # CUDA
    python benchmarks/moe_kernel.py --sweep                # CUDA, with tile sweep
    python benchmarks/moe_kernel.py --weights bf16,mxfp4   # CUDA, both expert formats
    python benchmarks/moe_kernel.py --device cpu           # small shapes under Triton's interpreter
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from device_rates import Ceilings, ceilings, timed, write_report

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertStacks
from deepscout.model_runtime.v4.kernels.grouped_moe import grouped_moe_reference
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks, quantize
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK

if TYPE_CHECKING:
    from deepscout.model_runtime.v4.kernels.grouped_moe_triton import TileConfig

SWEEP = {
    "decode": [
        (16, 32, 64, 128, 4, 3),
        (16, 16, 32, 256, 4, 3),
        (16, 64, 64, 128, 4, 4),
        (16, 32, 64, 256, 4, 2),
        (16, 64, 128, 64, 4, 4),
        (16, 16, 32, 128, 4, 4),
        (16, 32, 32, 128, 2, 4),
    ],
    "prefill": [
        (128, 64, 128, 64, 8, 4),
        (128, 64, 128, 64, 8, 3),
        (128, 128, 128, 64, 8, 3),
        (128, 64, 256, 64, 8, 3),
        (64, 64, 128, 64, 4, 4),
        (64, 128, 128, 64, 4, 3),
    ],
}
"""Candidate tiles (block_m, gate_up_n, down_n, block_k, num_warps, num_stages) for `--sweep` (block_k a
multiple of 32, as MXFP4 needs)."""
WEIGHTS = ("bf16", "mxfp4")
"""Expert formats `--weights` may name."""


def bytes_per_expert(fmt: str, hidden: int, inter: int) -> int:
    """Bytes of one expert's three projections as stored: bf16, or MXFP4's packed codes and scales."""
    elements = 3 * hidden * inter
    return elements * 2 if fmt == "bf16" else elements // 2 + elements // FP4_BLOCK


def make_case(
    device: torch.device, tokens: int, experts: int, top_k: int, hidden: int, inter: int, fmt: str
) -> dict[str, Any]:
    gen = torch.Generator(device=device).manual_seed(tokens + experts)

    def weight(rows: int, cols: int) -> torch.Tensor:
        w = torch.randn(experts, rows, cols, generator=gen, device=device, dtype=torch.bfloat16)
        return w.mul_(cols**-0.5)

    stacks: ExpertStacks | Mxfp4ExpertStacks
    stacks = ExpertStacks(weight(inter, hidden), weight(hidden, inter), weight(inter, hidden))
    if fmt == "mxfp4":
        stacks = quantize(stacks)
    x = torch.randn(tokens, hidden, generator=gen, device=device).to(torch.bfloat16)
    scores = torch.rand(tokens, experts, generator=gen, device=device)
    weights, indices = scores.topk(top_k, dim=-1)
    return {"x": x, "weights": weights / weights.sum(-1, keepdim=True), "indices": indices, "stacks": stacks}


def measure(
    case: dict[str, Any], device: torch.device, tiles: TileConfig | None
) -> tuple[float, torch.Tensor]:
    from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_triton import grouped_moe_mxfp4_triton
    from deepscout.model_runtime.v4.kernels.grouped_moe_triton import grouped_moe_triton

    def call() -> torch.Tensor:
        stacks = case["stacks"]
        routing = (case["x"], case["weights"], case["indices"])
        if isinstance(stacks, Mxfp4ExpertStacks):
            return grouped_moe_mxfp4_triton(*routing, stacks, 10.0, tiles=tiles)
        return grouped_moe_triton(*routing, stacks.w1, stacks.w2, stacks.w3, 10.0, tiles=tiles)

    return timed(call, device), call()


def run_case(
    device: torch.device, phase: str, tokens: int, experts: int, shape: tuple[int, int, int], sweep: bool,
    rates: Ceilings, fmt: str,
) -> dict[str, Any]:  # fmt: skip
    from deepscout.model_runtime.v4.kernels.grouped_moe_triton import TileConfig, choose_tiles, group_pairs

    top_k, hidden, inter = shape
    case = make_case(device, tokens, experts, top_k, hidden, inter, fmt)
    default = choose_tiles(tokens * top_k, experts)
    seconds, out = measure(case, device, None)
    routing_s = timed(lambda: group_pairs(case["indices"], experts, default.block_m), device)
    best, best_s = default, seconds
    if sweep:
        from triton.runtime.errors import OutOfResources

        for candidate in (TileConfig(*c) for c in SWEEP[phase]):
            if candidate == default:
                continue
            try:
                cand_s, _ = measure(case, device, candidate)
            except OutOfResources as err:
                print(f"skipped {candidate}: {err}")
                continue
            best, best_s = (candidate, cand_s) if cand_s < best_s else (best, best_s)
    args = (case["x"], case["weights"], case["indices"], case["stacks"], 10.0)
    ref_s = timed(lambda: grouped_moe_reference(*args), device)
    reference = grouped_moe_reference(*args).float()
    active = int(torch.unique(case["indices"]).numel())
    weight_bytes = active * bytes_per_expert(fmt, hidden, inter)
    flops = 2 * tokens * top_k * 3 * hidden * inter
    needed, rate = (
        (weight_bytes, rates.copy_bytes_per_s) if phase == "decode" else (flops, rates.matmul_flop_per_s)
    )
    floor = needed / rate if rate else 0.0
    row = {
        "phase": phase,
        "weights": fmt,
        "tokens": tokens,
        "experts": experts,
        "active_experts": active,
        "triton_ms": round(seconds * 1e3, 4),
        "routing_ms": round(routing_s * 1e3, 4),
        "reference_ms": round(ref_s * 1e3, 4),
        "floor_ms": round(floor * 1e3, 4),
        "x_floor": round(seconds / floor, 2) if floor else None,
        "weights_gb_per_s": round(weight_bytes / seconds / 1e9, 1),
        "tflop_per_s": round(flops / seconds / 1e12, 2),
        "max_rel_diff_vs_reference": float((out.float() - reference).abs().max() / reference.abs().max()),
        "tiles": asdict(default),
    }
    if sweep:
        row["best_tiles"] = asdict(best)
        row["best_ms"] = round(best_s * 1e3, 4)
    return row


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--experts", default=None, help="routed-expert counts, e.g. 16,256")
    parser.add_argument("--decode", default="1,8", help="tokens per decode step")
    parser.add_argument("--prefill", default=None, help="tokens per prefill chunk")
    parser.add_argument("--sweep", action="store_true", help="also time the candidate tiles in SWEEP")
    parser.add_argument("--weights", default="bf16", help=f"expert formats, comma-separated, of {WEIGHTS}")
    default_json = Path(__file__).parent / "results" / "moe_kernel.json"
    parser.add_argument("--json", type=Path, default=default_json)
    opts = parser.parse_args()
    device = torch.device(opts.device)
    formats = opts.weights.split(",")
    if any(f not in WEIGHTS for f in formats):
        parser.error(f"--weights takes a comma-separated subset of {WEIGHTS}, got {opts.weights!r}")
    if device.type == "cpu":  # Triton reads this when the kernels are first defined
        os.environ.setdefault("TRITON_INTERPRET", "1")
    small = device.type == "cpu"
    shape = (6, 256, 128) if small else (6, 4096, 2048)
    experts = [int(e) for e in (opts.experts or ("8" if small else "16,256")).split(",")]
    prefill = int(opts.prefill or (64 if small else 4096))
    torch.manual_seed(0)
    rates = ceilings(device)
    copy_tb, mm_tflop = rates.copy_bytes_per_s / 1e12, rates.matmul_flop_per_s / 1e12
    print(f"copy {copy_tb:.2f} TB/s, matmul {mm_tflop:.1f} TFLOP/s")
    rows = []
    cases = [("decode", int(n)) for n in opts.decode.split(",")] + [("prefill", prefill)]
    for fmt in formats:
        for n_experts in experts:
            for phase, tokens in cases:
                row = run_case(device, phase, tokens, n_experts, shape, opts.sweep, rates, fmt)
                rows.append(row)
                print(row, flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    header = (
        f"{'phase':>8} {'weights':>7} {'E':>4} {'N':>5} {'active':>6} {'triton ms':>10} {'routing':>8} "
        f"{'ref ms':>9} {'floor ms':>9} {'x floor':>8} {'GB/s':>8} {'TFLOP/s':>8} {'rel diff':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['phase']:>8} {r['weights']:>7} {r['experts']:>4} {r['tokens']:>5} {r['active_experts']:>6} "
            f"{r['triton_ms']:>10} {r['routing_ms']:>8} {r['reference_ms']:>9} {r['floor_ms']:>9} "
            f"{r['x_floor'] or '-':>8} {r['weights_gb_per_s']:>8} {r['tflop_per_s']:>8} "
            f"{r['max_rel_diff_vs_reference']:>9.2e}"
        )
    write_report(
        opts.json,
        benchmark="moe_kernel",
        device=device,
        rates=rates,
        results=rows,
        shape={"top_k": shape[0], "hidden": shape[1], "inter": shape[2]},
    )


if __name__ == "__main__":
    main()
