"""Load speed and peak memory of the DeepSeek-V4 checkpoint loader on a synthetic official-format checkpoint.

Writes a synthetic checkpoint (``--width flash``: V4-Flash's real tensor shapes — hidden 4096, 64 heads of
512, vocab 129280, FP8 128×128 blocks, MXFP4 experts of 2048×4096 — with fewer layers and experts; ``small``:
the reduced width the tests use), then loads it in a fresh process per dtype and reports load time,
throughput and the peak RSS beyond the model itself (model allocated and made resident first, then VmHWM
reset, then the weights loaded: the loader's worst transient overhead at any moment). Prints a table and
writes ``benchmarks/results/v4_checkpoint_load.json`` (or ``--json PATH``).

    python benchmarks/v4_checkpoint_load.py --width small
    python benchmarks/v4_checkpoint_load.py --width flash --layers sliding,csa --experts 32 --dir /tmp/v4
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_LOAD = r"""
import json, re, sys, time
import torch
from deepscout.model_runtime.v4.model_config import ModelArgs
from deepscout.model_runtime.v4.weights.loader import allocate_model, load_weights
from deepscout.model_runtime.v4.weights.checkpoint import Checkpoint

def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

directory, dtype = sys.argv[1], getattr(torch, sys.argv[2])
args = ModelArgs.from_json(directory)
allocate_model(args.with_(num_hidden_layers=1, layer_types=args.layer_types[:1], mlp_layer_types=("moe",)))
start = time.perf_counter()
checkpoint = Checkpoint(directory)
model = allocate_model(args, dtype=dtype)
tensors = list(model.state_dict().values())
model_bytes = sum(t.numel() * t.element_size() for t in tensors)
with torch.no_grad():
    for t in tensors:
        t.zero_()  # resident first, so the peak below is the loader's transient overhead at any moment
prepare = time.perf_counter() - start
reset_peak()
before = status("VmRSS")
report = load_weights(model, checkpoint)
print(json.dumps({
    "dtype": sys.argv[2],
    "seconds": report.seconds,
    "prepare_seconds": prepare,
    "stored_bytes": report.stored_bytes,
    "model_bytes": model_bytes,
    "largest_tensor_bytes": max(t.numel() * t.element_size() for t in tensors),
    "peak_beyond_model": status("VmHWM") - before,
    "tensors": report.tensors,
    "threads": torch.get_num_threads(),
}))
"""


def _args(width: str, layers: list[str], experts: int) -> Any:
    from deepscout.model_runtime.v4.model_config import LayerKind, YarnScaling
    from deepscout.model_runtime.v4.weights.synthetic import flash_shaped_small

    kinds = tuple(
        {"sliding": LayerKind.SLIDING, "csa": LayerKind.CSA, "hca": LayerKind.HCA}[k] for k in layers
    )
    if width == "small":
        return flash_shaped_small(kinds, n_routed_experts=experts)
    from deepscout.model_runtime.v4.model_config import ModelArgs

    n = len(kinds)
    return ModelArgs(
        num_hidden_layers=n,
        layer_types=kinds,
        mlp_layer_types=("hash_moe",) + ("moe",) * (n - 1),
        n_routed_experts=experts,
        rope_scaling=YarnScaling(factor=16.0, original_max_position_embeddings=65536),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", choices=["small", "flash"], default="small")
    parser.add_argument("--layers", default="sliding,csa,hca")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/v4_checkpoint_load"))
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/v4_checkpoint_load.json"))
    options = parser.parse_args()

    import torch

    from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
    from deepscout.model_runtime.v4.weights.synthetic import write_checkpoint

    args = _args(options.width, options.layers.split(","), options.experts)
    start = time.perf_counter()
    model = DeepseekV4Model(args)  # default init: values do not matter for load speed or memory
    write_checkpoint(model, options.dir, max_shard_bytes=4 << 30, snap=False)
    write_seconds = time.perf_counter() - start
    del model
    rows = []
    for dtype in options.dtypes.split(","):
        done = subprocess.run(
            [sys.executable, "-c", _LOAD, str(options.dir), dtype], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cpu = platform.processor() or platform.machine()
    cores = re.findall(r"^processor", Path("/proc/cpuinfo").read_text(), flags=re.M)
    result = {
        "width": options.width,
        "layers": options.layers,
        "experts": options.experts,
        "write_seconds": write_seconds,
        "machine": f"{cpu}, {len(cores)} logical CPUs, torch {torch.__version__}",
        "loads": rows,
    }
    gib, mib = float(1 << 30), float(1 << 20)
    print(f"{options.width} width, layers {options.layers}, {options.experts} experts; {result['machine']}")
    print(f"{'dtype':>9} {'stored GiB':>10} {'model GiB':>9} {'load s':>7} {'GiB/s read':>10} "
          f"{'largest MiB':>11} {'peak beyond model MiB':>21}")  # fmt: skip
    for row in rows:
        print(
            f"{row['dtype']:>9} {row['stored_bytes'] / gib:>10.2f} {row['model_bytes'] / gib:>9.2f} "
            f"{row['seconds']:>7.2f} {row['stored_bytes'] / gib / row['seconds']:>10.2f} "
            f"{row['largest_tensor_bytes'] / mib:>11.1f} {row['peak_beyond_model'] / mib:>21.1f}"
        )
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
