"""Loading streams: allocating the bfloat16 model costs the model and nothing more, and filling it (with the
model already resident, so no transient can hide behind pages not yet touched) adds at most about one
dequantised tensor at any moment; keeping every shard mapped (the negative control) adds the whole
checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.weights.synthetic import flash_shaped_small, write_checkpoint

MIB = 1 << 20
# allocator and interpreter noise allowed beyond the model and two copies of the largest dequantised tensor
SLACK = 8 * MIB

_MEASURE = r"""
import json, re, sys
import torch
from deepscout.model_runtime.v4.model_config import ModelArgs
from deepscout.model_runtime.v4.weights.loader import allocate_model, load_weights
from deepscout.model_runtime.v4.weights.checkpoint import Checkpoint

def status(key):
    text = open("/proc/self/status").read()
    return int(re.search(key + r":\s+(\d+) kB", text).group(1)) * 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM (the peak RSS) := the current RSS

torch.set_num_threads(1)
directory, release = sys.argv[1], int(sys.argv[2])
args = ModelArgs.from_json(directory)
allocate_model(args.with_(num_hidden_layers=1, layer_types=args.layer_types[:1], mlp_layer_types=("moe",)))
checkpoint = Checkpoint(directory, release_after_bytes=release)

# phase 1: allocating the bfloat16 model (and making it resident) costs the model and no more
reset_peak()
before_alloc = status("VmRSS")
model = allocate_model(args, dtype=torch.bfloat16)
tensors = list(model.state_dict().values())
with torch.no_grad():
    for t in tensors:
        t.zero_()
alloc_peak = status("VmHWM")

# phase 2: with the model resident, loading adds only transient buffers at any moment
reset_peak()
before_load = status("VmRSS")
report = load_weights(model, checkpoint)
print(json.dumps({
    "alloc_overhead": alloc_peak - before_alloc - sum(t.numel() * t.element_size() for t in tensors),
    "load_overhead": status("VmHWM") - before_load,
    "model_bytes": sum(t.numel() * t.element_size() for t in tensors),
    "largest_tensor_bytes": max(t.numel() * 4 for t in tensors),
    "stored_bytes": report.stored_bytes,
}))
"""


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~34 MB stored (FP8 experts), ~60 MB as a bfloat16 model; the largest tensor is 2 MB in float32."""
    directory = tmp_path_factory.mktemp("v4_memory")
    args = flash_shaped_small(
        hidden_size=512, vocab_size=1024, n_routed_experts=16, moe_intermediate_size=256
    )
    # default initialisation is enough here (values do not matter) and much faster than `random`
    write_checkpoint(DeepseekV4Model(args), directory, expert_dtype="fp8", max_shard_bytes=16 * MIB)
    return directory


def _measure(directory: Path, release_after_bytes: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(directory), str(release_after_bytes)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _can_reset_peak_rss(), reason="needs /proc/self/clear_refs to reset the peak RSS")
def test_peak_rss_while_loading_stays_near_one_tensor_beyond_the_model(big_checkpoint: Path) -> None:
    streamed = _measure(big_checkpoint, release_after_bytes=0)
    bound = 2 * streamed["largest_tensor_bytes"] + SLACK
    assert streamed["stored_bytes"] > 24 * MIB and streamed["model_bytes"] > 50 * MIB
    assert streamed["alloc_overhead"] <= SLACK, streamed  # no float32 detour, no second copy
    overhead = streamed["load_overhead"]
    assert overhead <= bound, f"load used {overhead / MIB:.1f} MiB beyond the model (bound {bound / MIB:.1f})"

    # negative control: keeping every shard mapped leaves the whole checkpoint resident on top
    mapped = _measure(big_checkpoint, release_after_bytes=1 << 40)
    assert mapped["load_overhead"] > bound and mapped["load_overhead"] > 0.8 * mapped["stored_bytes"]
