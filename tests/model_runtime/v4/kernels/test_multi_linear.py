"""Same-input projections in one launch: the Triton kernel against `F.linear` per plain weight and the
dequantising FP8 reference per FP8 block-scaled one, on the CPU under Triton's interpreter (ragged N and K,
several column blocks per weight, plain and FP8 weights mixed, both scale formats) and at V4-Flash's CSA
and HCA sets (dense, and shipped: FP8 `wq_a` and `wkv`) on a CUDA device.

Tolerance: both paths add float32 products of the same inputs (exact for bf16 inputs and e4m3 weights), in
different orders, then round to the output dtype: max |diff| <= 1e-5 · max |exact| for float32, <= 1e-2 ·
max |exact| for bfloat16 (one bf16 ulp is 2^-8 relative), against the float64 product of the exactly
dequantised weights."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.multi_linear import ROW_LIMIT, Fp8Weight, LinearWeight, multi_linear
from deepscout.model_runtime.v4.kernels.multi_linear_triton import (
    MultiTiles,
    TritonWeight,
    choose_multi_tiles,
    multi_linear_triton,
)
from deepscout.model_runtime.v4.weights.quant import ScaleFormat, dequantize_fp8_block, quantize_fp8_block

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


def _fp8(n: int, k: int, fmt: ScaleFormat, gen: torch.Generator, device: torch.device) -> Fp8Weight:
    """A quantised random weight whose blocks span several orders of magnitude (scales differ per block)."""
    spread = torch.exp2(torch.randint(-6, 6, (-(-n // 128), -(-k // 128)), generator=gen).float())
    blocks = spread.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    weight, scale = quantize_fp8_block(torch.randn(n, k, generator=gen) * blocks * k**-0.5, scale_format=fmt)
    return Fp8Weight(weight.to(device), scale.to(device))


def _mixed(
    rows: int, k: int, dtype: torch.dtype, formats: tuple[ScaleFormat, ScaleFormat], device: torch.device
) -> tuple[torch.Tensor, list[LinearWeight]]:
    """Plain and FP8 weights interleaved: FP8 N ragged across two scale rows (200), one of 130 and one
    shorter than a column block (7); plain N of 24 and 5."""
    gen = torch.Generator().manual_seed(rows + k)
    x = torch.randn(rows, k, generator=gen).to(dtype).to(device)
    plain = [(torch.randn(n, k, generator=gen) * k**-0.5).to(dtype).to(device) for n in (24, 5)]
    first, second = formats
    fp8 = [
        _fp8(200, k, first, gen, device),
        _fp8(7, k, second, gen, device),
        _fp8(130, k, first, gen, device),
    ]
    return x, [fp8[0], plain[0], fp8[1], plain[1], fp8[2]]


def _as_pairs(weights: Sequence[LinearWeight]) -> list[TritonWeight]:
    """The weights as `multi_linear_triton` takes them: FP8 ones as (weight, scale) pairs."""
    return [(w.weight, w.scale) if isinstance(w, Fp8Weight) else w for w in weights]


def _assert_close(ours: list[torch.Tensor], x: torch.Tensor, weights: Sequence[LinearWeight]) -> None:
    assert len(ours) == len(weights)
    for y, w in zip(ours, weights, strict=True):
        dense = dequantize_fp8_block(w.weight, w.scale) if isinstance(w, Fp8Weight) else w
        exact = x.double() @ dense.double().T
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, ROW_LIMIT])
@pytest.mark.parametrize(
    "formats", [("e8m0", "e8m0"), ("float32", "float32"), ("e8m0", "float32")], ids=["e8m0", "f32", "both"]
)
def test_fp8_weights_beside_plain_ones(
    device: torch.device, dtype: torch.dtype, rows: int, formats: tuple[ScaleFormat, ScaleFormat]
) -> None:
    """FP8 weights (ragged N and K = 300: a partial last scale block and a masked last step) interleaved with
    plain ones, one launch, with 128- and 256-wide steps and the default tiles; the reference is
    `fp8_linear`'s per FP8 weight."""
    x, weights = _mixed(rows, 300, dtype, formats, device)
    for tiles in (MultiTiles(block_n=8, block_k=128), MultiTiles(block_n=4, block_k=256)):
        _assert_close(multi_linear_triton(x, _as_pairs(weights), tiles=tiles), x, weights)
    _assert_close(multi_linear(x, weights, impl="triton"), x, weights)
    _assert_close(multi_linear(x, weights, impl="reference"), x, weights)


