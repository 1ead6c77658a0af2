"""Speed of the FP8 block-scaled linear (`kernels/fp8_linear.py`) against its floors, a bf16 cuBLAS linear
on the dequantised weight (what an `nn.Linear` model pays) and the dequantising reference.

The V4-Flash FP8 projections (attention `wq_a`, `wq_b`, `wkv`, the grouped `wo_a`, `wo_b`, the indexer's
`wq_b`, the shared expert's `w1`/`w2`, and two concatenations of one input's projections), bf16
activations, e8m0 scales, at M rows each of `--rows` (decode steps and a prefill chunk). Both Triton paths:
`triton us` is the tiled GEMM (`fp8_linear_triton`, split-K at decode), `gemv us` the few-row GEMV
(`fp8_linear_gemv`, timed up to its `ROW_LIMIT` rows through copies of the weight, `STREAMED_BYTES` in all,
so that it streams from memory as in a decode step; `fp8_linear` takes it up to `GEMV_MAX_ROWS`). Times are
CUDA-graph replays (Python's launch overhead left out, as the decode path runs). The floors come from the
same process: bytes (FP8 weight, scales, activations in and out) over a device-to-device copy's rate (bytes
read + written per second), and FLOPs (2·M·N·K) over an 8192³ bf16 matmul's rate; `x floor` (and `gemv xf`)
is the time over the larger of the two. `--sweep` also times a few tile configurations per case (GEMM and
GEMV) and reports the fastest.

Prints a table and writes `benchmarks/results/fp8_linear_kernel.json` (or `--json PATH`).

    python benchmarks/fp8_linear_kernel.py                 # CUDA
    python benchmarks/fp8_linear_kernel.py --sweep         # CUDA, with tile sweep
    python benchmarks/fp8_linear_kernel.py --device cpu --json /tmp/fp8.json   # small shapes, interpreter
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from device_rates import Ceilings, ceilings, timed, write_report

from deepscout.model_runtime.v4.kernels.fp8_linear import fp8_linear_reference
from deepscout.model_runtime.v4.weights.quant import dequantize_fp8_block, quantize_fp8_block

if TYPE_CHECKING:
    from deepscout.model_runtime.v4.kernels.fp8_linear_gemv_triton import GemvTiles
    from deepscout.model_runtime.v4.kernels.fp8_linear_triton import TileConfig

FLASH_SHAPES = {
    "attn.wq_a": (1024, 4096, 1),
    "attn.wq_b": (32768, 1024, 1),
    "attn.wkv": (512, 4096, 1),
    "attn.wo_a": (8192, 4096, 8),
    "attn.wo_b": (4096, 8192, 1),
    "indexer.wq_b": (8192, 1024, 1),
    "shared.w1": (2048, 4096, 1),
    "shared.w2": (4096, 2048, 1),
    "attn.wq_a+wkv": (1536, 4096, 1),
    "shared.w1+w3": (4096, 4096, 1),
    "attn.wq_b/2": (16384, 1024, 1),
    "attn.wo_a/2": (4096, 4096, 4),
    "attn.wo_b/2": (4096, 4096, 1),
    "shared.w1+w3/2": (2048, 4096, 1),
    "shared.w2/2": (4096, 1024, 1),
}
"""(N, K, groups) of the V4-Flash FP8 linears (`wo_a`: 8 groups of 1024 rows, each over its own 4096
inputs), two concatenations of projections of one input, and (`/2`) one expert-parallel rank's share of
two: half the query heads' `wq_b` rows, `wo_a` groups and `wo_b` columns, half the shared expert's units."""
SMALL_SHAPES = {"ragged": (200, 300, 1), "grouped": (256, 256, 2)}
"""Shapes for a CPU run under Triton's interpreter (it only checks that the benchmark runs)."""

