"""On the GPU, a V4-Flash-shaped stack holding its weights as shipped (FP8 projections, MXFP4 experts, on the
W8A16/W4A16 kernels) serves through the engine — chunked prefill, then graph-captured decode — with the
logits of the same weights dequantised into a dense bfloat16 model."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import flash_shaped
from deepscout.model_runtime.v4.weights.loader import shipped_targets
from deepscout.model_runtime.v4.weights.quant import QuantizedTensor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# four V4-Flash layers (sliding, sliding, CSA, HCA) at full width, 16 of the 256 experts
ARGS = replace(flash_shaped(4), n_routed_experts=16, num_experts_per_tok=6)


def _dequantized(model: DeepseekV4Model) -> DeepseekV4Model:
    """A dense model holding `model`'s shipped weights dequantised (exact in bfloat16) and the rest as is."""
    with torch.device(model.embed.weight.device):
        dense = DeepseekV4Model(model.args, kernels=model.kernels).cast(model.dtype).eval()
    state = model.state_dict()
    for name, target in shipped_targets(model).items():
        del state[f"{name.removesuffix('.weight')}.scale"]
        quantized = QuantizedTensor(target.format, target.data, target.scale, target.shape)
        state[name] = quantized.dequantize(model.dtype)
    dense.load_state_dict(state)
    return dense


def _serve(
    model: DeepseekV4Model, prompt: list[int], new_tokens: int, device: str = "cuda"
) -> tuple[torch.Tensor, list[int], list[float]]:
    """(prompt logits, greedy tokens, their logprobs) of one engine request."""
    kv_dtype = "bfloat16" if model.dtype == torch.bfloat16 else "float32"
    config = EngineConfig.model_validate(
        {"num_blocks": 16, "prefill_chunk": 256, "device": device, "kv_dtype": kv_dtype}
    )
    request = GenerationRequest(
        prompt_ids=prompt,
        max_new_tokens=new_tokens,
        sampling=SamplingParams(logprobs=True),
        return_prompt_logits=True,
    )
    (out,) = Engine(model, config).generate([request])
    assert out.prompt_logits is not None and out.logprobs is not None
    return out.prompt_logits.float(), list(out.token_ids), [float(x) for x in out.logprobs]


def test_shipped_weights_serve_like_their_dequantised_copy() -> None:
    """Bound (bfloat16 activations both ways, only the GEMMs' rounding differs; not yet run on a GPU):
    top-1 agreement >= 0.95 and mean KL < 2e-3 over the prompt (the bf16-vs-float32 test's bound), and every
    decode step's logprob within 0.1 of the dense model's for the same token (teacher-forced)."""
    shipped = DeepseekV4Model.random(
        ARGS, seed=0, dtype=torch.bfloat16, device="cuda", kernels="triton", weights="shipped"
    ).eval()
    dense = _dequantized(shipped)
    prompt = torch.randint(2, ARGS.vocab_size, (300,), generator=torch.Generator().manual_seed(1)).tolist()
    logits, tokens, logprobs = _serve(shipped, prompt, new_tokens=8)
    forced, _, _ = _serve(dense, prompt + tokens[:-1], new_tokens=1)
    ref = forced[: len(prompt)]
    agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    kl = torch.nn.functional.kl_div(
        logits.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="none"
    )
    assert agree >= 0.95, f"top-1 agreement {agree:.3f}"
    assert kl.sum(-1).mean().item() < 2e-3, f"mean KL {kl.sum(-1).mean().item():.2e}"
    forced_logprobs = forced[len(prompt) - 1 :].log_softmax(-1)
    for step, (token, logprob) in enumerate(zip(tokens, logprobs, strict=True)):
        assert abs(logprob - forced_logprobs[step, token].item()) < 0.1, f"decode step {step}"
