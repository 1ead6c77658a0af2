"""Speed of the V4 sparse-attention kernel against its floors (`kernels/sparse_attention.py`).

V4-Flash attention shapes in bfloat16: 64 heads of 512, one shared K = V head, window 128. Cases:
* decode: B rows (1, 8), one query each, at contexts 8K / 128K / 1M: HCA layers attend to window + every
  entry (ctx/128), CSA layers to window + the indexer's 512 (from ctx/4 entries in the pool);
* prefill: one 2,048-query chunk of one row at the same contexts.
The floors come from the same process: bytes a decode step must read (q once, each key row once) over a
device-to-device copy's rate, and a prefill's FLOPs (QK and PV: 4·M·heads·keys·dim) over an 8192³ bf16
matmul's rate. The reference path's time is shown for decode (it gathers every key per query).

Prints a table and writes `benchmarks/results/attention_kernel.json` (or `--json PATH`).

    python benchmarks/attention_kernel.py                 # CUDA
    TRITON_INTERPRET=1 python benchmarks/attention_kernel.py --device cpu --small
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from device_rates import ceilings, timed

from deepscout.model_runtime.v4.kernels.attention_keys import BandKeys, EntryKeys
from deepscout.model_runtime.v4.kernels.paged_keys import PagedKeys
from deepscout.model_runtime.v4.kernels.sparse_attention import sparse_attention, sparse_attention_reference

HEADS, DIM, WINDOW, TOPK = 64, 512, 128, 512
_SENTINEL = 2**62


def make_case(
    device: torch.device, rows: int, queries: int, context: int, kind: str, heads: int, dim: int
) -> dict[str, Any]:
    """Each row's last `queries` positions end at `context`; the band is a ring of WINDOW + queries keys."""
    g = torch.Generator(device=device).manual_seed(0)
    ratio, per_block = (4, 32) if kind == "csa" else (128, 1)
    n_entries = max(context // ratio, 1)
    blocks = -(-n_entries // per_block)
    band_rows = WINDOW + queries
    band_pos = torch.arange(context - WINDOW - queries + 1, context + 1, device=device)
    p = torch.arange(context - queries + 1, context + 1, device=device)
    own = p - band_pos[0]
    start = (own - WINDOW + 1).clamp(min=0)
    band = BandKeys(
        kv=torch.randn(rows * band_rows, dim, generator=g, device=device).to(torch.bfloat16),
        positions=band_pos.repeat(rows),
        start=(start[None, :] + band_rows * torch.arange(rows, device=device)[:, None]).flatten().int(),
        length=(own - start + 1).repeat(rows).int(),
        max_length=WINDOW,
    )
    pool = torch.randn(rows * blocks, per_block, dim, generator=g, device=device).to(torch.bfloat16)
    table = torch.randperm(rows * blocks, generator=g, device=device).view(rows, blocks).int()
    limit = ((p + 1) // ratio).repeat(rows).int()
    indices = None
    if kind == "csa":
        chosen = min(TOPK, n_entries)
        indices = torch.randint(0, n_entries, (rows * queries, chosen), generator=g, device=device).int()
    entries = EntryKeys(
        keys=PagedKeys("plain", pool),
        block_table=table,
        row=torch.arange(rows, device=device).repeat_interleave(queries).int(),
        limit=limit,
        indices=indices,
        max_count=indices.shape[1] if indices is not None else n_entries,
    )
    q = torch.randn(rows * queries, heads, dim, generator=g, device=device).to(torch.bfloat16)
    sink = torch.randn(heads, generator=g, device=device)
    keys = WINDOW + entries.max_count
    return {"q": q, "band": band, "entries": entries, "sink": sink, "qpos": p.repeat(rows), "keys": keys}


SWEEP = [
    (16, 32, 4, 2),
    (16, 64, 4, 2),
    (32, 32, 8, 2),
    (32, 64, 8, 2),
    (32, 64, 8, 3),
    (32, 128, 8, 1),
    (64, 32, 8, 1),
    (64, 32, 16, 1),
    (64, 64, 16, 1),
    (64, 32, 16, 2),
]


def measure(
    case: dict[str, Any], impl: str, device: torch.device, tiles: tuple[int, ...] | None = None
) -> float:
    q, band, entries, sink, qpos = case["q"], case["band"], case["entries"], case["sink"], case["qpos"]

    def call() -> torch.Tensor:
        if impl == "reference":
            return sparse_attention_reference(q, band, entries, sink, qpos, scale=DIM**-0.5, window=WINDOW)
        if tiles is not None:
            from deepscout.model_runtime.v4.kernels.sparse_attention_triton import (
                AttentionTiles,
                sparse_attention_triton,
            )

            chosen = AttentionTiles(*tiles)
            return sparse_attention_triton(
                q, band, entries, sink, qpos, scale=DIM**-0.5, window=WINDOW, tiles=chosen
            )
        return sparse_attention(q, band, entries, sink, qpos, scale=DIM**-0.5, window=WINDOW, impl="triton")

    return timed(call, device, graphs=True)


def sweep(case: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Milliseconds per candidate tile shape (head block, key block, warps, stages); failures skipped."""
    out = {}
    for tiles in SWEEP:
        try:
            out[str(tiles)] = round(measure(case, "triton", device, tiles) * 1000, 4)
        except Exception as error:  # a shape that does not compile is reported, not fatal
            out[str(tiles)] = float("nan")
            print(f"tiles {tiles}: {type(error).__name__}: {str(error)[:120]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU interpreter check)")
    parser.add_argument("--sweep", action="store_true", help="also time the tile shapes in SWEEP")
    default_json = Path(__file__).parent / "results" / "attention_kernel.json"
    parser.add_argument("--json", type=Path, default=default_json)
    opts = parser.parse_args()
    device = torch.device(opts.device)
    heads, dim = (16, 64) if opts.small else (HEADS, DIM)
    contexts = [1024] if opts.small else [8192, 131072, 1048576]
    prefill_queries = 32 if opts.small else 2048
    rates = ceilings(device)
    copy_rate, mm_rate = rates.copy_bytes_per_s, rates.matmul_flop_per_s
    rows_out = []
    for context in contexts:
        for kind in ("hca", "csa"):
            for rows, queries in ((1, 1), (8, 1), (1, prefill_queries)):
                case = make_case(device, rows, queries, context, kind, heads, dim)
                fused = measure(case, "triton", device)
                ref = measure(case, "reference", device) if queries == 1 else None
                m = rows * queries
                key_bytes = rows * case["keys"] * dim * 2 + m * heads * dim * 4  # keys once, q in + out
                flops = 4 * m * heads * case["keys"] * dim
                rate = copy_rate if queries == 1 else mm_rate
                floor = (key_bytes if queries == 1 else flops) / rate if rate else 0.0
                row = {
                    "context": context,
                    "layer": kind,
                    "rows": rows,
                    "queries_per_row": queries,
                    "keys_per_query": case["keys"],
                    "triton_ms": round(fused * 1000, 4),
                    "reference_ms": None if ref is None else round(ref * 1000, 4),
                    "floor_ms": round(floor * 1000, 4) if floor else None,
                    "x_floor": round(fused / floor, 2) if floor else None,
                    "bound": "bytes" if queries == 1 else "flops",
                }
                if opts.sweep and not opts.small and queries > 1:
                    row["sweep_ms"] = sweep(case, device)
                rows_out.append(row)
                print(row, flush=True)
                del case
    print(f"\ncopy {copy_rate / 1e12:.2f} TB/s, bf16 matmul {mm_rate / 1e12:.0f} TFLOP/s")
    print(
        f"{'context':>8} {'layer':>5} {'B':>3} {'q/row':>6} {'keys':>6} {'triton ms':>10} {'ref ms':>9} "
        f"{'floor ms':>9} {'x floor':>8}"
    )
    for r in rows_out:
        ref_ms = "-" if r["reference_ms"] is None else r["reference_ms"]
        print(
            f"{r['context']:>8} {r['layer']:>5} {r['rows']:>3} {r['queries_per_row']:>6} "
            f"{r['keys_per_query']:>6} {r['triton_ms']:>10} {ref_ms:>9} {r['floor_ms'] or '-':>9} "
            f"{r['x_floor'] or '-':>8}"
        )
    report = {
        "benchmark": "attention_kernel",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "copy_tb_s": round(copy_rate / 1e12, 3),
        "matmul_tflop_s": round(mm_rate / 1e12, 1),
        "results": rows_out,
    }
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
