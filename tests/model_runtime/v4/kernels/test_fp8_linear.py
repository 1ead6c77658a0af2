"""The FP8 block-scaled linear: the Triton kernels (the tiled GEMM and the few-row GEMV) against the
exact-dequantisation reference, on the CPU under Triton's interpreter (small ragged shapes, both scale
formats), and at V4-Flash shapes on a CUDA device.

Tolerance: every product of a bf16 activation and an e4m3 weight is exact in float32 and both paths add
them in float32, so they differ only by summation order (float32) plus the final rounding to the output
dtype: max |diff| <= 1e-5 · max |ref| for float32 inputs, <= 1e-2 · max |ref| for bfloat16 ones (one bf16
ulp is 2^-8 relative)."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.fp8_linear import fp8_linear, fp8_linear_reference, fp8_swiglu
from deepscout.model_runtime.v4.kernels.fp8_linear_gemv_triton import (
    GEMV_MAX_ROWS,
    ROW_LIMIT,
    GemvTiles,
    choose_gemv_tiles,
    fp8_linear_gemv,
)
from deepscout.model_runtime.v4.kernels.fp8_linear_triton import TileConfig, choose_tiles, fp8_linear_triton
from deepscout.model_runtime.v4.weights.quant import ScaleFormat, quantize_fp8_block

_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _weight(n: int, k: int, fmt: ScaleFormat, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A quantised random weight whose blocks span several orders of magnitude (scales differ per block)."""
    spread = torch.exp2(torch.randint(-6, 6, (-(-n // 128), -(-k // 128)), generator=gen).float())
    rows = torch.arange(n) // 128
    cols = torch.arange(k) // 128
    value = torch.randn(n, k, generator=gen) * spread[rows][:, cols] * k**-0.5
    return quantize_fp8_block(value, scale_format=fmt)


def _relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float().cpu() - ref.float().cpu()).abs().max() / ref.float().abs().max())


def _manual_dequant(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Element by element, independent of `quant.py`: e8m0 bytes are powers 2^(b-127)."""
    if scale.dtype == torch.float8_e8m0fnu:
        multipliers = torch.exp2(scale.view(torch.uint8).double() - 127)
    else:
        multipliers = scale.double()
    rows = torch.arange(weight.shape[0]) // 128
    cols = torch.arange(weight.shape[1]) // 128
    return weight.double() * multipliers[rows][:, cols]


@pytest.mark.parametrize("fmt", ["e8m0", "float32"])
@pytest.mark.parametrize(("n", "k"), [(200, 300), (256, 384)])  # ragged N and K; whole blocks
def test_reference_is_the_dequantised_product(fmt: ScaleFormat, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n + k)
    weight, scale = _weight(n, k, fmt, gen)
    x = torch.randn(2, 3, k, generator=gen)
    expected = (x.double() @ _manual_dequant(weight, scale).T).float()
    ours = fp8_linear(x, weight, scale, impl="reference")
    assert ours.shape == (2, 3, n) and ours.dtype == torch.float32
    assert _relative(ours, expected) < 1e-6


@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize(("n", "k"), [(200, 300), (256, 384)])
@pytest.mark.parametrize("fmt", ["e8m0", "float32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_matches_reference(
    device: torch.device, rows: int, n: int, k: int, fmt: ScaleFormat, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(rows * 1000 + n + k)
    weight, scale = _weight(n, k, fmt, gen)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    reference = fp8_linear(x, weight, scale, impl="reference")
    ours = fp8_linear(x.to(device), weight.to(device), scale.to(device), impl="triton")
    assert ours.dtype == dtype and ours.shape == (rows, n)
    assert _relative(ours, reference) < _TOLERANCE[dtype]


@pytest.mark.parametrize(
    "tiles",
    [
        TileConfig(block_m=16, block_n=32, block_k=64, num_warps=4, num_stages=2, split_k=3),  # split-K
        TileConfig(block_m=16, block_n=256, block_k=128, num_warps=4, num_stages=2, split_k=2, group_m=2),
        TileConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3),  # prefill tiles
    ],
)
def test_explicit_tiles_match_reference(device: torch.device, tiles: TileConfig) -> None:
    """Split-K over 6 K blocks (the last one ragged), a column tile spanning two scale blocks, several row
    tiles per L2 group."""
    gen = torch.Generator().manual_seed(tiles.block_n)
    weight, scale = _weight(200, 700, "e8m0", gen)
    x = torch.randn(41, 700, generator=gen).to(torch.bfloat16)
    reference = fp8_linear_reference(x, weight, scale)
    ours = fp8_linear_triton(x.to(device)[:, None], weight.to(device), scale.to(device), tiles=tiles)
    assert ours.shape == (41, 1, 200)
    assert _relative(ours[:, 0], reference) < _TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_grouped_projection_is_one_linear_per_group(device: torch.device, impl: str) -> None:
    gen = torch.Generator().manual_seed(3)
    groups, k = 3, 160
    weight, scale = _weight(groups * 128, k, "e8m0", gen)
    x = torch.randn(2, 5, groups, k, generator=gen)
    per_group = torch.stack(
        [fp8_linear(x[..., g, :], weight[g * 128 : (g + 1) * 128], scale[g : g + 1], impl="reference")
         for g in range(groups)],
        dim=-2,
    )  # fmt: skip
    on = (x.to(device), weight.to(device), scale.to(device))
    ours = fp8_linear(*on, impl=impl, groups=groups)  # type: ignore[arg-type]
    assert ours.shape == (2, 5, groups, 128)
    assert _relative(ours, per_group) < _TOLERANCE[torch.float32]


def test_e8m0_scales_decode_in_the_kernel_as_in_quant(device: torch.device) -> None:
    """Row m of x picks the first column of K block m, so y[m, :] is that block's scale (weight all ones);
    byte 255 (NaN) poisons every output, as in the reference."""
    stored = torch.tensor([[1, 60, 127, 128, 200, 254]], dtype=torch.uint8)
    blocks = stored.shape[1]
    weight = torch.ones(8, 128 * blocks).to(torch.float8_e4m3fn)
    x = torch.zeros(blocks, 128 * blocks)
    x[torch.arange(blocks), torch.arange(blocks) * 128] = 1.0
    on = (x.to(device), weight.to(device))
    ours = fp8_linear(*on, stored.view(torch.float8_e8m0fnu).to(device), impl="triton").cpu()
    assert torch.equal(ours, torch.exp2(stored[0].float() - 127)[:, None].expand(blocks, 8))
    stored[0, 2] = 255
    poisoned = fp8_linear(*on, stored.view(torch.float8_e8m0fnu).to(device), impl="triton")
    assert bool(poisoned.isnan().all())


def test_empty_input_and_bad_operands(device: torch.device) -> None:
    weight, scale = _weight(64, 128, "e8m0", torch.Generator().manual_seed(0))
    empty = fp8_linear(torch.zeros(0, 128, device=device), weight.to(device), scale.to(device), impl="triton")
    assert empty.shape == (0, 64)
    x = torch.zeros(2, 128)
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        fp8_linear(x, weight.float(), scale, impl="reference")
    with pytest.raises(ValueError, match="needs block scales"):
        fp8_linear(x, weight, scale[:, :0], impl="reference")
    with pytest.raises(ValueError, match="does not end in the weight's K"):
        fp8_linear(torch.zeros(2, 96), weight, scale, impl="reference")
    with pytest.raises(TypeError, match="bfloat16 or float32"):
        fp8_linear(x.half(), weight, scale, impl="reference")
    with pytest.raises(ValueError, match="grouped FP8 linear"):
        fp8_linear(x[:, None], weight, scale, impl="reference", groups=2)


def test_split_k_must_divide_the_k_blocks() -> None:
    weight, scale = _weight(64, 640, "e8m0", torch.Generator().manual_seed(0))
    tiles = TileConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=2, split_k=2)
    with pytest.raises(ValueError, match="split_k the 5 K blocks"):
        fp8_linear_triton(torch.zeros(1, 1, 640), weight, scale, tiles=tiles)


def test_tiles_follow_the_rows() -> None:
    decode = choose_tiles(1, 1024, 4096, n_sms=132)  # wq_a at decode: 16 column tiles alone under-fill
    assert decode.block_m == 16 and decode.split_k > 1
    assert 16 * decode.split_k >= 132 and 32 % decode.split_k == 0
    assert choose_tiles(1, 32768, 1024, n_sms=132).split_k == 1  # wq_b: 512 column tiles fill the GPU
    prefill = choose_tiles(4096, 1024, 4096, n_sms=132)
    assert (prefill.block_m, prefill.block_n, prefill.split_k) == (128, 128, 1)


@pytest.mark.parametrize("rows", [1, 2, 3, ROW_LIMIT])
@pytest.mark.parametrize(("n", "k", "groups"), [(200, 300, 1), (384, 200, 3)])  # ragged K, ragged N; grouped
@pytest.mark.parametrize("fmt", ["e8m0", "float32"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gemv_matches_reference(
    device: torch.device, rows: int, n: int, k: int, groups: int, fmt: ScaleFormat, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(rows * 1000 + n + k)
    weight, scale = _weight(n, k, fmt, gen)
    x = torch.randn(rows, groups, k, generator=gen).to(dtype)
    reference = fp8_linear_reference(x if groups > 1 else x[:, 0], weight, scale, groups=groups)
    ours = fp8_linear_gemv(x.to(device), weight.to(device), scale.to(device), groups=groups)
    assert ours.dtype == dtype and ours.shape == (rows, groups, n // groups)
    assert _relative(ours.view_as(reference), reference) < _TOLERANCE[dtype]


@pytest.mark.parametrize(
    "tiles",
    [
        GemvTiles(block_n=1, block_k=512),
        GemvTiles(block_n=16, block_k=256),
        GemvTiles(block_n=64, block_k=1024),
    ],
)
def test_gemv_explicit_tiles_match_reference(device: torch.device, tiles: GemvTiles) -> None:
    """A column per program, a last column block past N, a step wider than all of K (700: the last K block
    ragged)."""
    gen = torch.Generator().manual_seed(tiles.block_n)
    weight, scale = _weight(72, 700, "e8m0", gen)
    x = torch.randn(5, 700, generator=gen).to(torch.bfloat16)
    reference = fp8_linear_reference(x, weight, scale)
    ours = fp8_linear_gemv(x.to(device)[:, None], weight.to(device), scale.to(device), tiles=tiles)
    assert ours.shape == (5, 1, 72)
    assert _relative(ours[:, 0], reference) < _TOLERANCE[torch.bfloat16]


def test_triton_impl_takes_the_gemv_up_to_its_rows(device: torch.device) -> None:
    """`fp8_linear` gives exactly the GEMV's output up to `GEMV_MAX_ROWS` rows (any leading dims), the tiled
    GEMM's above."""
    gen = torch.Generator().manual_seed(5)
    weight, scale = (t.to(device) for t in _weight(128, 256, "e8m0", gen))
    for rows, product in ((GEMV_MAX_ROWS, fp8_linear_gemv), (GEMV_MAX_ROWS + 1, fp8_linear_triton)):
        x = torch.randn(rows, 256, generator=gen).to(device)
        ours = fp8_linear(x.view(1, rows, 256), weight, scale, impl="triton")
        assert ours.shape == (1, rows, 128)
        assert torch.equal(ours[0], product(x[:, None], weight, scale)[:, 0])


def test_gemv_refuses_bad_rows_and_tiles() -> None:
    weight, scale = _weight(64, 128, "e8m0", torch.Generator().manual_seed(0))
    assert fp8_linear_gemv(torch.zeros(0, 1, 128), weight, scale).shape == (0, 1, 64)
    with pytest.raises(ValueError, match=f"at most {ROW_LIMIT} rows"):
        fp8_linear_gemv(torch.zeros(ROW_LIMIT + 1, 1, 128), weight, scale)
    with pytest.raises(ValueError, match="power-of-two block_n"):
        fp8_linear_gemv(torch.zeros(1, 1, 128), weight, scale, tiles=GemvTiles(block_n=3, block_k=128))
    with pytest.raises(ValueError, match="power-of-two block_n"):
        fp8_linear_gemv(torch.zeros(1, 1, 128), weight, scale, tiles=GemvTiles(block_n=4, block_k=384))


def test_gemv_tiles_fill_the_device() -> None:
    """On 132 multiprocessors every V4-Flash linear gets at least 4 programs each (wkv's 512 columns one
    per program), fewer columns per program the smaller N, and about 8 KiB of weight a step."""
    for n, k, groups in (*_FLASH_SHAPES.values(), *_CONCATENATED_SHAPES.values()):
        tiles = choose_gemv_tiles(n // groups, k, groups=groups, n_sms=132)
        assert groups * -(-n // groups // tiles.block_n) >= 4 * 132 or tiles.block_n == 1
        k_cover = 128 * (1 << (-(-k // 128) - 1).bit_length())  # K in whole blocks, a power-of-two count
        assert tiles.block_k == min(max(128, 8192 // tiles.block_n), k_cover)
    wkv, wq_b = (
        choose_gemv_tiles(512, 4096, groups=1, n_sms=132),
        choose_gemv_tiles(32768, 1024, groups=1, n_sms=132),
    )
    assert (wkv.block_n, wkv.block_k) == (1, 4096) and (wq_b.block_n, wq_b.block_k) == (32, 256)
    assert choose_gemv_tiles(512, 300, groups=1, n_sms=132).block_k == 512  # 3 K blocks: one step of 4


_FLASH_SHAPES = {  # (N, K, groups) of the V4-Flash FP8 linears
    "attn.wq_a": (1024, 4096, 1),
    "attn.wq_b": (32768, 1024, 1),
    "attn.wkv": (512, 4096, 1),
    "attn.wo_a": (8192, 4096, 8),
    "attn.wo_b": (4096, 8192, 1),
    "attn.indexer.wq_b": (8192, 1024, 1),
    "shared_experts.w1": (2048, 4096, 1),
    "shared_experts.w2": (4096, 2048, 1),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rows", [1, 8, 2048])
@pytest.mark.parametrize("name", list(_FLASH_SHAPES))
def test_flash_shapes_on_cuda(name: str, rows: int) -> None:
    """bf16 activations at V4-Flash shapes, e8m0 scales, against the reference (prints the achieved rates)."""
    n, k, groups = _FLASH_SHAPES[name]
    gen = torch.Generator(device="cuda").manual_seed(rows)
    value = torch.randn(n, k, generator=gen, device="cuda") * k**-0.5
    weight, scale = quantize_fp8_block(value, scale_format="e8m0")
    del value
    shape = (rows, groups, k) if groups > 1 else (rows, k)
    x = torch.randn(shape, generator=gen, device="cuda").bfloat16()
    ours = fp8_linear(x, weight, scale, impl="triton", groups=groups)
    reference = fp8_linear(x, weight, scale, impl="reference", groups=groups)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        fp8_linear(x, weight, scale, impl="triton", groups=groups)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 20 / 1000
    tb_per_s, tflop_per_s = weight.numel() / seconds / 1e12, 2 * rows * n * k / seconds / 1e12
    print(f"{name} M={rows}: {seconds * 1e6:.1f} us, weight {tb_per_s:.2f} TB/s, {tflop_per_s:.1f} TFLOP/s")
    assert _relative(ours, reference) < _TOLERANCE[torch.bfloat16]


_CONCATENATED_SHAPES = {  # projections of one input side by side in one weight
    "attn.wq_a+wkv": (1536, 4096, 1),
    "shared_experts.w1+w3": (4096, 4096, 1),
}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rows", [1, 2, 4, 8])
@pytest.mark.parametrize("name", [*_FLASH_SHAPES, *_CONCATENATED_SHAPES])
def test_gemv_flash_shapes_on_cuda(name: str, rows: int) -> None:
    """The GEMV at V4-Flash shapes, bf16 activations, e8m0 scales, against the reference (tolerance as on
    the CPU: max |diff| <= 1e-2 · max |ref|)."""
    n, k, groups = {**_FLASH_SHAPES, **_CONCATENATED_SHAPES}[name]
    gen = torch.Generator(device="cuda").manual_seed(rows)
    value = torch.randn(n, k, generator=gen, device="cuda") * k**-0.5
    weight, scale = quantize_fp8_block(value, scale_format="e8m0")
    del value
    x = torch.randn(rows, groups, k, generator=gen, device="cuda").bfloat16()
    ours = fp8_linear_gemv(x, weight, scale, groups=groups)
    reference = fp8_linear_reference(x if groups > 1 else x[:, 0], weight, scale, groups=groups)
    assert ours.dtype == torch.bfloat16 and ours.shape == (rows, groups, n // groups)
    assert _relative(ours.view_as(reference), reference) < _TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("rows", [1, 2, 3])  # 1, 2: one GEMV launch reading both weights; 3: two products
@pytest.mark.parametrize(("n", "k", "limit"), [(200, 300, 0.0), (256, 384, 0.3)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_swiglu_of_two_projections_matches_reference(
    device: torch.device, rows: int, n: int, k: int, limit: float, dtype: torch.dtype
) -> None:
    """The shared expert's first half: the SwiGLU of the gate and up products (clamped when limit > 0)."""
    gen = torch.Generator().manual_seed(rows + n + k)
    gate, up = _weight(n, k, "e8m0", gen), _weight(n, k, "e8m0", gen)
    x = torch.randn(rows, k, generator=gen).to(dtype)
    g, u = (fp8_linear_reference(x.double(), *w).float() for w in (gate, up))
    if limit:
        g, u = g.clamp(max=limit), u.clamp(-limit, limit)
    exact = torch.nn.functional.silu(g) * u
    reference = fp8_swiglu(x, gate, up, limit, impl="reference")
    on_device = [t.to(device) for t in (*gate, *up)]
    ours = fp8_swiglu(x.to(device), tuple(on_device[:2]), tuple(on_device[2:]), limit, impl="triton")
    assert ours.dtype == dtype and ours.shape == (rows, n)
    # bf16: the reference rounds the products and each activation op; the fused path only its output
    tolerance = 5e-5 if dtype == torch.float32 else 2e-2
    assert _relative(reference, exact) < tolerance and _relative(ours, exact) < tolerance
    if limit:
        assert float(ours.float().abs().max()) <= limit * 1.01  # |silu(min(g, l))| <= l, |clamp(u)| <= l


def test_swiglu_rejects_mismatched_projections() -> None:
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="SwiGLU gate and up weights differ"):
        fp8_swiglu(torch.randn(1, 256), _weight(128, 256, "e8m0", gen), _weight(256, 256, "e8m0", gen), 0.0,
                   impl="triton")  # fmt: skip
