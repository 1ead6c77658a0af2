"""Run in a subprocess by test_long_context.py: prefill a long context in chunks and report peak RSS growth.

Prints one JSON line: tokens, seconds, peak RSS growth, bytes of compressed KV actually written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, tiny


def narrow_args() -> ModelArgs:
    """All three layer kinds at the real window (128) and ratios (4, 128), every width cut down."""
    return tiny(
        (LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA),
        hidden_size=32,
        moe_intermediate_size=16,
        n_routed_experts=4,
        num_experts_per_tok=1,
        num_attention_heads=2,
        q_lora_rank=16,
        o_lora_rank=8,
        hc_mult=2,
        hc_sinkhorn_iters=3,
        index_n_heads=2,
    )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main(tokens: int, chunk: int) -> None:
    torch.set_num_threads(2)
    args = narrow_args()
    model = DeepseekV4Model.random(args, seed=0).eval()
    blocks = -(-(tokens + 1) // 128) + 2
    config = EngineConfig(
        num_blocks=blocks,
        prefill_chunk=chunk,
        max_tokens_per_step=chunk,
        num_state_slots=2,
        max_running=1,
        prefix_caching=False,
    )
    engine = Engine(model, config)
    gen = torch.Generator().manual_seed(0)
    engine.generate(
        [GenerationRequest(torch.randint(2, 256, (300,), generator=gen).tolist(), max_new_tokens=2)]
    )
    prompt = torch.randint(2, 256, (tokens,), generator=gen).tolist()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    base = _status_kib("VmRSS")
    start = time.perf_counter()
    out = engine.generate([GenerationRequest(prompt, max_new_tokens=1)])[0]
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    used_blocks = -(-tokens // 128)
    kv_bytes = engine.caches.kv.nbytes * used_blocks // blocks
    print(
        json.dumps(
            {
                "tokens": tokens,
                "prefilled": out.prefilled_tokens,
                "steps": engine.steps,
                "seconds": seconds,
                "peak_rss_growth_bytes": (peak - base) * 1024,
                "compressed_kv_bytes": kv_bytes,
                "state_slot_bytes": engine.caches.states.slot_nbytes,
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