SWEEP = {
    "decode": [
        (16, 32, 128, 4, 4, 1),
        (16, 64, 128, 4, 4, 1),
        (16, 128, 128, 4, 4, 1),
        (16, 32, 128, 4, 4, 2),
        (16, 64, 128, 4, 4, 2),
        (16, 64, 128, 4, 4, 4),
        (16, 64, 128, 4, 3, 8),
        (16, 128, 64, 4, 4, 4),
    ],
    "prefill": [
        (128, 128, 64, 8, 3, 1),
        (128, 128, 128, 8, 3, 1),
        (128, 128, 64, 8, 4, 1),
        (128, 256, 64, 8, 3, 1),
        (64, 128, 128, 4, 4, 1),
        (128, 64, 128, 4, 4, 1),
    ],
}
"""Candidate tiles (block_m, block_n, block_k, num_warps, num_stages, split_k) for `--sweep`."""
GEMV_SWEEP = [
    (block_n, max(128, step // block_n), num_warps, 1)
    for block_n in (2, 4, 8, 16, 32, 64)
    for step in (4096, 8192, 16384)
    for num_warps in (2, 4, 8)
]
"""Candidate GEMV tiles (block_n, block_k, num_warps, num_stages) for `--sweep` (block_k capped at K): 4, 8
and 16 KiB of weights a step at every width, over 2, 4 and 8 warps (one stage: the kernel's loads feed no
dot, so Triton's software pipelining does not apply to them)."""
STREAMED_BYTES = 256 << 20
"""Weight bytes a GEMV timing cycles through (copies of the case's weight), well past the 50 MB L2."""


def make_case(device: torch.device, rows: int, shape: tuple[int, int, int]) -> dict[str, Any]:
    n, k, groups = shape
    gen = torch.Generator(device=device).manual_seed(rows + n + k)
    value = torch.randn(n, k, generator=gen, device=device).mul_(k**-0.5)
    weight, scale = quantize_fp8_block(value, scale_format="e8m0")
    del value
    x_shape = (rows, groups, k) if groups > 1 else (rows, k)
    x = torch.randn(x_shape, generator=gen, device=device).to(torch.bfloat16)
    return {"x": x, "weight": weight, "scale": scale, "groups": groups}


def measure(
    case: dict[str, Any], device: torch.device, tiles: TileConfig | None
) -> tuple[float, torch.Tensor]:
    from deepscout.model_runtime.v4.kernels.fp8_linear_triton import fp8_linear_triton

    groups = case["groups"]
    flat = case["x"].reshape(case["x"].shape[0], groups, -1)

    def call() -> torch.Tensor:
        return fp8_linear_triton(flat, case["weight"], case["scale"], groups=groups, tiles=tiles)

    return timed(call, device, graphs=device.type == "cuda"), call()


def streamed_copies(case: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The case's weight and scales, then copies of them, `STREAMED_BYTES` in all (at least one): a GEMV
    timed through them in turn reads its weight from memory, as a decode step does, not from L2."""
    weight, scale = case["weight"], case["scale"]
    copies = max(1, -(-STREAMED_BYTES // weight.nbytes))
    return [(weight, scale)] + [(weight.clone(), scale.clone()) for _ in range(copies - 1)]


def measure_gemv(
    case: dict[str, Any], device: torch.device, tiles: GemvTiles | None
) -> tuple[float, torch.Tensor]:
    """The GEMV's seconds per call (the mean over `case["copies"]`, run in turn) and its output for the
    case's own weight."""
    from deepscout.model_runtime.v4.kernels.fp8_linear_gemv_triton import fp8_linear_gemv

    groups, copies = case["groups"], case["copies"]
    flat = case["x"].reshape(case["x"].shape[0], groups, -1)

    def call() -> torch.Tensor:
        outs = [fp8_linear_gemv(flat, w, s, groups=groups, tiles=tiles) for w, s in copies]
        return outs[0]

    return timed(call, device, graphs=device.type == "cuda") / len(copies), call()


def fastest(
    measure_tiles: Callable[[Any], float], default: Any, default_s: float, candidates: Iterable[Any]
) -> tuple[Any, float, dict[Any, float]]:
    """The fastest of `default` (timed at `default_s`) and the `candidates` (those that fail to build are
    skipped), its time, and every timed candidate's."""
    from triton.runtime.errors import OutOfResources

    timings = {default: default_s}
    for candidate in candidates:
        if candidate in timings:
            continue
        try:
            timings[candidate] = measure_tiles(candidate)
        except (OutOfResources, ValueError) as err:
            print(f"skipped {candidate}: {err}")
    best = min(timings, key=timings.__getitem__)
    return best, timings[best], timings


def gemv_columns(
    case: dict[str, Any], device: torch.device, sweep: bool, floor: float, reference: torch.Tensor
) -> dict[str, Any]:
    """The GEMV's time, its multiple of the floor, its difference from the reference and its tiles."""
    from deepscout.model_runtime.v4.kernels.fp8_linear_gemv_triton import GemvTiles, device_gemv_tiles

    (n, k), groups = case["weight"].shape, case["groups"]
    w, sc = case["weight"], case["scale"]
    default = device_gemv_tiles(n // groups, k, groups=groups, device=device)
    case = {**case, "copies": streamed_copies(case) if device.type == "cuda" else [(w, sc)]}
    seconds, out = measure_gemv(case, device, None)
    columns = {
        "gemv_us": round(seconds * 1e6, 2),
        "gemv_x_floor": round(seconds / floor, 2) if floor else None,
        "gemv_weight_tb_per_s": round(case["weight"].nbytes / seconds / 1e12, 3),
        "gemv_max_rel_diff_vs_reference": float((out.float().view_as(reference) - reference).abs().max())
        / float(reference.abs().max()),
        "gemv_tiles": asdict(default),
    }
    if sweep:
        import triton

        k_cover = 128 * triton.next_power_of_2(triton.cdiv(k, 128))
        candidates = {GemvTiles(bn, min(bk, k_cover), w, st) for bn, bk, w, st in GEMV_SWEEP}
        best, best_s, timings = fastest(
            lambda t: measure_gemv(case, device, t)[0], default, seconds, candidates
        )
        columns |= {
            "gemv_best_tiles": asdict(best),
            "gemv_best_us": round(best_s * 1e6, 2),
            "gemv_sweep_us": [
                {**asdict(tiles), "us": round(t * 1e6, 2)}
                for tiles, t in sorted(timings.items(), key=lambda kv: kv[1])
            ],
        }
    return columns


def bf16_linear(case: dict[str, Any], device: torch.device) -> float:
    """A bf16 cuBLAS product with the weight dequantised once beforehand (the `nn.Linear` model's cost)."""
    groups, x = case["groups"], case["x"]
    w = dequantize_fp8_block(case["weight"], case["scale"], dtype=torch.bfloat16)
    if groups == 1:
        return timed(lambda: F.linear(x, w), device, graphs=device.type == "cuda")
    grouped = w.view(groups, -1, w.shape[1])
    return timed(lambda: torch.einsum("mgk,gnk->mgn", x, grouped), device, graphs=device.type == "cuda")


def run_case(
    device: torch.device, name: str, rows: int, shape: tuple[int, int, int], sweep: bool, rates: Ceilings
) -> dict[str, Any]:
    from deepscout.model_runtime.v4.kernels.fp8_linear_gemv_triton import ROW_LIMIT
    from deepscout.model_runtime.v4.kernels.fp8_linear_triton import TileConfig, device_tiles

    n, k, groups = shape
    case = make_case(device, rows, shape)
    default = device_tiles(rows, n // groups, k, groups=groups, device=device)
    seconds, out = measure(case, device, None)
    best, best_s = default, seconds
    if sweep:
        candidates = [TileConfig(*c[:5], split_k=c[5]) for c in SWEEP["decode" if rows <= 64 else "prefill"]]
        best, best_s, _ = fastest(lambda t: measure(case, device, t)[0], default, seconds, candidates)
    args = (case["x"], case["weight"], case["scale"])
    reference = fp8_linear_reference(*args, groups=groups).float()
    ref_s = timed(lambda: fp8_linear_reference(*args, groups=groups), device)
    bf16_s = bf16_linear(case, device)
    nbytes = case["weight"].nbytes + case["scale"].nbytes + case["x"].nbytes + rows * n * 2
    flops = 2 * rows * n * k
    byte_floor = nbytes / rates.copy_bytes_per_s if rates.copy_bytes_per_s else 0.0
    flop_floor = flops / rates.matmul_flop_per_s if rates.matmul_flop_per_s else 0.0
    floor = max(byte_floor, flop_floor)
    row = {
        "name": name,
        "rows": rows,
        "n": n,
        "k": k,
        "groups": groups,
        "triton_us": round(seconds * 1e6, 2),
        "bf16_linear_us": round(bf16_s * 1e6, 2),
        "reference_us": round(ref_s * 1e6, 2),
        "byte_floor_us": round(byte_floor * 1e6, 2),
        "flop_floor_us": round(flop_floor * 1e6, 2),
        "x_floor": round(seconds / floor, 2) if floor else None,
        "weight_tb_per_s": round(case["weight"].nbytes / seconds / 1e12, 3),
        "tflop_per_s": round(flops / seconds / 1e12, 2),
        "max_rel_diff_vs_reference": float((out.float().view_as(reference) - reference).abs().max())
        / float(reference.abs().max()),
        "tiles": asdict(default),
    }
    if sweep:
        row["best_tiles"] = asdict(best)
        row["best_us"] = round(best_s * 1e6, 2)
    if rows <= ROW_LIMIT:
        row |= gemv_columns(case, device, sweep, floor, reference)
    return row


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default=None, help="rows per call (M), e.g. 1,8,4096")
    parser.add_argument("--only", default=None, help="comma-separated linears, e.g. attn.wq_a,attn.wo_b")
    parser.add_argument("--sweep", action="store_true", help="also time the candidate tiles in SWEEP")
    default_json = Path(__file__).parent / "results" / "fp8_linear_kernel.json"
    parser.add_argument("--json", type=Path, default=default_json)
    opts = parser.parse_args()
    device = torch.device(opts.device)
    if device.type == "cpu":  # Triton reads this when the kernels are first defined
        os.environ.setdefault("TRITON_INTERPRET", "1")
    shapes = SMALL_SHAPES if device.type == "cpu" else FLASH_SHAPES
    if opts.only:
        shapes = {name: shapes[name] for name in opts.only.split(",")}
    rows_list = [
        int(r) for r in (opts.rows or ("1,2,37" if device.type == "cpu" else "1,2,4,8,4096")).split(",")
    ]
    torch.manual_seed(0)
    rates = ceilings(device)
    copy_tb, mm_tflop = rates.copy_bytes_per_s / 1e12, rates.matmul_flop_per_s / 1e12
    print(f"copy {copy_tb:.2f} TB/s, matmul {mm_tflop:.1f} TFLOP/s")
    results = []
    for rows in rows_list:
        for name, shape in shapes.items():
            row = run_case(device, name, rows, shape, opts.sweep, rates)
            results.append(row)
            print(row, flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    header = (
        f"{'linear':>13} {'M':>5} {'N':>6} {'K':>5} {'triton us':>10} {'gemv us':>8} {'bf16 us':>9} "
        f"{'ref us':>9} {'bytes us':>9} {'flops us':>9} {'x floor':>8} {'gemv xf':>8} {'W TB/s':>7} "
        f"{'TFLOP/s':>8} {'rel diff':>9}"
    )
    print(header)
    for r in results:
        print(
            f"{r['name']:>13} {r['rows']:>5} {r['n']:>6} {r['k']:>5} {r['triton_us']:>10} "
            f"{r.get('gemv_us', '-'):>8} "
            f"{r['bf16_linear_us']:>9} {r['reference_us']:>9} {r['byte_floor_us']:>9} "
            f"{r['flop_floor_us']:>9} "
            f"{r['x_floor'] or '-':>8} {r.get('gemv_x_floor') or '-':>8} {r['weight_tb_per_s']:>7} "
            f"{r['tflop_per_s']:>8} "
            f"{r['max_rel_diff_vs_reference']:>9.2e}"
        )
    write_report(opts.json, benchmark="fp8_linear_kernel", device=device, rates=rates, results=results)


if __name__ == "__main__":
    main()
