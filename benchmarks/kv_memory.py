"""KV-cache bytes per token of DeepSeek-V4's heterogeneous cache, measured from real allocations.

For V4-Flash (43 layers: 2 sliding, 21 CSA, 20 HCA) and V4-Pro (61 layers: 30 CSA, 31 HCA) shapes the
engine's block pool (`KVBlockPool`) is allocated for `--blocks` blocks of 128 tokens in each storage format
(float32, bfloat16, the paper's layout with FP4 and with FP8 indexer keys); bytes/token = allocated bytes /
(blocks × 128), split by layer type. 1M-token figures are that measurement scaled (the pool is not allocated
at 1M tokens). The fixed per-sequence state (window ring, compressor tails; one `StatePool` slot) is
reported beside it. Baselines are allocated the same way, per token:
* DeepSeek-V3.2: 61 layers × (576-dim MLA latent in FlashMLA's FP8 layout — 512 FP8 + 4 float32 scales
  + 64 BF16 rope = 656 B — plus a 128-dim FP8 indexer key with a float32 scale = 132 B);
* GQA-8: 8 KV heads × 128 dims × (K, V) in BF16 per layer, at the same depth as the V4 model.

    python benchmarks/kv_memory.py [--blocks 64]

Prints a table and writes benchmarks/results/kv_memory.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from deepscout.model_runtime.v4.engine.engine_config import IndexerFormat, KvDtype
from deepscout.model_runtime.v4.engine.kv_pool import KVBlockPool, state_dtype
from deepscout.model_runtime.v4.engine.state_cache import StatePool
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, flash_shaped

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "kv_memory.json"
FLASH_TARGET = 3450  # B/token, the paper's V4-Flash figure
FORMATS: list[tuple[str, KvDtype, IndexerFormat]] = [
    ("float32", "float32", "fp4"),
    ("bfloat16", "bfloat16", "fp4"),
    ("paper (FP8+BF16 rope, FP4 idx)", "paper", "fp4"),
    ("paper (FP8+BF16 rope, FP8 idx)", "paper", "fp8"),
]


def pro_shaped() -> ModelArgs:
    """V4-Pro attention shapes: 61 layers, 2 HCA then CSA/HCA alternating (30 CSA, 31 HCA)."""
    kinds = (LayerKind.HCA,) * 2 + tuple(LayerKind.CSA if i % 2 == 0 else LayerKind.HCA for i in range(59))
    return flash_shaped().with_(num_hidden_layers=61, layer_types=kinds, mlp_layer_types=("moe",) * 61)


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


def measure_v4(args: ModelArgs, blocks: int, kv_dtype: KvDtype, indexer: IndexerFormat) -> dict[str, Any]:
    pool = KVBlockPool(args, blocks, kv_dtype, indexer)
    tokens = blocks * pool.block_tokens
    by_kind = pool.nbytes_by_kind()
    csa = by_kind.get("csa.main", 0) + by_kind.get("csa.indexer", 0)
    hca = by_kind.get("hca.main", 0)
    state = StatePool(args, 1, state_dtype(kv_dtype))
    result = {
        "csa_main_B_per_token": by_kind.get("csa.main", 0) / tokens,
        "csa_indexer_B_per_token": by_kind.get("csa.indexer", 0) / tokens,
        "hca_B_per_token": hca / tokens,
        "total_B_per_token": (csa + hca) / tokens,
        "state_bytes_per_sequence": state.nbytes,
        "allocated_bytes": pool.nbytes,
        "allocated_tokens": tokens,
    }
    del pool, state
    return result


def measure_v32(tokens: int) -> float:
    """DeepSeek-V3.2 per token over 61 layers (FlashMLA FP8 latent layout + FP8 indexer key)."""
    layers = 61
    parts = [
        torch.empty(layers, tokens, 512, dtype=torch.float8_e4m3fn),  # latent nope, FP8
        torch.empty(layers, tokens, 4, dtype=torch.float32),  # its per-128 scales
        torch.empty(layers, tokens, 64, dtype=torch.bfloat16),  # latent rope, BF16
        torch.empty(layers, tokens, 128, dtype=torch.float8_e4m3fn),  # indexer key, FP8
        torch.empty(layers, tokens, 1, dtype=torch.float32),  # its scale
    ]
    return storage_bytes(parts) / tokens


def measure_gqa8(tokens: int, layers: int) -> float:
    kv = torch.empty(layers, 2, tokens, 8, 128, dtype=torch.bfloat16)
    return storage_bytes([kv]) / tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=64, help="blocks of 128 tokens to allocate per format")
    opts = parser.parse_args()
    rows: list[dict[str, Any]] = []
    models = {"V4-Flash": flash_shaped(), "V4-Pro": pro_shaped()}
    for name, args in models.items():
        counts = {k.value: args.layer_types.count(k) for k in LayerKind}
        for label, kv_dtype, indexer in FORMATS:
            m = measure_v4(args, opts.blocks, kv_dtype, indexer)
            rows.append({"model": name, "format": label, "layers": counts, **m})
    tokens = opts.blocks * 128
    v32 = measure_v32(tokens)
    gqa = {name: measure_gqa8(tokens, args.num_hidden_layers) for name, args in models.items()}

    header = (
        f"{'model':9} {'format':32} {'CSA main':>9} {'CSA idx':>8} {'HCA':>6} {'total B/tok':>11} "
        f"{'1M tok GiB':>10} {'vs V3.2':>8} {'vs GQA-8':>8} {'state/seq MiB':>13}"
    )
    print(f"measured from allocations of {opts.blocks} blocks ({tokens} tokens) per format; 1M = scaled")
    print(header)
    print("-" * len(header))
    for r in rows:
        total = r["total_B_per_token"]
        print(
            f"{r['model']:9} {r['format']:32} {r['csa_main_B_per_token']:9.1f} "
            f"{r['csa_indexer_B_per_token']:8.1f} {r['hca_B_per_token']:6.1f} {total:11.1f} "
            f"{total * 2**20 / 2**30:10.2f} {total / v32:8.3f} {total / gqa[r['model']]:8.4f} "
            f"{r['state_bytes_per_sequence'] / 2**20:13.2f}"
        )
    print(
        f"{'V3.2':9} {'FP8 latent (656 B) + FP8 idx (132 B)':32} {'':9} {'':8} {'':6} {v32:11.1f} "
        f"{v32 * 2**20 / 2**30:10.2f}"
    )
    for name, value in gqa.items():
        label = f"GQA-8 BF16 x {models[name].num_hidden_layers} layers"
        print(f"{'baseline':9} {label:32} {'':9} {'':8} {'':6} {value:11.1f} {value * 2**20 / 2**30:10.2f}")
    flash_paper = next(
        r for r in rows if r["model"] == "V4-Flash" and r["format"].startswith("paper (FP8+BF16 rope, FP4")
    )
    deviation = flash_paper["total_B_per_token"] / FLASH_TARGET - 1
    ok = abs(deviation) <= 0.10
    print(
        f"\nV4-Flash, paper layout: {flash_paper['total_B_per_token']:.1f} B/token vs the paper's "
        f"{FLASH_TARGET} ({deviation:+.1%}; within 10%: {'yes' if ok else 'NO'})"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "torch": torch.__version__,
                "method": f"allocated {opts.blocks} blocks x 128 tokens per format; 1M-token figures scaled",
                "v4": rows,
                "v3_2_B_per_token": v32,
                "gqa8_B_per_token": gqa,
                "flash_paper_fp4_vs_3450": deviation,
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
