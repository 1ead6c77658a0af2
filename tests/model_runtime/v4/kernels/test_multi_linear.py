"""Same-input projections in one launch: the Triton kernel against `F.linear` per weight, on the CPU under
Triton's interpreter (ragged N and K, several column blocks per weight) and at V4-Flash's CSA and HCA sets on
a CUDA device.

Tolerance: both paths add float32 products of the same inputs (exact for bf16 inputs), in different orders,
then round to the output dtype: max |diff| <= 1e-5 · max |exact| for float32, <= 1e-2 · max |exact| for
bfloat16 (one bf16 ulp is 2^-8 relative), against the float64 product."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.multi_linear import ROW_LIMIT, multi_linear
from deepscout.model_runtime.v4.kernels.multi_linear_triton import (
    MultiTiles,
    choose_multi_tiles,
    multi_linear_triton,
)

_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
_CSA_NS = (1024, 512, 1024, 1024, 64, 256, 256)
"""wq_a, wkv, the compressor's wkv and wgate, the indexer's weights_proj, its compressor's wkv and wgate."""
_HCA_NS = (1024, 512, 512, 512)
"""wq_a, wkv, the compressor's wkv and wgate."""


def _operands(
    rows: int, ns: tuple[int, ...], k: int, dtype: torch.dtype, device: torch.device, seed: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(rows, k, generator=gen, device=device).to(dtype)
    weights = [(torch.randn(n, k, generator=gen, device=device) * k**-0.5).to(dtype) for n in ns]
    return x, weights


def _assert_close(ours: list[torch.Tensor], x: torch.Tensor, weights: list[torch.Tensor]) -> None:
    assert len(ours) == len(weights)
    for y, w in zip(ours, weights, strict=True):
        exact = x.double() @ w.double().T
        assert y.dtype == x.dtype and y.shape == exact.shape and y.is_contiguous()
        if exact.numel():
            assert float((y.double() - exact).abs().max() / exact.abs().max()) < _TOLERANCE[x.dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, ROW_LIMIT])
def test_triton_matches_the_product_per_weight(device: torch.device, dtype: torch.dtype, rows: int) -> None:
    """Weights of ragged N (one shorter than a column block, one not a multiple of it) and K = 300 (not a
    power of two: the last step is masked), several column blocks each, and with the default tiles."""
    x, weights = _operands(rows, (24, 5, 40, 1), 300, dtype, device, seed=rows)
    _assert_close(multi_linear_triton(x, weights, tiles=MultiTiles(block_n=8, block_k=64)), x, weights)
    _assert_close(multi_linear(x, weights, impl="triton"), x, weights)
    reference = multi_linear(x, weights, impl="reference")
    _assert_close(reference, x, weights)


def test_reads_the_weights_where_they_are(device: torch.device) -> None:
    """Weights that are rows of one tensor (as views) and a transposed input give the same products."""
    gen = torch.Generator(device=device).manual_seed(0)
    stacked = torch.randn(48, 128, generator=gen, device=device)
    weights = [stacked[:16], stacked[16:20], stacked[20:]]
    x = torch.randn(128, 2, generator=gen, device=device).T  # column-major rows
    _assert_close(multi_linear(x, weights, impl="triton"), x, weights)


def test_empty_operands(device: torch.device) -> None:
    """No rows, a weight of no rows, no weights."""
    x, weights = _operands(2, (8, 0, 3), 64, torch.float32, device, seed=0)
    _assert_close(multi_linear(x, weights, impl="triton"), x, weights)
    assert [tuple(y.shape) for y in multi_linear(x[:0], weights, impl="triton")] == [(0, 8), (0, 0), (0, 3)]
    assert multi_linear(x, [], impl="triton") == []


def test_tiles_aim_for_four_programs_per_multiprocessor() -> None:
    """On an H200 (132 SMs) the CSA set's 4,160 columns give 520 programs at 8 columns each (fewer than 528),
    so 4 each; `block_k` keeps a step at 4096 weight elements."""
    assert choose_multi_tiles(_CSA_NS, 4096, n_sms=132) == MultiTiles(block_n=4, block_k=1024)
    assert choose_multi_tiles((64, 64), 4096, n_sms=1) == MultiTiles(block_n=32, block_k=128)
    assert choose_multi_tiles((3,), 100, n_sms=132) == MultiTiles(block_n=1, block_k=128)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_refuses_what_the_contract_excludes(device: torch.device, impl: KernelImpl) -> None:
    x, weights = _operands(2, (8, 3), 64, torch.float32, device, seed=0)
    too_many, _ = _operands(ROW_LIMIT + 1, (), 64, torch.float32, device, seed=0)
    with pytest.raises(ValueError, match=f"at most {ROW_LIMIT} rows"):
        multi_linear(too_many, weights, impl=impl)
    with pytest.raises(ValueError, match=r"weight 1 \[3, 63\] is not \[N, 64\]"):
        multi_linear(x, [weights[0], weights[1][:, :63]], impl=impl)
    with pytest.raises(TypeError, match=r"weight 0 is torch\.bfloat16"):
        multi_linear(x, [weights[0].bfloat16()], impl=impl)
    with pytest.raises(TypeError, match="2-D bfloat16 or float32"):
        multi_linear(x.half(), [w.half() for w in weights], impl=impl)
    with pytest.raises(ValueError, match="contiguous"):
        multi_linear(x, [torch.randn(64, 8, device=device).T], impl=impl)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("ns", [_CSA_NS, _HCA_NS], ids=["csa", "hca"])
def test_flash_sets_on_cuda(ns: tuple[int, ...], rows: int) -> None:
    """A CSA or HCA layer's projections of its 4096-wide input, bf16, in one launch."""
    x, weights = _operands(rows, ns, 4096, torch.bfloat16, torch.device("cuda"), seed=rows)
    _assert_close(multi_linear(x, weights, impl="triton"), x, weights)
