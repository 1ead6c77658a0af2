"""Speed of a compressor's decode step (`kernels/compress_step.py`): the Triton pool + finish launches
against the PyTorch reference and their byte floor, at V4-Flash's compressors.

Cases: HCA (512 channels, a 128-slot window), CSA's main compressor (512 channels, windows of 4 overlapping
by 4) and its indexer (128 channels, the same windows), at `--rows` decode rows (1 and 8) in distinct
slots, bfloat16 projections, `--state` dtype tails, entries in plain rows (`--paper`: FP8 + BF16 RoPE main
entries and MXFP4 indexer keys, which adds the pool's quantising write). Times are CUDA-graph replays
(`device_rates.timed(graphs=True)`), as the decode step runs; the floor is the bytes the step must read and
write (the row's window of tails and overlap state, the position bias, the token's rows) over a
device-to-device copy's rate. Each row also checks the entries against the reference's, and the table ends
with the decode step's total at each row count (21 CSA layers x 2 compressors + 20 HCA layers). `--sweep`
times a few `CompressTiles` alternatives per case, keeping the fastest.

Prints a table and writes `benchmarks/results/compress_step_kernel.json` (or `--json PATH`).

    python benchmarks/compress_step_kernel.py --sweep        # CUDA
    python benchmarks/compress_step_kernel.py --device cpu   # small shapes under Triton's interpreter
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from device_rates import ceilings, timed, write_report

from deepscout.model_runtime.v4.kernels.compress_step import compress_step_reference
from deepscout.model_runtime.v4.kernels.compressor_state import CompressorState
from deepscout.model_runtime.v4.kernels.paged_keys import KeyFormat, PagedKeys

if TYPE_CHECKING:
    from deepscout.model_runtime.v4.kernels.compress_step_triton import CompressTiles


@dataclass(frozen=True)
class Compressor:
    """One of V4-Flash's compressors: its channels, window, overlap, calls per decode step (one per layer
    of its kind) and entry format in the paper layout."""

    name: str
    dim: int
    ratio: int
    overlap: bool
    calls: int
    paper: KeyFormat


COMPRESSORS = [
    Compressor("hca", 512, 128, False, 20, "fp8_rope"),
    Compressor("csa", 512, 4, True, 21, "fp8_rope"),
    Compressor("indexer", 128, 4, True, 21, "mxfp4"),
]
ROPE_HALF, PER_BLOCK, PROJ = 32, 64, torch.bfloat16
#: kv, gate, positions, slots, cos, sin
StepInputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_case(
    device: torch.device,
    rows: int,
    shape: tuple[int, int, int],
    overlap: bool,
    fmt: KeyFormat,
    stored: torch.dtype,
) -> tuple[StepInputs, CompressorState]:
    """The step's inputs for `rows` rows mid-window (position `ratio * (row + 3) - 2`) in slots 0..rows-1
    of `rows + 1`, and the compressor's state with an empty entry pool of one block per row; `shape` is
    (channels, window ratio, RoPE pairs)."""
    dim, ratio, rope_half = shape
    g = torch.Generator(device=device).manual_seed(rows * dim + ratio)
    width = 2 * dim if overlap else dim
    slots = rows + 1

    def rand(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device).to(dtype)

    rope = 2 * rope_half
    if fmt == "plain":
        entries = PagedKeys("plain", torch.zeros(rows, PER_BLOCK, dim, dtype=stored, device=device))
    elif fmt == "fp8_rope":
        nope = torch.zeros(rows, PER_BLOCK, dim - rope, device=device).to(torch.float8_e4m3fn)
        entries = PagedKeys(
            "fp8_rope", nope, rope=torch.zeros(rows, PER_BLOCK, rope, device=device).bfloat16()
        )
    else:
        packed = torch.zeros(rows, PER_BLOCK, dim // 2, dtype=torch.uint8, device=device)
        entries = PagedKeys(
            "mxfp4", packed, torch.zeros(rows, PER_BLOCK, dim // 32, dtype=torch.uint8, device=device)
        )
    state = CompressorState(
        tail_kv=rand(slots, ratio, width, dtype=stored),
        tail_gate=rand(slots, ratio, width, dtype=stored),
        overlap_kv=rand(slots, ratio, dim, dtype=stored) if overlap else None,
        overlap_gate=rand(slots, ratio, dim, dtype=stored) if overlap else None,
        ape=rand(ratio, width),
        norm_weight=rand(dim).abs() + 0.5,
        norm_eps=1e-6,
        entries=entries,
        block_tables=torch.arange(rows, dtype=torch.int32, device=device)[:, None],
    )
    angles = rand(rows, rope_half)
    positions = ratio * (torch.arange(rows, device=device) + 3) - 2
    kv, gate = rand(rows, width, dtype=PROJ), rand(rows, width, dtype=PROJ)
    return (kv, gate, positions, torch.arange(rows, device=device), angles.cos(), angles.sin()), state


def step_bytes(rows: int, dim: int, ratio: int, overlap: bool, stored: torch.dtype) -> int:
    """Bytes a step must move at least: each row's tails (and overlap state) read, the position bias read
    once, the token's projections read and its tail row written, and the entry written (float32 rows)."""
    width = 2 * dim if overlap else dim
    item = torch.empty(0, dtype=stored).element_size()
    window = 2 * ratio * width * item + (4 * ratio * dim * item if overlap else 0)  # overlap: read + write
    token = 2 * width * 2 + 2 * width * item + dim * 4
    return rows * (window + token) + ratio * width * 4


