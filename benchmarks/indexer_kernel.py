"""Speed of the lightning-indexer kernel (scores + top-k over paged keys) against its floors.

V4-Flash indexer shapes: 64 heads of 128, top-k 512, keys in blocks of 32 entries scattered over the pool,
stored as bf16, FP8 e4m3 or MXFP4 (quantised on the device). Cases:
* prefill: one 2,048-query chunk at the end of a context holding T = 32K and 256K keys (limits T-511..T):
  FLOP/s counted as 2·M·heads·dim·T, against an 8192³ bf16 matmul timed in the same process;
* decode: B = 1 and 8 rows, one query each, T = 32K and 256K keys per row: key bytes read per second,
  against a device-to-device copy (bytes read + written) timed in the same process.
Reported per case: the Triton kernel's scores, torch.topk on them, their total, topk's share, a two-pass
top-k (per chunk of 4K / 16K keys, then over the candidates; same selected scores) as a candidate
replacement, the achieved rate and the fraction of the floor; the float32 reference's time where it fits in
memory (decode, and prefill at 32K). `--sweep` also times a few tile shapes per case, keeping the fastest.
Decode cases are timed as CUDA-graph replays (`device_rates.timed(graphs=True)`), as the decode step runs
them: launched from Python one at a time, a short row's call measures the launch (about 22 µs at 2,048
keys), not the kernel. The float32 reference is timed as launched (its speedup column compares the two).

Prints a table and writes `benchmarks/results/indexer_kernel.json` (or `--json PATH`).

    python benchmarks/indexer_kernel.py --sweep          # CUDA
    python benchmarks/indexer_kernel.py --device cpu     # tiny shapes under Triton's interpreter
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from device_rates import Ceilings, ceilings, timed

from deepscout.model_runtime.v4.kernels.indexer_scores import indexer_scores, score_scale
from deepscout.model_runtime.v4.kernels.paged_keys import KeyFormat, PagedKeys, PagedRows
from deepscout.model_runtime.v4.kernels.topk_select import masked_topk
from deepscout.model_runtime.v4.weights.quant import quantize_mxfp4

HEADS, DIM, TOPK, PER_BLOCK, PREFILL_QUERIES = 64, 128, 512, 32, 2048
KEY_BYTES = {"plain": DIM * 2, "fp8": DIM, "mxfp4": DIM // 2 + DIM // 32}
REFERENCE_MAX_BYTES = 40 << 30  # the reference materialises [M, heads, T] float32
TOPK_CHUNKS = (4096, 16384)


def paged_keys(fmt: KeyFormat, n_keys: int, dim: int, device: torch.device, g: torch.Generator) -> PagedKeys:
    """`n_keys` RMS-normalised keys in blocks of PER_BLOCK, stored in `fmt` (quantised on `device`)."""
    rows = torch.randn(n_keys, dim, device=device, generator=g)
    rows = rows * torch.rsqrt(rows.square().mean(-1, keepdim=True))
    shape = (n_keys // PER_BLOCK, PER_BLOCK)
    if fmt == "plain":
        return PagedKeys("plain", rows.to(torch.bfloat16).view(*shape, dim))
    if fmt == "fp8":
        return PagedKeys("fp8", rows.to(torch.float8_e4m3fn).view(*shape, dim))
    packed, scale = quantize_mxfp4(rows)
    return PagedKeys(
        "mxfp4", packed.view(torch.uint8).view(*shape, -1), scale.view(torch.uint8).view(*shape, -1)
    )


def make_case(
    fmt: KeyFormat, rows: int, queries: int, keys: int, heads: int, dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, PagedKeys, PagedRows, torch.Tensor]:
    """`rows` rows of `queries` queries at the end of `keys` keys each, blocks shuffled over the pool."""
    g = torch.Generator(device=device).manual_seed(0)
    blocks = keys // PER_BLOCK
    stored = paged_keys(fmt, rows * keys, dim, device, g)
    table = torch.randperm(rows * blocks, device=device, generator=g).view(rows, blocks).int()
    starts = (torch.arange(rows + 1, device=device) * queries).int()
    q = torch.randn(rows * queries, heads, dim, device=device, generator=g).to(torch.bfloat16)
    w = torch.randn(rows * queries, heads, device=device, generator=g) * heads**-0.5
    behind = torch.arange(queries - 1, -1, -1, device=device) // 4  # consecutive tokens, ratio 4
    limit = (keys - behind).repeat(rows).int()
    return q, w, stored, PagedRows(table, starts, queries), limit


def tile_candidates(queries: int, heads: int, sweep: bool) -> list[Any]:
    """The default tiles, and with `sweep` a few alternatives for the case's shape."""
    from deepscout.model_runtime.v4.kernels.indexer_scores_triton import IndexerTiles, default_tiles

    tiles = [default_tiles(queries, heads)]
    if sweep and queries == 1:
        tiles += [
            IndexerTiles(1, 64, 32),  # short rows (8K context: 2,048 keys): more programs than 128-key tiles
            IndexerTiles(1, 64, 64),
            IndexerTiles(1, 64, 256, num_warps=8),
            IndexerTiles(1, 32, 128),
        ]
    elif sweep:
        tiles += [
            IndexerTiles(64, 1, 64, num_warps=4),
            IndexerTiles(128, 1, 128, num_warps=8),
            IndexerTiles(64, 1, 256, num_warps=8),
            IndexerTiles(64, 1, 128, num_warps=8, num_stages=3),
            IndexerTiles(32, 2, 128, num_warps=4),
        ]
    return tiles


