"""Speed of the mHC stream passes (`kernels/hc_streams.py`) against their copy-rate floor and the PyTorch
reference, at V4 widths (hc 4, hidden 4096, 24 mixing logits, float32 streams, bfloat16 block output).

Per token count in `--tokens` (decode steps and a prefill chunk): `premix` (the RMS-normed projection to
the mixing logits, left in slices), `collapse` (the pre weights and the pre-weighted sum to the sub-block
input, RMS-normed, in bfloat16), `merge` (the new streams), `merge+premix` (the new streams and the next
sub-block's logits), `merge+collapse` (those and the next sub-block's input: one launch on a GPU, where
`merge+premix` and `collapse` are two), and `sub-block` (all the mHC work around one attention or MoE
call: `model/mhc.py`'s `hc_split` with the Sinkhorn mapping, then `hc_merge_into`, which collapses for
the next one). Times are CUDA-graph replays (`device_rates.timed(graphs=True)`), as the decode path runs;
the floor is each pass's bytes read + written over a device-to-device copy's rate.

Prints a table and writes `benchmarks/results/hc_streams_kernel.json` (or `--json PATH`).

    python benchmarks/hc_streams_kernel.py                 # CUDA
    python benchmarks/hc_streams_kernel.py --device cpu    # small shapes under Triton's interpreter
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from device_rates import ceilings, timed, write_report

from deepscout.model_runtime.v4.kernels.hc_streams import (
    MERGE_COLLAPSE_MAX_ROWS,
    hc_collapse,
    hc_merge,
    hc_merge_collapse,
    hc_merge_premix,
    hc_premix,
)
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.mix_logits import MixLogits
from deepscout.model_runtime.v4.model import mhc
from deepscout.model_runtime.v4.model.primitives import RMSNorm

HC, MIX, EPS, SINKHORN_ITERS = 4, 24, 1e-6, 20


def make_case(device: torch.device, tokens: int, dim: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(tokens)
    return {
        "streams": torch.randn(tokens, HC, dim, generator=gen, device=device),
        "fn": torch.randn(MIX, HC * dim, generator=gen, device=device) * (HC * dim) ** -0.5,
        "scale": torch.rand(3, generator=gen, device=device) + 0.5,
        "base": torch.randn(MIX, generator=gen, device=device),
        "post": 2 * torch.rand(tokens, HC, generator=gen, device=device),
        "comb": torch.softmax(torch.randn(tokens, HC, HC, generator=gen, device=device), dim=-1),
        "block_out": torch.randn(tokens, dim, generator=gen, device=device).to(torch.bfloat16),
    }


def passes(case: dict[str, torch.Tensor], kernels: KernelImpl) -> dict[str, Callable[[], object]]:
    """Each pass of the benchmark as a call on `case` with `kernels` (the collapse reads the logits as
    that path's premix leaves them)."""
    s = case["streams"]
    settings = mhc.HcSettings(SINKHORN_ITERS, EPS, EPS)
    norm = RMSNorm(s.shape[2], EPS).to(s.device)
    fn, scale, base = case["fn"], case["scale"], case["base"]
    inp = mhc.HcInput(fn, scale, base, norm)
    logits = hc_premix(s, fn, impl=kernels)
    arrivals = torch.zeros(MERGE_COLLAPSE_MAX_ROWS, dtype=torch.int64, device=s.device)
    norms = {"mix_norm_eps": EPS, "hc_eps": EPS, "eps": EPS, "out_dtype": torch.bfloat16, "impl": kernels}

    def sub_block() -> mhc.HcState:
        x, mapping = mhc.hc_split(mhc.HcState(s), inp, settings, torch.bfloat16, kernels)
        return mhc.hc_merge_into(x, s, mapping, inp, settings, torch.bfloat16, kernels, arrivals)

    merge_args = (case["block_out"], s, case["post"], case["comb"], fn)
    return {
        "premix": lambda: hc_premix(s, fn, impl=kernels),
        "collapse": lambda: hc_collapse(s, logits, scale, base, norm.weight, **norms),
        "merge": lambda: hc_merge(*merge_args[:4], impl=kernels),
        "merge+premix": lambda: hc_merge_premix(*merge_args, impl=kernels),
        "merge+collapse": lambda: hc_merge_collapse(
            *merge_args, scale, base, norm.weight, arrivals=arrivals, **norms
        ),
        "sub-block": sub_block,
    }


def _values(result: object) -> torch.Tensor:
    """A pass's result as float32 values to compare (the premix's finished logits; after a merge, the new
    streams and the logits side by side)."""
    if isinstance(result, MixLogits):
        return result.logits(EPS)
    if isinstance(result, mhc.HcState):
        return _values((result.streams, result.mix, result.collapsed))
    if isinstance(result, tuple):
        return torch.cat([_values(part).flatten() for part in result])
    assert isinstance(result, torch.Tensor)
    return result.float()


def pass_bytes(tokens: int, dim: int) -> dict[str, int]:
    """Bytes each pass must read + write at least (float32 streams, bfloat16 block output)."""
    streams, row = tokens * HC * dim * 4, tokens * dim
    premix = streams + MIX * HC * dim * 4 + tokens * MIX * 4
    collapse = streams + row * 2
    merge = row * 2 + 2 * streams
    return {
        "premix": premix,
        "collapse": collapse,
        "merge": merge,
        "merge+premix": merge + premix - streams,
        "merge+collapse": merge + premix - streams + row * 2,
        "sub-block": premix + collapse + merge + premix - streams + row * 2,
    }


def run_case(device: torch.device, tokens: int, dim: int, copy_rate: float) -> list[dict[str, Any]]:
    case = make_case(device, tokens, dim)
    reference, fused = passes(case, "reference"), passes(case, "triton")
    graphs = device.type == "cuda"
    rows = []
    for name, needed in pass_bytes(tokens, dim).items():
        triton_s = timed(fused[name], device, graphs=graphs)
        ref_s = timed(reference[name], device, graphs=graphs)
        want = _values(reference[name]())
        floor = needed / copy_rate if copy_rate else 0.0
        rows.append(
            {
                "pass": name,
                "tokens": tokens,
                "triton_ms": round(triton_s * 1e3, 4),
                "reference_ms": round(ref_s * 1e3, 4),
                "speedup": round(ref_s / triton_s, 2),
                "floor_ms": round(floor * 1e3, 4),
                "x_floor": round(triton_s / floor, 2) if floor else None,
                "gb_per_s": round(needed / triton_s / 1e9, 1),
                "max_rel_diff_vs_reference": float(
                    (_values(fused[name]()) - want).abs().max() / want.abs().max()
                ),
            }
        )
    return rows


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", default=None, help="token counts, e.g. 1,8,8192")
    default_json = Path(__file__).parent / "results" / "hc_streams_kernel.json"
    parser.add_argument("--json", type=Path, default=default_json)
    opts = parser.parse_args()
    device = torch.device(opts.device)
    if device.type == "cpu":  # Triton reads this when the kernels are first defined
        os.environ.setdefault("TRITON_INTERPRET", "1")
    small = device.type == "cpu"
    dim = 64 if small else 4096
    tokens = [int(n) for n in (opts.tokens or ("1,8,70" if small else "1,8,8192")).split(",")]
    torch.manual_seed(0)
    rates = ceilings(device)
    print(f"copy {rates.copy_bytes_per_s / 1e12:.2f} TB/s")
    rows = []
    for n in tokens:
        for row in run_case(device, n, dim, rates.copy_bytes_per_s):
            rows.append(row)
            print(row, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(
        f"{'pass':>10} {'N':>5} {'triton ms':>10} {'ref ms':>9} {'speedup':>8} {'floor ms':>9} "
        f"{'x floor':>8} {'GB/s':>8} {'rel diff':>9}"
    )
    for r in rows:
        print(
            f"{r['pass']:>10} {r['tokens']:>5} {r['triton_ms']:>10} {r['reference_ms']:>9} {r['speedup']:>8} "
            f"{r['floor_ms']:>9} {r['x_floor'] or '-':>8} {r['gb_per_s']:>8} "
            f"{r['max_rel_diff_vs_reference']:>9.2e}"
        )
    write_report(
        opts.json,
        benchmark="hc_streams_kernel",
        device=device,
        rates=rates,
        results=rows,
        shape={"hc": HC, "hidden": dim, "mix": MIX, "sinkhorn_iters": SINKHORN_ITERS},
    )


if __name__ == "__main__":
    main()
