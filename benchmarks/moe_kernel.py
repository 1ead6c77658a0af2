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

MXFP4 decode rows also time the decode path (`grouped_moe_mxfp4_gemv`, a matrix-vector product per pair,
which `grouped_moe` takes for at most `GEMV_MAX_PAIRS` pairs) beside the tiled kernels, both as called and
as CUDA-graph replays (`*_graph_ms`: no Python launch overhead, as the decode step runs); the decode path
cycles through `ROUTINGS` routings so that its weights stream from memory (`gemv_x_floor` is against their
mean held experts' bytes); on a CUDA device of compute capability 9 or later the rows also time its Gluon
kernels (`gluon_*`: what `grouped_moe` runs there for bfloat16 activations), and the rows report the
byte floor of the expected routing: the expected distinct experts touched, `held · (1 - (1 - k/E)^N)` for
N tokens' uniform top-k over E experts of which this rank holds `held`, times an expert's bytes, over the
copy rate.
`--held COUNT` keeps only the first COUNT experts' stacks, as rank 0 of an expert-parallel group sharing
whole experts (pairs of the other experts add nothing); `--inter 1024` gives every expert a rank's share of
V4-Flash's units when two ranks share every expert's units; `--sweep` also times the candidate GEMV tiles
in `GEMV_SWEEP` and the Gluon tiles in `GLUON_SWEEP`.

Prints a table and writes `benchmarks/results/moe_kernel.json` (or `--json PATH`).

    python benchmarks/moe_kernel.py                        # CUDA
    python benchmarks/moe_kernel.py --sweep                # CUDA, with tile sweep
    python benchmarks/moe_kernel.py --weights bf16,mxfp4   # CUDA, both expert formats
    python benchmarks/moe_kernel.py --weights mxfp4 --experts 256 --held 128 --sweep   # decode on an EP rank
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

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice, ExpertStacks
from deepscout.model_runtime.v4.kernels.grouped_moe import grouped_moe_reference
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks, quantize
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK

if TYPE_CHECKING:
    from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_gluon import GluonGemvTiles
    from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_triton import GemvTiles
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
GEMV_SWEEP = [
    (gate_up_n, down_n, block_k, num_warps, prefetch)
    for gate_up_n, down_n in ((4, 8), (8, 16), (16, 32))
    for block_k in (256, 512, 1024)
    for num_warps in (4, 8)
    for prefetch in (False, True)
]
"""Candidate decode-path tiles (gate_up_n, down_n, block_k, num_warps, prefetch) for `--sweep` (MXFP4
decode rows; powers of two, block_k >= 32)."""
GLUON_SWEEP = [
    (gate_up_per_thread * num_warps, down_per_thread * num_warps, num_warps)
    for num_warps in (1, 2, 4)
    for gate_up_per_thread in (2, 4)
    for down_per_thread in (8, 16)
]
"""Candidate tiles of the decode path's Gluon kernels (gate_up_rows, down_rows, num_warps) for `--sweep`:
2 or 4 gate-up rows and 8 or 16 down rows a thread (a lane a scale group of 1024 columns)."""
ROUTINGS = 16
"""Routings each decode-path timing cycles through (different experts, so the weights stream from memory
as in a decode step, where each layer's experts are read once, rather than replaying from L2)."""
WEIGHTS = ("bf16", "mxfp4")
"""Expert formats `--weights` may name."""


def bytes_per_expert(fmt: str, hidden: int, inter: int) -> int:
    """Bytes of one expert's three projections as stored: bf16, or MXFP4's packed codes and scales."""
    elements = 3 * hidden * inter
    return elements * 2 if fmt == "bf16" else elements // 2 + elements // FP4_BLOCK


def expected_active(tokens: int, top_k: int, experts: int, held: int) -> float:
    """Expected distinct experts of the `held` that N tokens' uniform top-k over `experts` touch."""
    return held * (1 - (1 - top_k / experts) ** tokens)


def make_case(
    device: torch.device, tokens: int, experts: int, top_k: int, hidden: int, inter: int, fmt: str, held: int
) -> dict[str, Any]:
    gen = torch.Generator(device=device).manual_seed(tokens + experts)

    def weight(rows: int, cols: int) -> torch.Tensor:
        w = torch.randn(experts, rows, cols, generator=gen, device=device, dtype=torch.bfloat16)
        return w.mul_(cols**-0.5)

    stacks: ExpertStacks | Mxfp4ExpertStacks
    stacks = ExpertStacks(weight(inter, hidden), weight(hidden, inter), weight(inter, hidden))
    if fmt == "mxfp4":
        stacks = quantize(stacks)
    stacks = stacks.map(lambda t: t[:held])  # rank 0's rows (all of them without --held)
    x = torch.randn(tokens, hidden, generator=gen, device=device).to(torch.bfloat16)
    routings = []
    for _ in range(ROUTINGS):
        weights, indices = torch.rand(tokens, experts, generator=gen, device=device).topk(top_k, dim=-1)
        routings.append((weights / weights.sum(-1, keepdim=True), indices))
    routing = {"x": x, "weights": routings[0][0], "indices": routings[0][1], "routings": routings}
    return {**routing, "stacks": stacks, "experts": ExpertSlice(0, held) if held < experts else None}


def measure(
    case: dict[str, Any], device: torch.device, tiles: TileConfig | None, *, graphs: bool = False
) -> tuple[float, torch.Tensor]:
    """The tiled kernels' seconds per call (as called, or as CUDA-graph replays) and their output."""
    from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_triton import grouped_moe_mxfp4_triton
    from deepscout.model_runtime.v4.kernels.grouped_moe_triton import grouped_moe_triton

    def call() -> torch.Tensor:
        stacks, experts = case["stacks"], case["experts"]
        routing = (case["x"], case["weights"], case["indices"])
        if isinstance(stacks, Mxfp4ExpertStacks):
            return grouped_moe_mxfp4_triton(*routing, stacks, 10.0, tiles=tiles, experts=experts)
        return grouped_moe_triton(
            *routing, stacks.w1, stacks.w2, stacks.w3, 10.0, tiles=tiles, experts=experts
        )

    return timed(call, device, graphs=graphs), call()


def measure_gemv(
    case: dict[str, Any], device: torch.device, tiles: GemvTiles | GluonGemvTiles | None, *, graphs: bool
) -> tuple[float, torch.Tensor]:
    """The decode path's seconds per call (as called, or as CUDA-graph replays; the mean over the case's
    `ROUTINGS` routings, run in turn) and its output for the first routing: its Triton kernels, or its
    Gluon kernels with `GluonGemvTiles`."""
    from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_gluon import (
        GluonGemvTiles,
        grouped_moe_mxfp4_gemv_gluon,
    )
    from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_triton import grouped_moe_mxfp4_gemv

    def call() -> torch.Tensor:
        outs = []
        for weights, indices in case["routings"]:
            routing = (case["x"], weights, indices, case["stacks"], 10.0)
            if isinstance(tiles, GluonGemvTiles):
                outs.append(grouped_moe_mxfp4_gemv_gluon(*routing, tiles=tiles, experts=case["experts"]))
            else:
                outs.append(grouped_moe_mxfp4_gemv(*routing, tiles=tiles, experts=case["experts"]))
        return outs[0]

    return timed(call, device, graphs=graphs) / len(case["routings"]), call()


def gemv_columns(
    case: dict[str, Any], device: torch.device, reference: torch.Tensor, floor: float, sweep: bool
) -> dict[str, Any]:
    """An MXFP4 decode row's decode-path columns: its times beside the tiled kernels' graph replays, its
    distance from the byte floor and the reference, and with `sweep` the fastest of `GEMV_SWEEP`."""
    from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_triton import GemvTiles

    gemv_s, out = measure_gemv(case, device, None, graphs=False)
    gemv_graph_s, _ = measure_gemv(case, device, None, graphs=True)
    tiled_graph_s, _ = measure(case, device, None, graphs=True)
    columns = {
        "gemv_ms": round(gemv_s * 1e3, 4),
        "gemv_graph_ms": round(gemv_graph_s * 1e3, 4),
        "triton_graph_ms": round(tiled_graph_s * 1e3, 4),
        "gemv_x_floor": round(gemv_graph_s / floor, 2) if floor else None,
        "gemv_speedup": round(tiled_graph_s / gemv_graph_s, 2) if gemv_graph_s else None,
        "gemv_max_rel_diff_vs_reference": float(
            (out.float() - reference).abs().max() / reference.abs().max()
        ),
        "gemv_tiles": asdict(GemvTiles()),
    }
    if sweep:
        from triton.compiler.errors import CompilationError
        from triton.runtime.errors import OutOfResources

        best, best_s = GemvTiles(), gemv_graph_s
        for candidate in (GemvTiles(*c) for c in GEMV_SWEEP):
            if candidate == GemvTiles():
                continue
            try:
                cand_s, _ = measure_gemv(case, device, candidate, graphs=True)
            except (OutOfResources, CompilationError, RuntimeError) as err:  # a candidate Triton cannot build
                print(f"skipped {candidate}: {err}")
                continue
            best, best_s = (candidate, cand_s) if cand_s < best_s else (best, best_s)
        columns["gemv_best_tiles"] = asdict(best)
        columns["gemv_best_graph_ms"] = round(best_s * 1e3, 4)
    columns.update(gluon_columns(case, device, reference, floor, gemv_graph_s, sweep))
    return columns


def gluon_columns(
    case: dict[str, Any],
    device: torch.device,
    reference: torch.Tensor,
    floor: float,
    gemv_s: float,
    sweep: bool,
) -> dict[str, Any]:
    """The decode path's Gluon kernels (where they run: bfloat16 on sm_90+) beside its Triton kernels'
    graph replays (`gemv_s`), and with `sweep` the fastest of `GLUON_SWEEP`."""
    from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_gluon import GluonGemvTiles, gluon_runs_on

    if not gluon_runs_on(case["x"]):
        return {}
    best, (best_s, out) = GluonGemvTiles(), measure_gemv(case, device, GluonGemvTiles(), graphs=True)
    columns = {
        "gluon_graph_ms": round(best_s * 1e3, 4),
        "gluon_x_floor": round(best_s / floor, 2) if floor else None,
        "gluon_speedup": round(gemv_s / best_s, 2),
        "gluon_max_rel_diff_vs_reference": float(
            (out.float() - reference).abs().max() / reference.abs().max()
        ),
        "gluon_tiles": asdict(best),
    }
    if sweep:
        for candidate in (GluonGemvTiles(*c) for c in GLUON_SWEEP):
            cand_s, _ = measure_gemv(case, device, candidate, graphs=True)
            best, best_s = (candidate, cand_s) if cand_s < best_s else (best, best_s)
        columns["gluon_best_tiles"] = asdict(best)
        columns["gluon_best_graph_ms"] = round(best_s * 1e3, 4)
    return columns


def run_case(
    device: torch.device, phase: str, tokens: int, experts: int, shape: tuple[int, int, int], sweep: bool,
    rates: Ceilings, fmt: str, held: int,
) -> dict[str, Any]:  # fmt: skip
    from deepscout.model_runtime.v4.kernels.grouped_moe_triton import TileConfig, choose_tiles, group_pairs

    top_k, hidden, inter = shape
    case = make_case(device, tokens, experts, top_k, hidden, inter, fmt, held)
    default = choose_tiles(tokens * top_k, held)  # as `plan_launches` picks them for the held stacks
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
    ref_s = timed(lambda: grouped_moe_reference(*args, experts=case["experts"]), device)
    reference = grouped_moe_reference(*args, experts=case["experts"]).float()
    active = int((torch.unique(case["indices"]) < held).sum())
    weight_bytes = active * bytes_per_expert(fmt, hidden, inter)
    expected_bytes = expected_active(tokens, top_k, experts, held) * bytes_per_expert(fmt, hidden, inter)
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
        "held_experts": held,
        "active_experts": active,
        "expected_active_experts": round(expected_active(tokens, top_k, experts, held), 2),
        "triton_ms": round(seconds * 1e3, 4),
        "routing_ms": round(routing_s * 1e3, 4),
        "reference_ms": round(ref_s * 1e3, 4),
        "floor_ms": round(floor * 1e3, 4),
        "expected_floor_ms": round(expected_bytes / rates.copy_bytes_per_s * 1e3, 4)
        if rates.copy_bytes_per_s
        else 0.0,
        "x_floor": round(seconds / floor, 2) if floor else None,
        "weights_gb_per_s": round(weight_bytes / seconds / 1e9, 1),
        "tflop_per_s": round(flops / seconds / 1e12, 2),
        "max_rel_diff_vs_reference": float((out.float() - reference).abs().max() / reference.abs().max()),
        "tiles": asdict(default),
    }
    if sweep:
        row["best_tiles"] = asdict(best)
        row["best_ms"] = round(best_s * 1e3, 4)
    if fmt == "mxfp4" and phase == "decode":
        held_active = [int((torch.unique(indices) < held).sum()) for _, indices in case["routings"]]
        mean_bytes = sum(held_active) / len(held_active) * bytes_per_expert(fmt, hidden, inter)
        gemv_floor = mean_bytes / rates.copy_bytes_per_s if rates.copy_bytes_per_s else 0.0
        row.update(gemv_columns(case, device, reference, gemv_floor, sweep))
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
    parser.add_argument("--held", type=int, default=None, help="experts this rank holds (the first COUNT)")
    parser.add_argument(
        "--inter",
        type=int,
        default=None,
        help="intermediate units of each expert (V4-Flash: 2048; a rank's share when the ranks share units)",
    )
    default_json = Path(__file__).parent / "results" / "moe_kernel.json"
    parser.add_argument("--json", type=Path, default=default_json)
    opts = parser.parse_args()
    if opts.held is not None and opts.held < 1:
        parser.error(f"--held takes a positive expert count, got {opts.held}")
    device = torch.device(opts.device)
    formats = opts.weights.split(",")
    if any(f not in WEIGHTS for f in formats):
        parser.error(f"--weights takes a comma-separated subset of {WEIGHTS}, got {opts.weights!r}")
    if device.type == "cpu":  # Triton reads this when the kernels are first defined
        os.environ.setdefault("TRITON_INTERPRET", "1")
    small = device.type == "cpu"
    shape = (6, 256, opts.inter or 128) if small else (6, 4096, opts.inter or 2048)
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
                held = min(opts.held or n_experts, n_experts)
                row = run_case(device, phase, tokens, n_experts, shape, opts.sweep, rates, fmt, held)
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
    gemv_rows = [r for r in rows if "gemv_ms" in r]
    if gemv_rows:
        print(
            f"{'weights':>7} {'E':>4} {'held':>4} {'N':>3} {'tiled graph ms':>14} {'gemv graph ms':>13} "
            f"{'speedup':>7} {'floor ms':>9} {'exp floor ms':>12} {'gemv x floor':>12} {'rel diff':>9} "
            f"{'gluon graph ms':>14} {'gluon x floor':>13}"
        )
    for r in gemv_rows:
        print(
            f"{r['weights']:>7} {r['experts']:>4} {r['held_experts']:>4} {r['tokens']:>3} "
            f"{r['triton_graph_ms']:>14} {r['gemv_graph_ms']:>13} {r['gemv_speedup'] or '-':>7} "
            f"{r['floor_ms']:>9} {r['expected_floor_ms']:>12} {r['gemv_x_floor'] or '-':>12} "
            f"{r['gemv_max_rel_diff_vs_reference']:>9.2e} {r.get('gluon_graph_ms', '-'):>14} "
            f"{r.get('gluon_x_floor') or '-':>13}"
        )
    write_report(
        opts.json,
        benchmark="moe_kernel",
        device=device,
        rates=rates,
        results=rows,
        shape={"top_k": shape[0], "hidden": shape[1], "inter": shape[2]},
        held=opts.held,
    )


if __name__ == "__main__":
    main()
