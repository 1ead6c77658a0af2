"""Speed of the ranks' sums a decode step makes (`RankGroup.all_reduce_sum`): NCCL's all-reduce against the
one-shot kernels on symmetric memory (`parallel/one_shot_reduce.py`), on two GPUs.

Each case sums `[rows, hidden]` partials (float32 as the MoE's, bfloat16 as the attention heads') 86 times
in one captured CUDA graph, as a decode step of V4-Flash's 43 layers does, and reports µs a sum from the
graph's replays; each path's sums are checked against the exact sum first.

Prints a table (rank 0) and writes `benchmarks/results/all_reduce_kernel.json` (or `--json PATH`).

    python benchmarks/all_reduce_kernel.py                    # two CUDA devices
    python benchmarks/all_reduce_kernel.py --rows 1,8,32 --hidden 4096
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from deepscout.model_runtime.v4.parallel.rank_group import AllReduceImpl, RankGroup

SUMS_PER_GRAPH = 86
"""Sums a decode step of V4-Flash makes: one for the attention heads and one for the MoE, 43 layers."""


def _rank(rank: int, opts: argparse.Namespace, rendezvous: Path, results: dict[str, float]) -> None:
    device = torch.device("cuda", rank)
    rows_list = [int(r) for r in opts.rows.split(",")]
    for impl in ("group", "one_shot"):
        group = RankGroup.join(
            rank=rank, world_size=2, device=device, rendezvous=rendezvous.with_suffix(f".{impl}"),
            timeout_s=120, all_reduce=impl,
        )  # fmt: skip
        for rows in rows_list:
            for dtype in (torch.float32, torch.bfloat16):
                us = _time(group, rows, opts, dtype)
                if rank == 0:
                    results[f"{impl} {rows}x{opts.hidden} {str(dtype)[6:]}"] = us
        group.leave()


def _time(group: RankGroup, rows: int, opts: argparse.Namespace, dtype: torch.dtype) -> float:
    gen = torch.Generator(device=group.device).manual_seed(group.rank)
    part = torch.randn(rows, opts.hidden, generator=gen, device=group.device).to(dtype)
    peers = [torch.randn(rows, opts.hidden, generator=torch.Generator(device=group.device).manual_seed(r),
                         device=group.device).to(dtype) for r in range(group.world_size)]  # fmt: skip
    exact = sum(p.float() for p in peers)
    got = group.all_reduce_sum(part.clone())
    torch.testing.assert_close(got.float(), exact, rtol=1e-2, atol=1e-2)
    stream = torch.cuda.Stream(group.device)
    stream.wait_stream(torch.cuda.current_stream(group.device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            group.all_reduce_sum(part.clone())
    torch.cuda.current_stream(group.device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x = part
        for _ in range(SUMS_PER_GRAPH):
            x = group.all_reduce_sum(x) * 0.5
    graph.replay()
    torch.cuda.synchronize(group.device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(opts.replays):
        graph.replay()
    end.record()
    end.synchronize()
    return 1000 * start.elapsed_time(end) / (opts.replays * SUMS_PER_GRAPH)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "all_reduce_kernel.json"
    )
    opts = parser.parse_args()
    if torch.cuda.device_count() < 2:
        raise SystemExit("all_reduce_kernel.py needs two CUDA devices")
    rendezvous = Path(tempfile.mkdtemp()) / "rendezvous"
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank, args=(opts, rendezvous, results), nprocs=2, start_method="spawn")
        table: dict[str, float] = dict(results)
    impls: tuple[AllReduceImpl, ...] = ("group", "one_shot")
    print(f"| case | {' | '.join(f'{i} µs' for i in impls)} |")
    print("|---|---|---|")
    for case in sorted({k.split(" ", 1)[1] for k in table}):
        cells = [f"{table[impl + ' ' + case]:.2f}" for impl in impls]
        print(f"| {case} | {' | '.join(cells)} |")
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "all_reduce_kernel", "torch": torch.__version__, "sums_per_graph": SUMS_PER_GRAPH,
              "us_per_sum": table}  # fmt: skip
    opts.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
