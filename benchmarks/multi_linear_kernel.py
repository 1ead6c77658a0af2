"""Speed of a layer's same-input projections in one launch (`kernels/multi_linear.py`) against the separate
cuBLAS products the layer otherwise runs (`F.linear` per weight: a split-K GEMV and its reduction each at
decode) and against their byte floor, at V4-Flash's decode sets.

Sets (K = 4096, bf16): a CSA layer's `wq_a`, `wkv`, compressor `wkv`/`wgate`, indexer `weights_proj` and
indexer compressor `wkv`/`wgate` (N = 1024, 512, 1024, 1024, 64, 256, 256), an HCA layer's `wq_a`, `wkv`,
compressor `wkv`/`wgate` (1024, 512, 512, 512), and the bf16 rest of the same two in the shipped format
(there `wq_a` and `wkv` are FP8 and join the same launch as `Fp8Weight`s; this benchmark times the bf16
weights only). At `--rows` rows (1 and 2: the decode step takes one launch up
to `FUSED_MAX_ROWS`). Times are CUDA-graph replays (`device_rates.timed(graphs=True)`), as the decode step
runs: the separate products as one graph of all of them. The floor is the bytes (weights, input, outputs)
over a device-to-device copy's rate. Each row also checks the outputs against the reference, and the table
ends with what a decode step of the 43-layer stack saves (21 CSA and 20 HCA layers). `--sweep` also times a
few `MultiTiles` per case and reports the fastest.

Prints a table and writes `benchmarks/results/multi_linear_kernel.json` (or `--json PATH`).

    python benchmarks/multi_linear_kernel.py --sweep        # CUDA
    python benchmarks/multi_linear_kernel.py --device cpu   # small shapes under Triton's interpreter
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from device_rates import ceilings, timed, write_report

from deepscout.model_runtime.v4.kernels.multi_linear import multi_linear_reference

if TYPE_CHECKING:
    from deepscout.model_runtime.v4.kernels.multi_linear_triton import MultiTiles

FLASH_SETS = {
    "csa": (4096, (1024, 512, 1024, 1024, 64, 256, 256), 21),
    "hca": (4096, (1024, 512, 512, 512), 20),
    "csa_shipped": (4096, (1024, 1024, 64, 256, 256), 21),
    "hca_shipped": (4096, (512, 512), 20),
}
"""(K, the weights' N, layers of the set per decode step) of V4-Flash's same-input projections."""
SMALL_SETS = {"ragged": (300, (24, 5, 40, 1), 1)}
"""A set for a CPU run under Triton's interpreter (it only checks that the benchmark runs)."""
SWEEP = [(2, 4, 1), (4, 4, 2), (4, 8, 1), (8, 4, 1), (8, 4, 2), (16, 4, 1), (16, 8, 1), (32, 4, 1)]
"""Candidate (block_n, num_warps, num_stages) for `--sweep` (block_k keeps about 4096 elements a step)."""


def make_case(
    device: torch.device, rows: int, k: int, ns: tuple[int, ...]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator(device=device).manual_seed(rows + k)
    x = torch.randn(rows, k, generator=gen, device=device).to(torch.bfloat16)
    weights = [(torch.randn(n, k, generator=gen, device=device) * k**-0.5).bfloat16() for n in ns]
    return x, weights


def measure(
    x: torch.Tensor, weights: list[torch.Tensor], tiles: MultiTiles | None
) -> tuple[float, list[torch.Tensor]]:
    from deepscout.model_runtime.v4.kernels.multi_linear_triton import multi_linear_triton

    def call() -> list[torch.Tensor]:
        return multi_linear_triton(x, weights, tiles=tiles)

    return timed(call, x.device, graphs=x.device.type == "cuda"), call()


def sweep_tiles(
    x: torch.Tensor, weights: list[torch.Tensor], default: MultiTiles, default_s: float
) -> tuple[MultiTiles, float]:
    """The fastest of the default tiles (timed at `default_s`) and the `SWEEP` candidates."""
    from deepscout.model_runtime.v4.kernels.multi_linear_triton import MultiTiles

    k_cover = 1 << (x.shape[1] - 1).bit_length()
    best, best_s = default, default_s
    for block_n, warps, stages in SWEEP:
        tiles = MultiTiles(block_n, min(4096 // block_n, k_cover), warps, stages)
        if tiles != default:
            seconds = measure(x, weights, tiles)[0]
            best, best_s = (tiles, seconds) if seconds < best_s else (best, best_s)
    return best, best_s


def run_case(
    device: torch.device, name: str, rows: int, k: int, ns: tuple[int, ...], copy_rate: float, sweep: bool
) -> dict[str, Any]:
    from deepscout.model_runtime.v4.kernels.multi_linear_triton import device_multi_tiles

    x, weights = make_case(device, rows, k, ns)
    tiles = device_multi_tiles(ns, k, device=device)
    seconds, outs = measure(x, weights, None)
    separate_s = timed(lambda: multi_linear_reference(x, weights), device, graphs=device.type == "cuda")
    reference = multi_linear_reference(x, weights)
    rel_diff = max(
        float((y.float() - r.float()).abs().max() / r.float().abs().max())
        for y, r in zip(outs, reference, strict=True)
    )
    nbytes = sum(w.nbytes for w in weights) + x.nbytes + rows * sum(ns) * x.element_size()
    floor = nbytes / copy_rate if copy_rate else 0.0
    row = {
        "set": name,
        "rows": rows,
        "k": k,
        "ns": list(ns),
        "columns": sum(ns),
        "multi_linear_us": round(seconds * 1e6, 2),
        "separate_us": round(separate_s * 1e6, 2),
        "speedup": round(separate_s / seconds, 2),
        "byte_floor_us": round(floor * 1e6, 2),
        "x_floor": round(seconds / floor, 2) if floor else None,
        "weight_tb_per_s": round(sum(w.nbytes for w in weights) / seconds / 1e12, 3),
        "max_rel_diff_vs_reference": rel_diff,
        "tiles": asdict(tiles),
    }
    if sweep:
        best, best_s = sweep_tiles(x, weights, tiles, seconds)
        row |= {"best_tiles": asdict(best), "best_us": round(best_s * 1e6, 2)}
    return row


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default="1,2", help="rows per call (M), e.g. 1,2")
    parser.add_argument("--sweep", action="store_true", help="also time the candidate tiles in SWEEP")
    default_json = Path(__file__).parent / "results" / "multi_linear_kernel.json"
    parser.add_argument("--json", type=Path, default=default_json)
    opts = parser.parse_args()
    device = torch.device(opts.device)
    if device.type == "cpu":  # Triton reads this when the kernels are first defined
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sets = SMALL_SETS if device.type == "cpu" else FLASH_SETS
    torch.manual_seed(0)
    rates = ceilings(device)
    print(f"copy {rates.copy_bytes_per_s / 1e12:.2f} TB/s")
    results = []
    for rows in (int(r) for r in opts.rows.split(",")):
        for name, (k, ns, _) in sets.items():
            row = run_case(device, name, rows, k, ns, rates.copy_bytes_per_s, opts.sweep)
            results.append(row)
            print(row, flush=True)
    print(
        f"{'set':>12} {'M':>3} {'cols':>5} {'launches':>8} {'multi us':>9} {'separate us':>12} "
        f"{'speedup':>8} {'bytes us':>9} {'x floor':>8} {'W TB/s':>7} {'best us':>8} {'rel diff':>9}"
    )
    for r in results:
        print(
            f"{r['set']:>12} {r['rows']:>3} {r['columns']:>5} {len(r['ns']):>8} {r['multi_linear_us']:>9} "
            f"{r['separate_us']:>12} {r['speedup']:>8} {r['byte_floor_us']:>9} {r['x_floor'] or '-':>8} "
            f"{r['weight_tb_per_s']:>7} {r.get('best_us', '-'):>8} {r['max_rel_diff_vs_reference']:>9.2e}"
        )
    per_step = {}
    for rows in sorted({r["rows"] for r in results}):
        for fmt, suffix in (("dense", ""), ("shipped", "_shipped")):
            chosen = [
                r for r in results if r["rows"] == rows and r["set"] in (f"csa{suffix}", f"hca{suffix}")
            ]
            if len(chosen) == 2:
                saved = sum((r["separate_us"] - r["multi_linear_us"]) * sets[r["set"]][2] for r in chosen)
                per_step[f"{fmt}_m{rows}"] = round(saved, 1)
                print(f"decode step, {fmt} weights, M={rows}: {saved:.1f} us saved (21 CSA + 20 HCA layers)")
    write_report(
        opts.json,
        benchmark="multi_linear_kernel",
        device=device,
        rates=rates,
        results=results,
        saved_us_per_decode_step=per_step,
    )


if __name__ == "__main__":
    main()
