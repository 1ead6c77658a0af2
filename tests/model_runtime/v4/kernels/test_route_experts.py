"""The router's fused choice (`route_experts`, Triton) picks the reference's experts with its weights, for
every score function, top-k and hash routing, at V4-Flash's width (256 experts, top-6) and a small one."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.route_experts import route_experts
from deepscout.model_runtime.v4.model_config import ScoringFunc


def _sorted_by_index(weights: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = indices.argsort(dim=-1)
    return weights.gather(1, order), indices.gather(1, order)


@pytest.mark.parametrize("score_func", ["sqrtsoftplus", "sigmoid", "softmax"])
@pytest.mark.parametrize(("n_experts", "top_k", "tokens"), [(256, 6, 9), (8, 2, 3)])
@pytest.mark.parametrize("hashed", [False, True], ids=["topk", "hash"])
def test_fused_choice_matches_reference(
    device: torch.device, score_func: ScoringFunc, n_experts: int, top_k: int, tokens: int, hashed: bool
) -> None:
    g = torch.Generator().manual_seed(n_experts + top_k)
    logits = (torch.randn(tokens, n_experts, generator=g) * 3).to(device)
    logits[0, :4] = 25.0  # past softplus's threshold, where it is the identity
    bias = None if hashed else (torch.randn(n_experts, generator=g) * 0.1).to(device)
    ids = torch.stack([torch.randperm(n_experts, generator=g)[:top_k] for _ in range(tokens)]).to(device)
    given = ids if hashed else None
    kwargs = {"score_func": score_func, "top_k": top_k, "scale": 2.5, "bias": bias, "hashed": given}
    want_w, want_i = _sorted_by_index(*route_experts(logits, **kwargs, impl="reference"))
    got_w, got_i = _sorted_by_index(*route_experts(logits, **kwargs, impl="triton"))
    assert got_i.dtype == torch.int64 and got_w.dtype == torch.float32
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)


def test_ties_pick_the_lowest_ids(device: torch.device) -> None:
    logits = torch.zeros(2, 16, device=device)
    weights, indices = route_experts(
        logits, score_func="sigmoid", top_k=3, scale=1.0, bias=torch.zeros(16, device=device), impl="triton"
    )
    assert indices.sort(dim=-1).values.tolist() == [[0, 1, 2], [0, 1, 2]]
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 3))


def test_needs_exactly_one_of_bias_and_hashed() -> None:
    logits = torch.zeros(1, 8)
    with pytest.raises(ValueError, match="exactly one"):
        route_experts(logits, score_func="sigmoid", top_k=2, scale=1.0, impl="reference")
    with pytest.raises(ValueError, match="exactly one"):
        route_experts(
            logits,
            score_func="sigmoid",
            top_k=2,
            scale=1.0,
            bias=torch.zeros(8),
            hashed=torch.zeros(1, 2, dtype=torch.long),
            impl="triton",
        )
