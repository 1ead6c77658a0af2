"""The engine's device decode step (fused kernels, state and entries written by position) produces the same
tokens and log-probabilities as decoding through the cache protocol."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, tiny

PAPER_ON_GPU = pytest.param(
    "paper",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(
            not torch.cuda.is_available(), reason="bfloat16 state: Triton's interpreter has no bf16 dot"
        ),
    ],
)


@pytest.mark.parametrize("kv_dtype", ["float32", PAPER_ON_GPU])
def test_device_decode_matches_protocol_decode(device: torch.device, kv_dtype: str) -> None:
    """Two sequences decode together across CSA entry boundaries (every 4 tokens), an HCA boundary (token
    256) and a full window ring; the top-k is selective (16 of up to 66 entries). On CUDA the steps after
    the first of each shape replay a captured graph. In the paper layout (FP8 + BF16 RoPE main entries,
    MXFP4 indexer keys) both paths write and read the same quantised entries."""
    args = tiny((LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA, LayerKind.CSA), index_head_dim=32)
    model = DeepseekV4Model.random(args, seed=3, device=device).eval()
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(2, args.vocab_size, (n,), generator=g).tolist() for n in (250, 131)]

    def generate(kernels: str) -> tuple[list[list[int]], list[list[float]], int]:
        model.kernels = kernels  # type: ignore[assignment]
        config = EngineConfig(num_blocks=16, prefill_chunk=256, device=str(device), kv_dtype=kv_dtype)  # type: ignore[arg-type]
        engine = Engine(model, config)
        requests = [
            GenerationRequest(prompt_ids=p, max_new_tokens=12, sampling=SamplingParams(logprobs=True))
            for p in prompts
        ]
        outputs = engine.generate(requests)
        tokens = [list(o.token_ids) for o in outputs]
        logprobs = [[float(x) for x in o.logprobs] for o in outputs]
        return tokens, logprobs, engine.runner.decoder.graph_replays

    ref_tokens, ref_logprobs, _ = generate("reference")
    tokens, logprobs, replays = generate("triton")
    assert replays > 0 if device.type == "cuda" else replays == 0  # decode steps replayed from CUDA graphs
    assert tokens == ref_tokens
    # in the paper layout the device step multiplies in the bfloat16 of the window state, the protocol path
    # in the model's float32
    tolerance = 1e-3 if kv_dtype == "float32" else 3e-2
    for got, want in zip(logprobs, ref_logprobs, strict=True):
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < tolerance
