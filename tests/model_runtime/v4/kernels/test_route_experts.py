"""The router (`route_experts`, Triton) picks the reference's experts with its weights, for every score
function, top-k and hash routing, at V4-Flash's width (256 experts, top-6) and a small one: from given logits
(an identity gate weight), and from tokens and a gate weight, through the single launch (up to
`FUSED_MAX_ROWS` tokens) and the two-step path above it. `Gate` keeps its launch counter zero."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels import route_experts_triton
from deepscout.model_runtime.v4.kernels.route_experts import route_experts
from deepscout.model_runtime.v4.kernels.route_experts_triton import FUSED_MAX_ROWS
from deepscout.model_runtime.v4.model.moe import Gate
from deepscout.model_runtime.v4.model_config import LayerKind, ScoringFunc, tiny
from deepscout.model_runtime.v4.weights.loader import allocate_model

SCORE_FUNCS = ["sqrtsoftplus", "sigmoid", "softmax"]


def _sorted_by_index(weights: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = indices.argsort(dim=-1)
    return weights.gather(1, order), indices.gather(1, order)


def _choice(
    n_experts: int, top_k: int, tokens: int, hashed: bool, gen: torch.Generator, device: torch.device
) -> dict[str, object]:
    """`route_experts`' routing options: a small random bias, or random distinct hashed ids per token."""
    bias = None if hashed else (torch.randn(n_experts, generator=gen) * 0.1).to(device)
    ids = torch.stack([torch.randperm(n_experts, generator=gen)[:top_k] for _ in range(tokens)]).to(device)
    return {"top_k": top_k, "scale": 2.5, "bias": bias, "hashed": ids if hashed else None}


def _assert_same_choice(
    got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]
) -> None:
    got_w, got_i = _sorted_by_index(*got)
    want_w, want_i = _sorted_by_index(*want)
    assert got_i.dtype == torch.int64 and got_w.dtype == torch.float32
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("score_func", SCORE_FUNCS)
@pytest.mark.parametrize(("n_experts", "top_k", "tokens"), [(256, 6, 9), (8, 2, 3)])
@pytest.mark.parametrize("hashed", [False, True], ids=["topk", "hash"])
def test_choice_from_given_logits_matches_reference(
    device: torch.device, score_func: ScoringFunc, n_experts: int, top_k: int, tokens: int, hashed: bool
) -> None:
    """With an identity weight the logits are the tokens exactly, so the scores' edge cases are placed."""
    g = torch.Generator().manual_seed(n_experts + top_k)
    logits = (torch.randn(tokens, n_experts, generator=g) * 3).to(device)
    logits[0, :4] = 25.0  # past softplus's threshold, where it is the identity
    eye = torch.eye(n_experts, device=device)
    kwargs = _choice(n_experts, top_k, tokens, hashed, g, device)
    want = route_experts(logits, eye, score_func=score_func, **kwargs, impl="reference")  # type: ignore[arg-type]
    _assert_same_choice(route_experts(logits, eye, score_func=score_func, **kwargs, impl="triton"), want)  # type: ignore[arg-type]


def _check_choice_from_tokens(
    device: torch.device,
    score_func: ScoringFunc,
    tokens: int,
    hashed: bool,
    dtypes: tuple[torch.dtype, torch.dtype] = (torch.bfloat16, torch.float32),
) -> None:
    """256 experts, top-6, a hidden size that is no multiple of the kernel's step; a second call with the
    same counter gives the same choice (the launch left the counter zero)."""
    g = torch.Generator().manual_seed(tokens)
    dim = 200
    x = (torch.randn(tokens, dim, generator=g) * 2).to(device, dtypes[0])
    weight = (torch.randn(256, dim, generator=g) * dim**-0.5).to(device, dtypes[1])
    kwargs = _choice(256, 6, tokens, hashed, g, device)
    arrivals = torch.zeros(1, dtype=torch.int32, device=device)
    want = route_experts(x, weight, score_func=score_func, **kwargs, impl="reference")  # type: ignore[arg-type]
    for _ in range(2):
        got = route_experts(x, weight, score_func=score_func, **kwargs, arrivals=arrivals, impl="triton")  # type: ignore[arg-type]
        _assert_same_choice(got, want)
        assert arrivals.item() == 0


@pytest.mark.parametrize("score_func", SCORE_FUNCS)
@pytest.mark.parametrize("tokens", [1, 2, FUSED_MAX_ROWS, FUSED_MAX_ROWS + 3])
@pytest.mark.parametrize("hashed", [False, True], ids=["topk", "hash"])
def test_choice_from_tokens_matches_reference(
    device: torch.device, score_func: ScoringFunc, tokens: int, hashed: bool
) -> None:
    """The model's operands: bfloat16 tokens, the float32 gate weight."""
    _check_choice_from_tokens(device, score_func, tokens, hashed)


