"""The grouped-MoE kernel against the expert-by-expert reference, on fresh random inputs: on the CPU under
Triton's interpreter (tiny shapes), and at V4-Flash width on a CUDA device with host syncs forbidden."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertStacks
from deepscout.model_runtime.v4.kernels.grouped_moe import grouped_moe, swiglu_activation
from deepscout.model_runtime.v4.kernels.grouped_moe_triton import (
    TileConfig,
    choose_tiles,
    group_pairs,
    grouped_moe_triton,
)
from deepscout.model_runtime.v4.model.moe import MoE
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, tiny

_PREFILL_TILES = TileConfig(block_m=64, gate_up_n=32, down_n=64, block_k=32, num_warps=4, num_stages=2)


def _stacks(experts: int, hidden: int, inter: int, gen: torch.Generator, dtype: torch.dtype) -> ExpertStacks:
    def weight(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(experts, rows, cols, generator=gen) * cols**-0.5).to(dtype)

    return ExpertStacks(weight(inter, hidden), weight(hidden, inter), weight(inter, hidden))


def _routing(
    tokens: int, top_k: int, allowed: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct experts per token drawn from the first `allowed` (the others get no token)."""
    indices = torch.stack([torch.randperm(allowed, generator=gen)[:top_k] for _ in range(tokens)])
    return torch.rand(tokens, top_k, generator=gen), indices


def _relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


