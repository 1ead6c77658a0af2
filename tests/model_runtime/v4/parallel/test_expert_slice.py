"""The grouped MoE over one slice of the experts: each slice's output is exactly its experts' share, the
slices sum to the whole (reference and Triton paths, dense and MXFP4 stacks), and a world size that does
not divide the experts is refused."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice, ExpertStacks
from deepscout.model_runtime.v4.kernels.grouped_moe import grouped_moe
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks, quantize
from deepscout.model_runtime.v4.parallel.rank_group import expert_slice

EXPERTS, HIDDEN, INTER, TOKENS, TOP_K = 8, 64, 32, 9, 3


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, ExpertStacks]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, HIDDEN, generator=gen)
    indices = torch.stack([torch.randperm(EXPERTS, generator=gen)[:TOP_K] for _ in range(TOKENS)])
    weights = torch.rand(TOKENS, TOP_K, generator=gen)

    def stack(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(EXPERTS, rows, cols, generator=gen) * cols**-0.5

    return x, weights, indices, ExpertStacks(stack(INTER, HIDDEN), stack(HIDDEN, INTER), stack(INTER, HIDDEN))


def _rows(stacks: ExpertStacks | Mxfp4ExpertStacks, ids: ExpertSlice) -> ExpertStacks | Mxfp4ExpertStacks:
    return stacks.map(lambda t: t[ids.start : ids.stop].contiguous())


@pytest.mark.parametrize("impl", ["reference", "triton"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "mxfp4"])
def test_slices_sum_to_the_whole(impl: KernelImpl, packed: bool) -> None:
    x, weights, indices, dense = _inputs()
    stacks: ExpertStacks | Mxfp4ExpertStacks = quantize(dense) if packed else dense
    whole = grouped_moe(x, weights, indices, stacks, 7.0, impl="reference")
    parts = []
    for rank in range(4):
        ids = expert_slice(EXPERTS, rank=rank, world_size=4)
        part = grouped_moe(x, weights, indices, _rows(stacks, ids), 7.0, impl=impl, experts=ids)
        mine = (indices >= ids.start) & (indices < ids.stop)
        # only this slice's pairs count: the same routing with the others' weights zeroed, on all experts
        alone = grouped_moe(x, weights * mine, indices, stacks, 7.0, impl="reference")
        torch.testing.assert_close(part, alone, rtol=1e-5, atol=1e-6)
        parts.append(part)
    torch.testing.assert_close(torch.stack(parts).sum(0), whole, rtol=1e-5, atol=1e-6)


def test_a_slice_without_pairs_gives_zeros() -> None:
    x, weights, _, stacks = _inputs()
    ids = ExpertSlice(4, 4)
    indices = torch.randint(0, 4, (TOKENS, TOP_K), generator=torch.Generator().manual_seed(1))
    for impl in ("reference", "triton"):
        out = grouped_moe(x, weights, indices, _rows(stacks, ids), 7.0, impl=impl, experts=ids)
        assert torch.equal(out, torch.zeros_like(x))


def test_the_slice_must_match_the_stacks() -> None:
    x, weights, indices, stacks = _inputs()
    with pytest.raises(ValueError, match="the stacks hold 8 experts, the slice names 4"):
        grouped_moe(x, weights, indices, stacks, 7.0, impl="reference", experts=ExpertSlice(0, 4))


def test_experts_not_divisible_by_the_world_size_are_refused() -> None:
    with pytest.raises(ValueError, match=r"n_routed_experts \(6\) divisible by the world size \(4\)"):
        expert_slice(6, rank=0, world_size=4)
    assert expert_slice(8, rank=1, world_size=2) == ExpertSlice(4, 4)