def run_case(
    fmt: KeyFormat, kind: str, rows: int, keys: int, opts: argparse.Namespace, floors: Ceilings
) -> dict[str, Any]:
    from deepscout.model_runtime.v4.kernels.indexer_scores_triton import indexer_scores_triton

    device = torch.device(opts.device)
    queries = opts.prefill_queries if kind == "prefill" else 1
    q, w, stored, layout, limit = make_case(fmt, rows, queries, keys, opts.heads, opts.dim, device)
    graphs = kind == "decode"
    best: tuple[float, Any] | None = None
    for tiles in tile_candidates(queries, opts.heads, opts.sweep):
        seconds = timed(
            partial(indexer_scores_triton, q, w, stored, layout, limit, score_scale(q), tiles),
            device,
            graphs=graphs,
        )
        if best is None or seconds < best[0]:
            best = (seconds, tiles)
    assert best is not None
    scores_s, tiles = best
    scores = indexer_scores_triton(q, w, stored, layout, limit, score_scale(q), tiles)
    topk_s = timed(lambda: masked_topk(scores, limit, TOPK, impl="reference"), device, graphs=graphs)
    chunked = {
        c: timed(partial(chunked_topk, scores, limit, TOPK, c), device, graphs=graphs) for c in TOPK_CHUNKS
    }
    assert_same_selection(
        scores, masked_topk(scores, limit, TOPK, impl="reference"), chunked_topk(scores, limit, TOPK, 4096)
    )
    total = scores_s + topk_s
    matmul_flops, copy_bytes = floors.matmul_flop_per_s, floors.copy_bytes_per_s
    m = q.shape[0]
    row: dict[str, Any] = {
        "case": kind,
        "format": fmt,
        "rows": rows,
        "queries": m,
        "keys_per_row": keys,
        "tiles": asdict(tiles),
        "scores_ms": scores_s * 1e3,
        "topk_ms": topk_s * 1e3,
        "total_ms": total * 1e3,
        "topk_share": topk_s / total,
        "chunked_topk_ms": {str(c): s * 1e3 for c, s in chunked.items()},
    }
    if kind == "prefill":
        flops = 2 * m * opts.heads * opts.dim * keys
        row["tflops"] = flops / scores_s / 1e12
        row["of_matmul"] = flops / scores_s / matmul_flops if matmul_flops else None
    else:
        key_bytes = rows * keys * KEY_BYTES[fmt] * opts.dim // DIM
        row["key_gbps"] = key_bytes / scores_s / 1e9
        row["of_copy"] = key_bytes / scores_s / copy_bytes if copy_bytes else None
    if m * opts.heads * keys * 4 * 2 <= REFERENCE_MAX_BYTES:
        ref_s = timed(lambda: indexer_scores(q, w, stored, layout, limit, impl="reference"), device)
        row["reference_ms"] = ref_s * 1e3
        row["speedup_vs_reference"] = ref_s / scores_s
    return row


