"""The whole V4 model on the Triton kernels equals the model on the PyTorch reference paths."""

from __future__ import annotations

import torch

from deepscout.model_runtime.v4.cache.contiguous import ContiguousSequenceCache
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, tiny


def _cache(args: ModelArgs, device: torch.device) -> ContiguousSequenceCache:
    return ContiguousSequenceCache(
        [*args.layer_types, *args.mtp_layer_types],
        head_dim=args.head_dim,
        index_head_dim=args.index_head_dim,
        sliding_window=args.sliding_window,
        device=device,
    )


def test_chunked_prefill_and_decode_match_reference(device: torch.device) -> None:
    """Prefill in two chunks then decode steps, a short window so bands wrap: same logits either way."""
    args = tiny((LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA), sliding_window=16, hca_ratio=8)
    model = DeepseekV4Model.random(args, seed=1, device=device).eval()
    ids = torch.randint(2, args.vocab_size, (1, 70), generator=torch.Generator().manual_seed(2)).to(device)
    chunks = [40, 22, 1, 1, 1, 1, 1, 1, 1, 1]

    def run(kernels: str) -> torch.Tensor:
        model.kernels = kernels  # type: ignore[assignment]
        cache, out, start = _cache(args, device), [], 0
        with torch.no_grad():
            for size in chunks:
                out.append(model(ids[:, start : start + size], [cache]))
                start += size
        return torch.cat(out, dim=1)

    reference, fused = run("reference"), run("triton")
    assert float((fused - reference).abs().max() / reference.abs().max()) < 1e-4
