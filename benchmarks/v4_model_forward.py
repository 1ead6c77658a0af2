"""Forward speed and memory of our DeepSeek-V4 model (sparse attention over explicit caches).

1. Device check: a tiny mixed config run on `--device` equals the same weights on the CPU (float32, chunked
   prefill + decode), and the sparse and naive attention paths agree there.
2. Long context: a V4-Flash-shaped stack (hidden 4096, 64 heads of 512, indexer 64x128, top-k 512, window
   128, vocab 129280; layer kinds from `--layers`, `--experts` routed experts instead of 256) in bfloat16 with
   a bfloat16 contiguous cache: chunked prefill of each context length in `--contexts`, then `--decode`
   single-token steps. Reports prefill tokens/s, decode ms/token, peak device memory and cache bytes.
   (transformers' reference materialises O(S x T) masks: a 2-layer Flash-shaped stack needs 124 GiB at 16K
   tokens and runs out of memory at 32K on an H200.)

Prints a table and writes `benchmarks/results/v4_model_forward.json` (or `--json PATH`).

    python benchmarks/v4_model_forward.py --device cpu --contexts 2048 --layers sliding,csa,hca --experts 4
    python benchmarks/v4_model_forward.py --device cuda --contexts 16384,65536,131072
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from deepscout.model_runtime.v4.cache.contiguous import ContiguousSequenceCache
from deepscout.model_runtime.v4.kernels.impl import KernelImpl, default_impl
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, YarnScaling, tiny

KINDS = {"sliding": LayerKind.SLIDING, "csa": LayerKind.CSA, "hca": LayerKind.HCA}


def new_cache(args: ModelArgs, dtype: torch.dtype, device: str) -> ContiguousSequenceCache:
    return ContiguousSequenceCache(
        [*args.layer_types, *args.mtp_layer_types],
        head_dim=args.head_dim,
        index_head_dim=args.index_head_dim,
        sliding_window=args.sliding_window,
        dtype=dtype,
        device=device,
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_check(device: str) -> dict[str, float]:
    """Max |diff| / max |CPU logits|: device vs CPU, and naive vs sparse on the device."""
    args = tiny((LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA, LayerKind.CSA), num_hash_layers=1)
    cpu_model = DeepseekV4Model.random(args, seed=0).eval()
    dev_model = DeepseekV4Model(args).to(device).eval()
    dev_model.load_state_dict(cpu_model.state_dict())
    ids = torch.randint(2, args.vocab_size, (1, 420), generator=torch.Generator().manual_seed(0))
    chunks = [300, 100] + [1] * 20

    def run(model: DeepseekV4Model, dev: str, impl: str, kernels: KernelImpl = "reference") -> torch.Tensor:
        model.kernels = kernels
        cache, out, start = new_cache(args, torch.float32, dev), [], 0
        for size in chunks:
            piece = ids[:, start : start + size].to(dev)
            out.append(model(piece, [cache], attn_impl=impl).cpu())  # type: ignore[arg-type]
            start += size
        return torch.cat(out, dim=1)

    with torch.no_grad():
        reference = run(cpu_model, "cpu", "sparse")
        sparse = run(dev_model, device, "sparse")
        naive = run(dev_model, device, "naive")
        fused = run(dev_model, device, "sparse", default_impl(torch.device(device)))
    scale = reference.abs().max().item()
    return {
        "device_vs_cpu": (sparse - reference).abs().max().item() / scale,
        "naive_vs_sparse": (naive - sparse).abs().max().item() / scale,
        "kernels_vs_sparse": (fused - sparse).abs().max().item() / scale,
    }


def flash_stack(layers: list[LayerKind], experts: int) -> ModelArgs:
    return ModelArgs(
        num_hidden_layers=len(layers),
        layer_types=tuple(layers),
        mlp_layer_types=("moe",) * len(layers),
        n_routed_experts=experts,
        num_experts_per_tok=min(6, experts),
        num_nextn_predict_layers=0,
        rope_scaling=YarnScaling(factor=16.0, original_max_position_embeddings=65536),
    )


def long_context(
    args: ModelArgs, device: str, context: int, chunk: int, decode: int, kernels: KernelImpl
) -> dict[str, Any]:
    model = DeepseekV4Model.random(args, seed=0, dtype=torch.bfloat16, device=device, kernels=kernels).eval()
    ids = torch.randint(2, args.vocab_size, (1, context + decode), generator=torch.Generator().manual_seed(1))
    cache = new_cache(args, torch.bfloat16, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        for s in range(0, context, chunk):
            model(ids[:, s : min(s + chunk, context)].to(device), [cache], last_only=True)
        sync(device)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(decode):
            model(ids[:, context + i : context + i + 1].to(device), [cache], last_only=True)
        sync(device)
        decode_s = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
    result = {
        "kernels": kernels,
        "context": context,
        "chunk": chunk,
        "prefill_s": round(prefill_s, 2),
        "prefill_tok_s": round(context / prefill_s, 1),
        "decode_ms_per_token": round(1000 * decode_s / max(decode, 1), 2),
        "peak_device_gib": round(peak / 2**30, 2),
        "weights_gib": round(weights / 2**30, 2),
        "cache_mib": round(cache.nbytes() / 2**20, 2),
    }
    del model, cache
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--contexts", default="16384,65536")
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--decode", type=int, default=32)
    parser.add_argument("--layers", default="sliding,csa,hca")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--kernels", default="reference,triton", help="kernel paths to time, in order")
    default_json = Path(__file__).parent / "results" / "v4_model_forward.json"
    parser.add_argument("--json", type=Path, default=default_json)
    opts = parser.parse_args()
    torch.manual_seed(0)
    check = device_check(opts.device)
    print(f"device check on {opts.device}: {check}")
    args = flash_stack([KINDS[k] for k in opts.layers.split(",")], opts.experts)
    rows = []
    for context in (int(c) for c in opts.contexts.split(",")):
        for kernels in opts.kernels.split(","):
            row = long_context(args, opts.device, context, opts.chunk, opts.decode, kernels)
            rows.append(row)
            print(row, flush=True)
    header = (
        f"{'kernels':>9} {'context':>8} {'prefill tok/s':>14} {'decode ms/tok':>14} {'peak GiB':>9} "
        f"{'cache MiB':>10}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['kernels']:>9} {r['context']:>8} {r['prefill_tok_s']:>14} {r['decode_ms_per_token']:>14} "
            f"{r['peak_device_gib']:>9} {r['cache_mib']:>10}"
        )
    device_name = torch.cuda.get_device_name() if opts.device.startswith("cuda") else platform.processor()
    report = {
        "benchmark": "v4_model_forward",
        "device": opts.device,
        "device_name": device_name,
        "torch": torch.__version__,
        "layers": opts.layers,
        "routed_experts": opts.experts,
        "device_check": check,
        "results": rows,
    }
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
