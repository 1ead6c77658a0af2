"""Speed of the indexer's top-k select (`kernels/topk_select.py`): the Triton select against
`torch.topk(sorted=False)`, k = 512, on float32 scores already -inf past each row's limit.

Cases: decode (R = 1 and 8 rows, N = 2,048 / 4,096 / 8,192 / 32,768 / 262,144 scores per row, every entry
visible: 8K, 16K, 32K, 128K and 1M tokens of context at ratio 4) and prefill (R = 2,048 queries at the end
of N = 2,048 / 65,536 / 262,144 entries, limits N-511..N as consecutive tokens at ratio 4). Times are
CUDA-graph replays (`device_rates.timed(graphs=True)`: the decode step runs in a graph). Reported per case:
both times, the speedup, the Triton layout (each entry ranked by its program's count, one program per row in
registers, or the row split into chunks over passes) and its read rate (visible scores x 4 bytes per pass
over the time; the rank layout reads the row once a program, mostly from L2) against a device-to-device
copy's. Every case also checks that both pick the same multiset of scores. `--sweep` times a few `TopkTiles`
alternatives per case, keeping the fastest (each one's time in the JSON's `sweep`; the table also shows the
default tiles' time).

Prints a table and writes `benchmarks/results/topk_kernel.json` (or `--json PATH`). CUDA only.

    python benchmarks/topk_kernel.py --sweep
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from device_rates import ceilings, timed, write_report

from deepscout.model_runtime.v4.kernels.topk_select import masked_topk

if TYPE_CHECKING:
    from deepscout.model_runtime.v4.kernels.topk_select_triton import TopkTiles

TOPK, RATIO = 512, 4
CASES = [("decode", 1, n) for n in (2048, 4096, 8192, 32768, 262144)] + [
    ("decode", 8, n) for n in (2048, 4096, 8192, 32768, 262144)
] + [("prefill", 2048, n) for n in (2048, 65536, 262144)]  # fmt: skip


def make_case(kind: str, rows: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian scores `[rows, n]` (few ties) and limits: all of `n` (decode), or the causal limits of
    `rows` consecutive tokens ending at entry `n` (prefill)."""
    g = torch.Generator(device=device).manual_seed(rows * n)
    scores = torch.randn(rows, n, device=device, generator=g)
    if kind == "decode":
        limit = torch.full((rows,), n, dtype=torch.int32, device=device)
    else:
        behind = torch.arange(rows - 1, -1, -1, device=device) // RATIO
        limit = (n - behind).clamp_min(0).int()
    scores.masked_fill_(torch.arange(n, device=device)[None, :] >= limit[:, None], float("-inf"))
    return scores, limit


def tile_candidates(sweep: bool) -> list[TopkTiles]:
    """The default layout, and with `sweep` a few alternatives (tile, programs, warps, resident size)."""
    from deepscout.model_runtime.v4.kernels.topk_select_triton import TopkTiles

    tiles = [TopkTiles()]
    if sweep:
        tiles += [
            TopkTiles(rank_max_pairs=0),
            TopkTiles(rank_max_pairs=1 << 27),
            TopkTiles(rank_max_pairs=1 << 27, rank_rows=32, rank_block=128),
            TopkTiles(rank_max_pairs=1 << 27, rank_rows=8, rank_block=512),
            TopkTiles(rank_max_pairs=1 << 27, rank_rows=64, rank_block=64),
            TopkTiles(block=1024, num_warps=4),
            TopkTiles(block=4096, num_warps=8),
            TopkTiles(block=4096, num_warps=16),
            TopkTiles(target_programs=256),
            TopkTiles(target_programs=1024),
            TopkTiles(resident_max=4096),
            TopkTiles(resident_max=16384),
        ]
    return tiles


def layout(tiles: TopkTiles, rows: int, n: int) -> str:
    """Which Triton layout the case takes (with the split layout's chunks a row)."""
    from deepscout.model_runtime.v4.kernels.topk_select_triton import choose_layout, split_chunks

    chosen = choose_layout(tiles, rows, n)
    return f"split x{split_chunks(tiles, rows, n)[0]}" if chosen == "split" else chosen


def same_selection(scores: torch.Tensor, one: torch.Tensor, other: torch.Tensor) -> bool:
    picked = [scores.gather(1, indices).sort(dim=1).values for indices in (one, other)]
    return torch.equal(picked[0], picked[1])


def run_case(
    kind: str, rows: int, n: int, device: torch.device, sweep: bool, copy_rate: float
) -> dict[str, Any]:
    from deepscout.model_runtime.v4.kernels.topk_select_triton import topk_select_triton

    scores, limit = make_case(kind, rows, n, device)
    ref_s = timed(lambda: masked_topk(scores, limit, TOPK, impl="reference"), device, graphs=True)
    candidates = [
        (timed(partial(topk_select_triton, scores, limit, TOPK, tiles), device, graphs=True), tiles)
        for tiles in tile_candidates(sweep)
    ]
    triton_s, tiles = min(candidates, key=lambda candidate: candidate[0])
    chosen = topk_select_triton(scores, limit, TOPK, tiles)[0]
    reference = masked_topk(scores, limit, TOPK, impl="reference")[0]
    passes = {"rank": -(-n // tiles.rank_rows), "resident": 1}.get(layout(tiles, rows, n), 5)
    read_bytes = float(limit.clamp(max=n).sum()) * 4 * passes
    return {
        "case": kind,
        "rows": rows,
        "n": n,
        "reference_ms": round(ref_s * 1e3, 4),
        "triton_ms": round(triton_s * 1e3, 4),
        "default_ms": round(candidates[0][0] * 1e3, 4),
        "speedup": round(ref_s / triton_s, 2),
        "layout": layout(tiles, rows, n),
        "tiles": asdict(tiles),
        "read_gb_per_s": round(read_bytes / triton_s / 1e9, 1),
        "of_copy": round(2 * read_bytes / triton_s / copy_rate, 3) if copy_rate else None,
        "same_selection": same_selection(scores, chosen, reference),
        "sweep": [
            {"layout": layout(t, rows, n), "tiles": asdict(t), "ms": round(sec * 1e3, 4)}
            for sec, t in candidates
        ],
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--sweep", action="store_true", help="also time alternative TopkTiles layouts")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "topk_kernel.json")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("topk_kernel.py needs a CUDA device")
    device = torch.device("cuda")
    rates = ceilings(device)
    print(f"copy {rates.copy_bytes_per_s / 1e12:.2f} TB/s")
    rows = []
    for kind, n_rows, n in CASES:
        row = run_case(kind, n_rows, n, device, opts.sweep, rates.copy_bytes_per_s)
        rows.append(row)
        print(row, flush=True)
        torch.cuda.empty_cache()
    print(
        f"{'case':8} {'R':>5} {'N':>7} {'torch ms':>9} {'default ms':>11} {'triton ms':>10} {'speedup':>8} "
        f"{'layout':>10} {'GB/s':>7} {'same':>5}"
    )
    for r in rows:
        print(
            f"{r['case']:8} {r['rows']:>5} {r['n']:>7} {r['reference_ms']:>9.4f} {r['default_ms']:>11.4f} "
            f"{r['triton_ms']:>10.4f} {r['speedup']:>8} {r['layout']:>10} {r['read_gb_per_s']:>7} "
            f"{r['same_selection']!s:>5}"
        )
    write_report(
        opts.json, benchmark="topk_kernel", device=device, rates=rates, results=rows, shape={"k": TOPK}
    )


if __name__ == "__main__":
    main()
