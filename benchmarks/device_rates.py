"""Timing and the two ceilings the kernel benchmarks compare against, measured in the same process.

`timed(fn, device)`: median seconds of `fn` after a warm-up — CUDA events over repeats on the GPU (or, with
`graphs=True`, over replays of `fn` captured in a CUDA graph, which leaves Python's launch overhead out, as
the decode path runs), one wall-clock run on the CPU. `ceilings(device)`: the copy rate (bytes read +
written per second, a device-to-device copy of 1 GiB) and the bf16 matmul rate (FLOP/s, 8192³), both on
random data; zeros on the CPU, where the benchmarks only check that they run. `write_report(path, ...)`:
the kernel benchmarks' JSON (the device, torch, the ceilings and the rows), written and named.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Ceilings:
    copy_bytes_per_s: float
    matmul_flop_per_s: float


def timed(fn: Callable[[], object], device: torch.device, *, graphs: bool = False) -> float:
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    import triton.testing

    if graphs:
        return float(triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")) / 1000
    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")) / 1000


def ceilings(device: torch.device) -> Ceilings:
    if device.type != "cuda":
        return Ceilings(0.0, 0.0)
    src = torch.randn(2**30 // 2, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), device)
    a = torch.randn(8192, 8192, device=device).to(torch.bfloat16)
    b = torch.randn(8192, 8192, device=device).to(torch.bfloat16)
    mm_s = timed(lambda: a @ b, device)
    return Ceilings(2 * src.nbytes / copy_s, 2 * 8192**3 / mm_s)


def write_report(
    path: Path, *, benchmark: str, device: torch.device, rates: Ceilings, results: list[Any], **extra: Any
) -> None:
    """Write a kernel benchmark's JSON to `path`: what ran where (`extra`: e.g. the shapes), the ceilings
    measured beside it and its result rows."""
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor()
    report = {
        "benchmark": benchmark,
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        **extra,
        "ceilings": asdict(rates),
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
