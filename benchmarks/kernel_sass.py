"""Instructions per weight in the decode GEMVs' inner loops, from their sm_90 machine code, on any machine.

The decode GEMVs (MXFP4 experts, FP8 projections) read each weight once, so their speed is set by the
bytes in flight and by the instructions spent on each weight: decoding its bits to float32, the
multiply-add, the loads of the activations. This compiles each kernel for Hopper (sm_90) with Triton's
own compiler and its bundled `ptxas`/`nvdisasm` (no GPU or driver needed), finds the kernel's largest
loop (the K walk), counts its SASS instructions and divides by the weights one thread handles per
iteration. Arguments are specialised as Triton's launcher specialises them at V4-Flash's shapes (pointers
and strides divisible by 16). The top opcodes show where the instructions go (`HADD2.F32`: float16 to
float32; `LDS`/`BAR`: activations through shared memory; `SHFL`: cross-thread sums).

Prints a table and writes `benchmarks/results/kernel_sass.json` (or `--json PATH`).

    python benchmarks/kernel_sass.py
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from deepscout.model_runtime.v4.kernels import fp8_linear_gemv_triton as fp8_gemv
from deepscout.model_runtime.v4.kernels import grouped_moe_mxfp4_gemv_triton as mxfp4_gemv

HOPPER = GPUTarget("cuda", 90, 32)
_INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)")
_BRANCH = re.compile(r"BRA `\((\.L_x_\d+)\)")


@dataclass(frozen=True)
class Case:
    """One kernel at one shape: its signature (name → Triton type, `constexpr` for the constants), the
    constants, the names specialised as divisible by 16, and the weights a thread handles per iteration."""

    name: str
    kernel: Any
    signature: dict[str, str]
    constants: dict[str, Any]
    divisible: tuple[str, ...]
    weights_per_thread: float
    num_warps: int = 4


def _divisible(signature: dict[str, str]) -> tuple[str, ...]:
    """The pointers and strides of a signature: what the launcher finds divisible by 16 at real shapes."""
    return tuple(n for n, t in signature.items() if t.startswith("*") or n.startswith("stride"))


def _mxfp4_cases() -> list[Case]:
    tiles = mxfp4_gemv.GemvTiles()
    common = {"first_expert": "i32", "n_experts": "i32"}
    gate_up = {
        "X": "*bf16", "W1": "*i32", "W3": "*i32", "S1": "*u8", "S3": "*u8", "H": "*bf16", "IDS": "*i64",
        **common, "top_k": "i32", "limit": "fp32", "stride_x": "i32", "stride_we": "i64", "stride_wn": "i32",
        "stride_se": "i64", "stride_sn": "i32", "stride_h": "i32", "HIDDEN": "constexpr",
        "INTER": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr", "CLAMP": "constexpr",
        "PREFETCH": "constexpr",
    }  # fmt: skip
    down = {
        "H": "*bf16", "W2": "*i32", "S2": "*u8", "OUT": "*bf16", "IDS": "*i64", "ROUTE": "*fp32", **common,
        "stride_h": "i32", "stride_we": "i64", "stride_wn": "i32", "stride_se": "i64", "stride_sn": "i32",
        "stride_out": "i32", "HIDDEN": "constexpr", "INTER": "constexpr", "BLOCK_N": "constexpr",
        "BLOCK_K": "constexpr", "PREFETCH": "constexpr",
    }  # fmt: skip
    shape = {"HIDDEN": 4096, "INTER": 2048}
    threads = 32 * tiles.num_warps
    return [
        Case(
            "mxfp4 gate-up (hidden 4096 -> 2x2048)",
            mxfp4_gemv._gemv_gate_up_kernel,
            gate_up,
            {
                **shape,
                "BLOCK_N": tiles.gate_up_n,
                "BLOCK_K": tiles.block_k,
                "CLAMP": True,
                "PREFETCH": tiles.prefetch,
            },
            _divisible(gate_up),
            2 * tiles.gate_up_n * tiles.block_k / threads,
            tiles.num_warps,
        ),
        Case(
            "mxfp4 down (inter 2048 -> 4096)",
            mxfp4_gemv._gemv_down_kernel,
            down,
            {**shape, "BLOCK_N": tiles.down_n, "BLOCK_K": tiles.block_k, "PREFETCH": tiles.prefetch},
            _divisible(down),
            tiles.down_n * tiles.block_k / threads,
            tiles.num_warps,
        ),
    ]


def _fp8_cases(n_sms: int) -> list[Case]:
    signature = {
        "X": "*bf16", "W": "*fp8e4nv", "S": "*u8", "Y": "*bf16", "N": "i32", "stride_xm": "i32",
        "stride_xg": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_ym": "i32", "stride_yg": "i32",
        "ROWS": "constexpr", "ROWS_POW2": "constexpr", "K": "constexpr", "BLOCK_N": "constexpr",
        "BLOCK_K": "constexpr", "SCALE_BLOCK": "constexpr", "E8M0": "constexpr", "EVEN_K": "constexpr",
    }  # fmt: skip
    cases = []
    for label, n, k in (("attn.wq_b", 32768, 1024), ("attn.wo_b", 4096, 8192), ("shared.w1+w3", 4096, 4096)):
        tiles = fp8_gemv.choose_gemv_tiles(n, k, groups=1, n_sms=n_sms)
        constants = {
            "ROWS": 1, "ROWS_POW2": 1, "K": k, "BLOCK_N": tiles.block_n, "BLOCK_K": tiles.block_k,
            "SCALE_BLOCK": 128, "E8M0": True, "EVEN_K": True,
        }  # fmt: skip
        cases.append(
            Case(
                f"fp8 {label} ({k} -> {n}, one row)",
                fp8_gemv._fp8_gemv_kernel,
                signature,
                constants,
                (*_divisible(signature), "N"),
                tiles.block_n * tiles.block_k / (32 * tiles.num_warps),
                tiles.num_warps,
            )
        )
    return cases


def loop_instructions(sass: str) -> list[str]:
    """The opcodes of the largest loop (the span from a label to the furthest branch back to it)."""
    lines = sass.splitlines()
    labels = {line.strip().rstrip(":"): i for i, line in enumerate(lines) if line.startswith(".L_x")}
    best = (0, 0)
    for i, line in enumerate(lines):
        match = _BRANCH.search(line)
        if match and labels.get(match.group(1), i) < i and i - labels[match.group(1)] > best[1] - best[0]:
            best = (labels[match.group(1)], i + 1)
    return [m.group(1) for line in lines[best[0] : best[1]] if (m := _INSTRUCTION.match(line))]


def measure(case: Case, nvdisasm: Path) -> dict[str, Any]:
    """Compile `case` for sm_90 and count its loop's instructions."""
    names = list(case.signature)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in case.divisible}
    source = ASTSource(fn=case.kernel, signature=case.signature, constexprs=case.constants, attrs=attrs)
    compiled = triton.compile(source, target=HOPPER, options={"num_warps": case.num_warps, "num_stages": 1})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([str(nvdisasm), "-c", cubin.name], capture_output=True, text=True, check=True)
    ops = loop_instructions(sass.stdout)
    top = collections.Counter(op.split(".")[0] for op in ops).most_common(6)
    return {
        "kernel": case.name,
        "loop_instructions": len(ops),
        "weights_per_thread": case.weights_per_thread,
        "per_weight": round(len(ops) / case.weights_per_thread, 2),
        "top_opcodes": {op: round(n / case.weights_per_thread, 2) for op, n in top},
        "constants": case.constants,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sms", type=int, default=132, help="multiprocessors the FP8 tiles are chosen for")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "kernel_sass.json")
    opts = parser.parse_args()
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    rows = [measure(case, nvdisasm) for case in _mxfp4_cases() + _fp8_cases(opts.sms)]
    header = f"{'kernel':42s} {'loop instr':>10s} {'weights/thread':>14s} {'per weight':>10s}"
    print(f"{header}  top opcodes per weight")
    for row in rows:
        top = ", ".join(f"{op} {n}" for op, n in row["top_opcodes"].items())
        print(
            f"{row['kernel']:42s} {row['loop_instructions']:10d} {row['weights_per_thread']:14.0f} "
            f"{row['per_weight']:10.2f}  {top}"
        )
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "kernel_sass", "target": "sm_90", "triton": triton.__version__, "results": rows}
    opts.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