def test_pairs_are_grouped_by_expert_in_whole_tiles() -> None:
    gen = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 5, (23, 3), generator=gen)
    indices[:, 0] = 1  # a crowded expert spanning several tiles; experts 5..6 get nothing
    groups = group_pairs(indices, n_experts=7, block_m=4)
    n_pairs = indices.numel()
    assert groups.n_tiles == -(-n_pairs // 4) + 7
    pair_ids = groups.pair_ids.view(groups.n_tiles, 4)
    real = pair_ids < n_pairs
    assert sorted(groups.pair_ids[groups.pair_ids < n_pairs].tolist()) == list(range(n_pairs))
    flat = indices.flatten()
    for tile in range(groups.n_tiles):
        expert = int(groups.tile_expert[tile])
        pairs = pair_ids[tile][real[tile]]
        if expert == 7:
            assert pairs.numel() == 0  # past the last real tile
        else:
            assert pairs.numel() > 0 and bool((flat[pairs] == expert).all())
    counts = torch.bincount(flat, minlength=7)
    tiles_used = (groups.tile_expert < 7).sum()
    assert int(tiles_used) == int(((counts + 3) // 4).sum())


@pytest.mark.parametrize(
    ("tokens", "top_k", "experts", "allowed", "limit", "tiles"),
    [
        (1, 2, 8, 8, 10.0, None),  # one decode token
        (37, 3, 6, 4, 1.0, None),  # N*k not a multiple of the tile; experts 4, 5 idle; clamps active
        (45, 2, 4, 2, 0.0, None),  # two experts take every pair (several tiles each); no clamp
        (45, 2, 4, 3, 1.0, _PREFILL_TILES),  # larger tiles, reduction split in several steps
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_reference(
    device: torch.device,
    tokens: int,
    top_k: int,
    experts: int,
    allowed: int,
    limit: float,
    tiles: TileConfig | None,
    dtype: torch.dtype,
) -> None:
    gen = torch.Generator().manual_seed(tokens * 100 + allowed)
    hidden, inter = 80, 48  # neither a multiple of the reduction step
    stacks = _stacks(experts, hidden, inter, gen, dtype)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    weights, indices = _routing(tokens, top_k, allowed, gen)
    oracle = grouped_moe(x.float(), weights, indices, stacks.map(torch.Tensor.float), limit, impl="reference")
    on = stacks.map(lambda w: w.to(device))
    ours = grouped_moe_triton(
        x.to(device), weights.to(device), indices.to(device), on.w1, on.w2, on.w3, limit, tiles=tiles
    )
    assert ours.dtype == dtype and ours.shape == x.shape
    assert _relative(ours.cpu(), oracle) < (1e-5 if dtype == torch.float32 else 1e-2)
    if dtype == torch.bfloat16:  # the reference in bf16 is no closer to the float32 result than we are
        reference = grouped_moe(x, weights, indices, stacks, limit, impl="reference")
        assert _relative(ours.cpu(), oracle) <= 1.5 * _relative(reference, oracle) + 1e-3


def test_a_token_may_pick_an_expert_twice(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(5)
    stacks = _stacks(5, 64, 32, gen, torch.float32)
    x = torch.randn(19, 64, generator=gen)
    indices = torch.randint(0, 3, (19, 4), generator=gen)  # slots repeat experts within a token
    weights = torch.rand(19, 4, generator=gen)
    reference = grouped_moe(x, weights, indices, stacks, 1.0, impl="reference")
    on = stacks.map(lambda w: w.to(device))
    ours = grouped_moe(x.to(device), weights.to(device), indices.to(device), on, 1.0, impl="triton")
    assert _relative(ours.cpu(), reference) < 1e-5


@pytest.mark.parametrize("limit", [0.0, 1.5], ids=["unclamped", "clamped"])
def test_swiglu_in_one_launch_matches_reference(device: torch.device, limit: float) -> None:
    """The shared expert's activation (rows wider than one block of columns, clamps on both sides)."""
    g = torch.Generator().manual_seed(7)
    gate, up = (torch.randn(3, 1500, generator=g).mul(2).to(device) for _ in range(2))
    want = swiglu_activation(gate, up, limit)
    got = swiglu_activation(gate, up, limit, impl="triton")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_tiles_follow_the_pairs_per_expert() -> None:
    assert choose_tiles(n_pairs=6, n_experts=256).block_m == 16  # decode
    assert choose_tiles(n_pairs=48, n_experts=16).block_m == 16
    assert choose_tiles(n_pairs=4096 * 6, n_experts=16).block_m == 128  # prefill


def test_moe_layer_paths_agree(device: torch.device) -> None:
    args = tiny((LayerKind.SLIDING,), num_hash_layers=0)
    torch.manual_seed(0)
    moe = MoE(args, hash_routed=False).to(device)
    with torch.no_grad():
        assert moe.gate.bias is not None
        moe.gate.bias.normal_()
        x = torch.randn(21, args.hidden_size, device=device)
        token_ids = torch.zeros(21, dtype=torch.long, device=device)
        assert _relative(moe(x, token_ids, "triton"), moe(x, token_ids, "reference")) < 1e-5


def _flash_width(experts: int) -> ModelArgs:
    return ModelArgs(
        num_hidden_layers=1,
        layer_types=(LayerKind.SLIDING,),
        mlp_layer_types=("moe",),
        n_routed_experts=experts,
        num_experts_per_tok=6,
        num_nextn_predict_layers=0,
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("experts", [8, 16])
@pytest.mark.parametrize("tokens", [1, 8, 512, 4096])
def test_flash_width_on_cuda_without_host_syncs(experts: int, tokens: int) -> None:
    """V4-Flash widths (hidden 4096, inter 2048, top-6) in bf16: the whole MoE layer (router, routed
    experts, shared expert) on the kernel runs with host syncs forbidden and matches the reference."""
    args = _flash_width(experts)
    assert (args.hidden_size, args.moe_intermediate_size) == (4096, 2048)
    torch.manual_seed(tokens)
    with torch.device("cuda"):
        moe = MoE(args, hash_routed=False)
    with torch.no_grad():
        for param in moe.parameters():
            param.normal_(std=param.shape[-1] ** -0.5)
        moe.to(torch.bfloat16)
        assert moe.gate.bias is not None
        moe.gate.bias.data = moe.gate.bias.float()
        x = torch.randn(tokens, args.hidden_size, device="cuda").bfloat16()
        token_ids = torch.zeros(tokens, dtype=torch.long, device="cuda")
        moe(x, token_ids, "triton")  # compile outside the guarded region
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            ours = moe(x, token_ids, "triton")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        reference = moe(x, token_ids, "reference")
        weights, indices = moe.gate(x, token_ids)
        stacks32 = moe.experts.stacks.map(torch.Tensor.float)
        oracle = grouped_moe(x.float(), weights, indices, stacks32, args.swiglu_limit, impl="reference")
        routed = grouped_moe(x, weights, indices, moe.experts.stacks, args.swiglu_limit, impl="triton")
    assert _relative(ours, reference) < 2e-2
    assert _relative(routed, oracle) < 1e-2