def test_fp8_only_and_stored_scale_dtypes(device: torch.device) -> None:
    """Only FP8 weights (one kind) at K = 384 (whole blocks, even steps), the e8m0 scales as raw uint8
    bytes and the float ones as bfloat16, as `fp8_linear` takes them."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 384, generator=gen).bfloat16().to(device)
    e8m0 = _fp8(256, 384, "e8m0", gen, device)
    floats = _fp8(64, 384, "float32", gen, device)
    weights: list[LinearWeight] = [e8m0, Fp8Weight(e8m0.weight, e8m0.scale.view(torch.uint8))]
    weights += [Fp8Weight(floats.weight, floats.scale.bfloat16())]
    _assert_close(multi_linear(x, weights, impl="triton"), x, weights)
    _assert_close(multi_linear(x, weights[:2], impl="triton"), x, weights[:2])


def test_tiles_aim_for_four_programs_per_multiprocessor() -> None:
    """On an H200 (132 SMs) the CSA set's 4,160 columns give 520 programs at 8 columns each (fewer than 528),
    so 4 each; `block_k` keeps a step at 4096 weight elements."""
    assert choose_multi_tiles(_CSA_NS, 4096, n_sms=132) == MultiTiles(block_n=4, block_k=1024)
    assert choose_multi_tiles((64, 64), 4096, n_sms=1) == MultiTiles(block_n=32, block_k=128)
    assert choose_multi_tiles((3,), 100, n_sms=132) == MultiTiles(block_n=1, block_k=128)


def test_fp8_tiles_step_whole_scale_blocks() -> None:
    """With FP8 weights, about eight programs per multiprocessor and `block_k` a multiple of 128 (at least
    128, at most K's blocks rounded up to a power of two) for about 8192 elements a step (8 KiB of FP8):
    on an H200 the CSA set gets 2,080 programs of 2 columns, 4096 wide."""
    assert choose_multi_tiles(_CSA_NS, 4096, n_sms=132, fp8=True) == MultiTiles(block_n=2, block_k=4096)
    assert choose_multi_tiles(_HCA_NS, 4096, n_sms=132, fp8=True) == MultiTiles(block_n=2, block_k=4096)
    assert choose_multi_tiles((64, 64), 4096, n_sms=1, fp8=True) == MultiTiles(block_n=16, block_k=512)
    assert choose_multi_tiles((4096,), 4096, n_sms=1, fp8=True) == MultiTiles(block_n=64, block_k=128)
    assert choose_multi_tiles((3,), 100, n_sms=132, fp8=True) == MultiTiles(block_n=1, block_k=128)
    assert choose_multi_tiles((3,), 300, n_sms=132, fp8=True) == MultiTiles(block_n=1, block_k=512)


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


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_refuses_fp8_weights_the_contract_excludes(device: torch.device, impl: KernelImpl) -> None:
    x, weights = _mixed(2, 300, torch.float32, ("e8m0", "float32"), device)
    fp8 = weights[0]
    assert isinstance(fp8, Fp8Weight)
    with pytest.raises(ValueError, match=r"weight 1 \[200, 300\] needs block scales \[2, 3\], got \[2, 2\]"):
        multi_linear(x, [weights[1], Fp8Weight(fp8.weight, fp8.scale[:, :2].contiguous())], impl=impl)
    with pytest.raises(TypeError, match=r"weight 0's block scales are torch\.float16"):
        multi_linear(x, [Fp8Weight(fp8.weight, fp8.scale.float().half())], impl=impl)
    with pytest.raises(TypeError, match=r"weight 0 is torch\.float32 on .*, needs torch\.float8_e4m3fn"):
        multi_linear(x, [Fp8Weight(fp8.weight.float(), fp8.scale)], impl=impl)
    with pytest.raises(ValueError, match=r"weight 0 \[200, 299\] is not \[N, 300\]"):
        multi_linear(x, [Fp8Weight(fp8.weight[:, :299].contiguous(), fp8.scale)], impl=impl)
    with pytest.raises(ValueError, match="weight 0's block scales must be contiguous"):
        multi_linear(x, [Fp8Weight(fp8.weight, fp8.scale.T.contiguous().T)], impl=impl)


def test_fp8_weights_need_whole_scale_block_steps(device: torch.device) -> None:
    x, weights = _mixed(1, 300, torch.float32, ("e8m0", "e8m0"), device)
    with pytest.raises(ValueError, match="block_k a multiple of 128 for FP8 weights"):
        multi_linear_triton(x, _as_pairs(weights), tiles=MultiTiles(block_n=8, block_k=64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("ns", [_CSA_NS, _HCA_NS], ids=["csa", "hca"])
def test_flash_sets_on_cuda(ns: tuple[int, ...], rows: int) -> None:
    """A CSA or HCA layer's projections of its 4096-wide input, bf16, in one launch."""
    x, weights = _operands(rows, ns, 4096, torch.bfloat16, torch.device("cuda"), seed=rows)
    _assert_close(multi_linear(x, weights, impl="triton"), x, weights)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("ns", [_CSA_NS, _HCA_NS], ids=["csa", "hca"])
def test_shipped_flash_sets_on_cuda(ns: tuple[int, ...], rows: int) -> None:
    """The same sets in the shipped format: `wq_a` and `wkv` FP8 with e8m0 scales, the rest bf16, one
    launch."""
    cuda = torch.device("cuda")
    x, plain = _operands(rows, ns[2:], 4096, torch.bfloat16, cuda, seed=rows)
    gen = torch.Generator().manual_seed(rows)
    weights: list[LinearWeight] = [_fp8(n, 4096, "e8m0", gen, cuda) for n in ns[:2]]
    weights += plain
    _assert_close(multi_linear(x, weights, impl="triton"), x, weights)