@pytest.mark.parametrize("tokens", [1, FUSED_MAX_ROWS])
@pytest.mark.parametrize("dtypes", [(torch.float32,) * 2, (torch.bfloat16,) * 2], ids=["float32", "bfloat16"])
def test_choice_from_tokens_in_other_dtypes_and_narrow_steps(
    device: torch.device,
    tokens: int,
    dtypes: tuple[torch.dtype, torch.dtype],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """float32 tokens, a bfloat16 weight (a model cast whole); steps of 64 columns or fewer over the hidden
    size, so the single launch's loop takes several, the last partial."""
    monkeypatch.setattr(route_experts_triton, "PRODUCT_ELEMENTS", 512)
    _check_choice_from_tokens(device, "sqrtsoftplus", tokens, False, dtypes)


def test_ties_pick_the_lowest_ids(device: torch.device) -> None:
    for tokens in (2, FUSED_MAX_ROWS + 1):  # the single launch and the two-step path
        x, weight = torch.zeros(tokens, 4, device=device), torch.ones(16, 4, device=device)
        weights, indices = route_experts(
            x,
            weight,
            score_func="sigmoid",
            top_k=3,
            scale=1.0,
            bias=torch.zeros(16, device=device),
            impl="triton",
        )
        assert indices.sort(dim=-1).values.tolist() == [[0, 1, 2]] * tokens
        torch.testing.assert_close(weights, torch.full_like(weights, 1 / 3))


def test_needs_exactly_one_of_bias_and_hashed() -> None:
    x, weight = torch.zeros(1, 4), torch.zeros(8, 4)
    with pytest.raises(ValueError, match="exactly one"):
        route_experts(x, weight, score_func="sigmoid", top_k=2, scale=1.0, impl="reference")
    with pytest.raises(ValueError, match="exactly one"):
        route_experts(
            x,
            weight,
            score_func="sigmoid",
            top_k=2,
            scale=1.0,
            bias=torch.zeros(8),
            hashed=torch.zeros(1, 2, dtype=torch.long),
            impl="triton",
        )


def test_bad_operands_are_refused() -> None:
    x, weight, bias = torch.zeros(2, 4), torch.zeros(8, 4), torch.zeros(8)
    options = {"score_func": "sigmoid", "top_k": 2, "scale": 1.0, "impl": "triton"}
    with pytest.raises(ValueError, match="disagree"):
        route_experts(x, torch.zeros(8, 5), bias=bias, **options)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="weight in"):
        route_experts(x, weight.half(), bias=bias, **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hashed must be"):
        route_experts(x, weight, hashed=torch.zeros(2, 3, dtype=torch.long), **options)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="arrivals"):
        route_experts(x, weight, bias=bias, arrivals=torch.zeros(1, dtype=torch.int64), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("hash_routed", [False, True], ids=["topk", "hash"])
def test_gate_runs_the_single_launch_and_keeps_its_counter_zero(
    device: torch.device, hash_routed: bool
) -> None:
    """The gate's counter is zero after a forward, and after whatever re-materialises it (`to_empty`, the
    loader's allocation of the model's meta buffers, a move)."""
    args = tiny((LayerKind.SLIDING,), num_hash_layers=1 if hash_routed else 0)
    torch.manual_seed(0)
    gate = Gate(args, hash_routed).to(device)
    with torch.no_grad():
        gate.weight.normal_(std=args.hidden_size**-0.5)
        if gate.bias is not None:
            gate.bias.normal_()
        else:
            gate.tid2eid.copy_(
                torch.rand(args.vocab_size, args.n_routed_experts).argsort(-1)[:, : gate.top_k]
            )
    x = torch.randn(3, args.hidden_size, device=device).bfloat16()
    token_ids = torch.tensor([1, 5, 2], device=device)
    _assert_same_choice(gate(x, token_ids, "triton"), gate(x, token_ids, "reference"))
    assert gate.arrivals.tolist() == [0] and "arrivals" not in gate.state_dict()
    with torch.device("meta"):
        fresh = Gate(args, hash_routed)
    fresh.to_empty(device=device)
    assert fresh.arrivals.tolist() == [0]
    allocated = allocate_model(args, device=device)  # meta buffers re-allocated, the unsaved ones zeroed
    assert all(g.arrivals.tolist() == [0] for g in allocated.modules() if isinstance(g, Gate))
    gate.arrivals.fill_(3)
    assert gate.to(device).arrivals.tolist() == [0]