def tile_candidates(sweep: bool) -> list[CompressTiles]:
    """The default layout, and with `sweep` a few alternatives (channels per program, tile, warps)."""
    from deepscout.model_runtime.v4.kernels.compress_step_triton import CompressTiles

    tiles = [CompressTiles()]
    if sweep:
        tiles += [
            CompressTiles(channels=8),
            CompressTiles(channels=32),
            CompressTiles(channels=64),
            CompressTiles(num_warps=2),
            CompressTiles(num_warps=8),
            CompressTiles(channels=32, num_warps=8),
            CompressTiles(tile_elements=1024),
        ]
    return tiles


def run_case(
    device: torch.device,
    rows: int,
    compressor: Compressor,
    paper: bool,
    stored: torch.dtype,
    copy_rate: float,
    sweep: bool,
) -> dict[str, Any]:
    from deepscout.model_runtime.v4.kernels.compress_step_triton import compress_step_triton

    dim, ratio, overlap, rope_half = compressor.dim, compressor.ratio, compressor.overlap, ROPE_HALF
    if device.type == "cpu":
        dim, ratio, rope_half = dim // 4, min(ratio, 16), 8
    fmt: KeyFormat = compressor.paper if paper else "plain"
    args, state = make_case(device, rows, (dim, ratio, rope_half), overlap, fmt, stored)
    ref_args, ref_state = make_case(device, rows, (dim, ratio, rope_half), overlap, fmt, stored)
    graphs = device.type == "cuda"
    best: tuple[float, CompressTiles] | None = None
    for tiles in tile_candidates(sweep):
        seconds = timed(partial(compress_step_triton, *args, state, tiles=tiles), device, graphs=graphs)
        if best is None or seconds < best[0]:
            best = (seconds, tiles)
    assert best is not None
    triton_s, tiles = best
    ref_s = timed(partial(compress_step_reference, *ref_args, ref_state), device, graphs=graphs)
    want = ref_state.entries.dequantize().float()
    got = state.entries.dequantize().float()
    needed = step_bytes(rows, dim, ratio, overlap, stored)
    floor = needed / copy_rate if copy_rate else 0.0
    return {
        "compressor": compressor.name,
        "rows": rows,
        "dim": dim,
        "ratio": ratio,
        "format": fmt,
        "calls_per_step": compressor.calls,
        "tiles": asdict(tiles),
        "triton_us": round(triton_s * 1e6, 2),
        "reference_us": round(ref_s * 1e6, 2),
        "speedup": round(ref_s / triton_s, 2),
        "floor_us": round(floor * 1e6, 2),
        "x_floor": round(triton_s / floor, 2) if floor else None,
        "max_rel_diff_vs_reference": float((got - want).abs().max() / want.abs().max()),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default="1,8", help="decode rows, e.g. 1,8,32")
    parser.add_argument("--state", choices=["float32", "bfloat16"], default="float32", help="tails' dtype")
    parser.add_argument(
        "--paper", action="store_true", help="FP8 + BF16 RoPE / MXFP4 entries, not plain rows"
    )
    parser.add_argument(
        "--sweep", action="store_true", help="time CompressTiles alternatives, keep the fastest"
    )
    default_json = Path(__file__).parent / "results" / "compress_step_kernel.json"
    parser.add_argument("--json", type=Path, default=default_json)
    opts = parser.parse_args()
    device = torch.device(opts.device)
    if device.type == "cpu":  # Triton reads this when the kernels are first defined
        os.environ.setdefault("TRITON_INTERPRET", "1")
    stored = getattr(torch, opts.state)
    rates = ceilings(device)
    print(f"copy {rates.copy_bytes_per_s / 1e12:.2f} TB/s")
    rows = []
    for n in [int(r) for r in opts.rows.split(",")]:
        for compressor in COMPRESSORS:
            row = run_case(device, n, compressor, opts.paper, stored, rates.copy_bytes_per_s, opts.sweep)
            rows.append(row)
            print(row, flush=True)
    print(
        f"{'compressor':>10} {'B':>3} {'format':>8} {'triton us':>10} {'ref us':>8} {'speedup':>8} "
        f"{'floor us':>9} {'x floor':>8} {'rel diff':>9}  tiles"
    )
    for r in rows:
        t = r["tiles"]
        layout = f"{t['channels']}ch/{t['tile_elements']}/{t['num_warps']}w"
        print(
            f"{r['compressor']:>10} {r['rows']:>3} {r['format']:>8} {r['triton_us']:>10} "
            f"{r['reference_us']:>8} {r['speedup']:>8} {r['floor_us']:>9} {r['x_floor'] or '-':>8} "
            f"{r['max_rel_diff_vs_reference']:>9.2e}  {layout}"
        )
    for n in sorted({r["rows"] for r in rows}):
        at = [r for r in rows if r["rows"] == n]
        total = sum(r["triton_us"] * r["calls_per_step"] for r in at)
        ref_total = sum(r["reference_us"] * r["calls_per_step"] for r in at)
        print(f"decode step at B={n}: {total / 1e3:.3f} ms triton, {ref_total / 1e3:.3f} ms reference")
    write_report(
        opts.json,
        benchmark="compress_step_kernel",
        device=device,
        rates=rates,
        results=rows,
        shape={"projections": str(PROJ), "state": opts.state, "rope_half": ROPE_HALF, "per_block": PER_BLOCK},
    )


if __name__ == "__main__":
    main()
