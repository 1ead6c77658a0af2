"""Run in a subprocess by test_grouped_moe_mxfp4.py (outside Triton's interpreter, which the test suite
turns on without a GPU and under which Gluon kernels do not compile): build the MXFP4 decode path's Gluon
kernels for sm_90 with the default tiles at `hidden inter` and print one JSON line per kernel: its shared
memory bytes and whether its PTX has the float16-pair conversion and multiply-add the design relies on."""

from __future__ import annotations

import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource

from deepscout.model_runtime.v4.kernels import grouped_moe_mxfp4_gemv_gluon as gluon_module


def main(hidden: int, inter: int) -> None:
    tiles = gluon_module.GluonGemvTiles()
    common = {
        "IDS": "*i64",
        "first_expert": "i32",
        "n_experts": "i32",
        "stride_we": "i64",
        "stride_wn": "i32",
    }
    common |= {"stride_se": "i64", "stride_sn": "i32", "HIDDEN": "constexpr", "INTER": "constexpr"}
    common |= {"ROWS": "constexpr", "GROUPS": "constexpr", "PDL": "constexpr", "CLAMP": "constexpr"}
    common |= {
        "X": "*i32",
        "W1": "*i32",
        "W3": "*i32",
        "S1": "*u8",
        "S3": "*u8",
        "top_k": "i32",
        "limit": "fp32",
    }
    common |= {
        "stride_x": "i32",
        "stride_h": "i32",
        "W2": "*i32",
        "S2": "*u8",
        "OUT": "*bf16",
        "ROUTE": "*fp32",
    }
    common |= {"stride_out": "i32"}
    kernels = {
        "gate_up": (
            gluon_module._gate_up_kernel,
            {"H": "*bf16"},
            tiles.gate_up_rows,
            hidden,
            {"CLAMP": True},
        ),
        "down": (gluon_module._down_kernel, {"H": "*i32"}, tiles.down_rows, inter, {}),
    }
    for name, (kernel, own, rows, reduction, extra) in kernels.items():
        signature = {arg: (common | own)[arg] for arg in kernel.arg_names}
        constants = {"HIDDEN": hidden, "INTER": inter, "PDL": True, **extra}
        constants["ROWS"], constants["GROUPS"] = gluon_module._plan(rows, reduction, tiles.num_warps)
        source = GluonASTSource(fn=kernel, signature=signature, constexprs=constants)
        compiled = triton.compile(
            source, target=GPUTarget("cuda", 90, 32), options={"num_warps": tiles.num_warps}
        )
        ptx = compiled.asm["ptx"]
        report = {"kernel": name, "shared": compiled.metadata.shared}
        report["f16_pairs"] = "cvt.rn.f16x2.e4m3x2" in ptx and "fma.rn.f16x2" in ptx
        print(json.dumps(report))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