def chunked_topk(
    scores: torch.Tensor, limit: torch.Tensor, k: int, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_topk` in two passes (a candidate for replacing it, measured here): the top k of each
    `chunk` keys, then the top k of those candidates."""
    m, t = scores.shape
    if t % chunk or t <= chunk:
        return masked_topk(scores, limit, k, impl="reference")
    part = scores.view(m, t // chunk, chunk).topk(min(k, chunk), dim=-1)
    offsets = torch.arange(0, t, chunk, device=scores.device)[None, :, None]
    candidates = (part.indices + offsets).flatten(1)
    indices = candidates.gather(1, part.values.flatten(1).topk(min(k, t), dim=-1).indices)
    return indices, indices < limit[:, None]


def assert_same_selection(
    scores: torch.Tensor, one: tuple[torch.Tensor, torch.Tensor], other: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Both selections pick the same scores (ties may pick different indices)."""
    picked = [scores.gather(1, indices).sort(dim=1).values for indices, _ in (one, other)]
    assert torch.equal(picked[0], picked[1]), "chunked top-k selected different scores"


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"{'case':8} {'fmt':6} {'B':>2} {'T':>7} {'scores ms':>10} {'topk ms':>8} {'topk%':>6} "
        f"{'2-pass ms':>9} {'rate':>14} {'floor%':>7} {'vs ref':>7}"
    )
    for r in results:
        rate = f"{r['tflops']:.1f} TFLOP/s" if "tflops" in r else f"{r['key_gbps']:.0f} GB/s"
        floor = r.get("of_matmul", r.get("of_copy"))
        floor_text = "" if floor is None else f"{100 * floor:.0f}%"
        speedup = r.get("speedup_vs_reference")
        speedup_text = "" if speedup is None else f"{speedup:.0f}x"
        share = f"{100 * r['topk_share']:.0f}%"
        print(
            f"{r['case']:8} {r['format']:6} {r['rows']:>2} {r['keys_per_row']:>7} {r['scores_ms']:>10.3f} "
            f"{r['topk_ms']:>8.3f} {share:>6} {min(r['chunked_topk_ms'].values()):>9.3f} {rate:>14} "
            f"{floor_text:>7} {speedup_text:>7}"
        )


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--formats", default="plain,fp8,mxfp4")
    parser.add_argument(
        "--keys", default=None, help="keys per row, comma-separated (default 32768,262144; 8K context: 2048)"
    )
    parser.add_argument("--sweep", action="store_true", help="also time alternative tile shapes")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "indexer_kernel.json"
    )
    opts = parser.parse_args()
    if opts.device == "cpu":  # the entry point picks Triton's interpreter before Triton is imported
        os.environ.setdefault("TRITON_INTERPRET", "1")
        opts.heads, opts.dim, opts.prefill_queries, default_keys = 8, 32, 16, "256"
    else:
        opts.heads, opts.dim, opts.prefill_queries, default_keys = HEADS, DIM, PREFILL_QUERIES, "32768,262144"
    key_counts = [int(k) for k in (opts.keys or default_keys).split(",")]
    floors = ceilings(torch.device(opts.device))
    print(
        f"bf16 matmul {floors.matmul_flop_per_s / 1e12:.0f} TFLOP/s, "
        f"copy {floors.copy_bytes_per_s / 1e9:.0f} GB/s"
    )
    results = []
    for fmt in opts.formats.split(","):
        for keys in key_counts:
            for kind, rows in (("prefill", 1), ("decode", 1), ("decode", 8)):
                row = run_case(fmt, kind, rows, keys, opts, floors)
                results.append(row)
                print(json.dumps(row), flush=True)
                if opts.device.startswith("cuda"):
                    torch.cuda.empty_cache()
    print_table(results)
    report = {
        "device": torch.cuda.get_device_name() if opts.device.startswith("cuda") else platform.processor(),
        "torch": torch.__version__,
        "matmul_tflops": floors.matmul_flop_per_s / 1e12,
        "copy_gbps": floors.copy_bytes_per_s / 1e9,
        "results": results,
    }
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
