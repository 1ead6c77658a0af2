"""The grouped-MoE kernel on MXFP4 experts (W4A16) against the reference on the same MXFP4 stacks, and the
reference against the bf16 path on the dequantised stacks, for the tiled kernels and the decode path (a
matrix-vector product per pair): on the CPU under Triton's interpreter (small shapes), and at V4-Flash width
on a CUDA device with host syncs forbidden (and, for the decode path, replayed in a CUDA graph)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels import grouped_moe_mxfp4_gemv_gluon as gluon_module
from deepscout.model_runtime.v4.kernels import grouped_moe_mxfp4_gemv_triton as gemv_module
from deepscout.model_runtime.v4.kernels import grouped_moe_mxfp4_triton as tiled_module
from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice
from deepscout.model_runtime.v4.kernels.grouped_moe import grouped_moe
from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_gluon import grouped_moe_mxfp4_gemv_gluon
from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_gemv_triton import (
    GEMV_MAX_PAIRS,
    GemvTiles,
    _pair_f32,
    grouped_moe_mxfp4_gemv,
)
from deepscout.model_runtime.v4.kernels.grouped_moe_mxfp4_triton import _e2m1, _e8m0, grouped_moe_mxfp4_triton
from deepscout.model_runtime.v4.kernels.grouped_moe_triton import TileConfig
from deepscout.model_runtime.v4.kernels.mxfp4_stacks import Mxfp4ExpertStacks
from deepscout.model_runtime.v4.weights.quant import decode_scales, unpack_e2m1

_PREFILL_TILES = TileConfig(block_m=32, gate_up_n=32, down_n=32, block_k=64, num_warps=4, num_stages=2)


def _random_mxfp4(
    experts: int, hidden: int, inter: int, gen: torch.Generator, device: torch.device | None = None
) -> Mxfp4ExpertStacks:
    """Every byte pattern (every e2m1 code in both nibbles) equally likely; scale bytes 118..123, so the
    weights are of magnitude ~2^-6."""

    def packed(rows: int, cols: int) -> torch.Tensor:
        shape = (experts, rows, cols // 2)
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8, device=device)

    def scale(rows: int, cols: int) -> torch.Tensor:
        shape = (experts, rows, cols // 32)
        return torch.randint(118, 124, shape, generator=gen, dtype=torch.uint8, device=device)

    shapes = ((inter, hidden), (hidden, inter), (inter, hidden))
    return Mxfp4ExpertStacks(*(packed(*s) for s in shapes), *(scale(*s) for s in shapes))


def _routing(
    tokens: int, top_k: int, experts: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    indices = torch.stack([torch.randperm(experts, generator=gen)[:top_k] for _ in range(tokens)])
    return torch.rand(tokens, top_k, generator=gen), indices


def _relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


@triton.jit
def _decode_bytes_kernel(BYTES, CODES, SCALES):
    byte = tl.load(BYTES + tl.arange(0, 256)).to(tl.int32)
    tl.store(CODES + 2 * tl.arange(0, 256), _e2m1(byte & 15))
    tl.store(CODES + 2 * tl.arange(0, 256) + 1, _e2m1(byte >> 4))
    tl.store(SCALES + tl.arange(0, 256), _e8m0(byte))


def test_the_kernels_decode_every_byte_as_the_checkpoint_format(device: torch.device) -> None:
    """Both nibbles of every byte as e2m1 values, and every e8m0 scale byte (0: 2^-127, 255: NaN)."""
    every = torch.arange(256, dtype=torch.uint8, device=device)
    values = torch.empty(512, device=device)
    scales = torch.empty(256, device=device)
    _decode_bytes_kernel[(1,)](every, values, scales)
    assert torch.equal(values.cpu(), unpack_e2m1(every.cpu()))
    torch.testing.assert_close(scales.cpu(), decode_scales(every.cpu()), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("tokens", "top_k", "hidden", "inter", "limit", "tiles"),
    [
        (1, 2, 128, 64, 10.0, None),  # one decode token
        (1, 6, 256, 128, 0.0, None),
        (5, 6, 128, 128, 1.0, None),  # clamps active
        (5, 2, 256, 64, 0.0, None),
        (40, 6, 256, 64, 1.0, None),  # most experts take several pairs (tiles of 16 rows)
        (40, 2, 128, 128, 0.0, _PREFILL_TILES),  # reduction in several steps of 64 columns
        (40, 6, 160, 96, 1.0, _PREFILL_TILES),  # a ragged last reduction step (hidden, inter % 64 = 32)
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_reference(
    device: torch.device,
    tokens: int,
    top_k: int,
    hidden: int,
    inter: int,
    limit: float,
    tiles: TileConfig | None,
    dtype: torch.dtype,
) -> None:
    gen = torch.Generator().manual_seed(tokens * 1000 + hidden + inter + top_k)
    stacks = _random_mxfp4(8, hidden, inter, gen)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    weights, indices = _routing(tokens, top_k, 8, gen)
    oracle = grouped_moe(x.float(), weights, indices, stacks, limit, impl="reference")
    on = stacks.map(lambda t: t.to(device))
    ours = grouped_moe_mxfp4_triton(
        x.to(device), weights.to(device), indices.to(device), on, limit, tiles=tiles
    ).cpu()
    assert ours.dtype == dtype and ours.shape == x.shape
    assert _relative(ours, oracle) < (1e-5 if dtype == torch.float32 else 1e-2)
    if dtype == torch.bfloat16:  # the reference in bf16 is no closer to the float32 result than we are
        reference = grouped_moe(x, weights, indices, stacks, limit, impl="reference")
        assert _relative(ours, oracle) <= 1.5 * _relative(reference, oracle) + 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_is_the_bf16_path_on_the_dequantised_stacks(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    stacks = _random_mxfp4(8, 128, 64, gen)
    x = torch.randn(40, 128, generator=gen).to(dtype)
    weights, indices = _routing(40, 6, 8, gen)
    ours = grouped_moe(x, weights, indices, stacks, 1.0, impl="reference")
    dense = grouped_moe(x, weights, indices, stacks.dequantize(dtype), 1.0, impl="reference")
    torch.testing.assert_close(ours, dense, rtol=0, atol=0)


def test_reference_dequantises_only_the_experts_present(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(8)
    stacks = _random_mxfp4(8, 64, 32, gen)
    seen: list[int] = []
    expert = Mxfp4ExpertStacks.expert

    def counted(self: Mxfp4ExpertStacks, index: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        seen.append(index)
        return expert(self, index, dtype)

    monkeypatch.setattr(Mxfp4ExpertStacks, "expert", counted)
    indices = torch.tensor([[5, 2], [2, 6]])
    grouped_moe(torch.randn(2, 64, generator=gen), torch.rand(2, 2), indices, stacks, 0.0, impl="reference")
    assert seen == [2, 5, 6]


def test_dispatch_picks_the_mxfp4_kernel_and_checks_tiles(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(9)
    stacks = _random_mxfp4(4, 64, 32, gen).map(lambda t: t.to(device))
    x = torch.randn(3, 64, generator=gen).to(device)
    weights, indices = (t.to(device) for t in _routing(3, 2, 4, gen))
    ours = grouped_moe(x, weights, indices, stacks, 1.0, impl="triton")
    reference = grouped_moe(x, weights, indices, stacks, 1.0, impl="reference")
    assert _relative(ours, reference) < 1e-5
    odd = TileConfig(block_m=16, gate_up_n=32, down_n=32, block_k=48, num_warps=4, num_stages=2)
    with pytest.raises(ValueError, match="multiple of 32"):
        grouped_moe_mxfp4_triton(x, weights, indices, stacks, 1.0, tiles=odd)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tokens", [1, 8, 512])
def test_flash_width_on_cuda_without_host_syncs(tokens: int) -> None:
    """V4-Flash's routed experts (256 experts, hidden 4096, inter 2048, top-6) in MXFP4 with bf16
    activations: the kernel runs with host syncs forbidden and matches the float32 reference."""
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    stacks = _random_mxfp4(256, 4096, 2048, gen, torch.device("cuda"))
    x = torch.randn(tokens, 4096, generator=gen, device="cuda").bfloat16()
    weights, indices = torch.rand(tokens, 256, generator=gen, device="cuda").topk(6, dim=-1)
    grouped_moe(x, weights, indices, stacks, 10.0, impl="triton")  # compile outside the guarded region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ours = grouped_moe(x, weights, indices, stacks, 10.0, impl="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    oracle = grouped_moe(x.float(), weights, indices, stacks, 10.0, impl="reference")
    reference = grouped_moe(x, weights, indices, stacks, 10.0, impl="reference")
    assert _relative(ours, oracle) < 1e-2
    assert _relative(ours, oracle) <= 1.5 * _relative(reference, oracle) + 1e-3


# --- the decode path: a matrix-vector product per (token, expert) pair -------------------------------------

_SMALL_GEMV = GemvTiles(gate_up_n=16, down_n=32, block_k=64)  # several steps each launch
_RAGGED_GEMV = GemvTiles(gate_up_n=64, down_n=64, block_k=64)  # with inter 96, hidden 160: ragged everywhere
_PREFETCH_GEMV = GemvTiles(gate_up_n=64, down_n=64, block_k=64, prefetch=not GemvTiles().prefetch)


@triton.jit
def _decode_words_kernel(WORDS, CODES):
    word = tl.load(WORDS + tl.arange(0, 64))
    out = CODES + 8 * tl.arange(0, 64)  # a word's eight codes: nibble i is column i
    low, high = _pair_f32(word, 9, 12)
    tl.store(out, low * 16384.0)
    tl.store(out + 4, high * 16384.0)
    low, high = _pair_f32(word, 5, 8)
    tl.store(out + 1, low * 16384.0)
    tl.store(out + 5, high * 16384.0)
    low, high = _pair_f32(word, 1, 4)
    tl.store(out + 2, low * 16384.0)
    tl.store(out + 6, high * 16384.0)
    low, high = _pair_f32(word, -3, 0)
    tl.store(out + 3, low * 16384.0)
    tl.store(out + 7, high * 16384.0)


def test_the_decode_path_decodes_every_nibble_as_the_checkpoint_format(device: torch.device) -> None:
    every = torch.arange(256, dtype=torch.uint8, device=device)  # as int32 words: every code in every nibble
    values = torch.empty(512, device=device)
    _decode_words_kernel[(1,)](every.view(torch.int32), values)
    assert torch.equal(values.cpu(), unpack_e2m1(every.cpu()))


def _slice_case(
    tokens: int, top_k: int, hidden: int, inter: int, held: ExpertSlice | None, gen: torch.Generator
) -> tuple[Mxfp4ExpertStacks, torch.Tensor, torch.Tensor]:
    """Stacks of the held experts (all 8 without a slice) and routing over all 8 global experts."""
    stacks = _random_mxfp4(8 if held is None else held.count, hidden, inter, gen)
    weights, indices = _routing(tokens, top_k, 8, gen)
    return stacks, weights, indices


@pytest.mark.parametrize(
    ("tokens", "top_k", "hidden", "inter", "limit", "held", "tiles"),
    [
        (1, 2, 256, 128, 10.0, None, None),  # one decode token, one step each launch
        (1, 3, 256, 128, 0.0, ExpertSlice(0, 4), None),
        (3, 2, 256, 128, 1.0, ExpertSlice(4, 4), _SMALL_GEMV),  # clamps active; several steps
        (5, 3, 160, 96, 1.0, None, _RAGGED_GEMV),  # last row blocks and last steps half full
        (5, 2, 160, 96, 10.0, ExpertSlice(3, 3), _RAGGED_GEMV),
        (5, 2, 160, 96, 10.0, ExpertSlice(3, 3), _PREFETCH_GEMV),  # the other way of loading the steps
        (4, 3, 256, 128, 1.0, ExpertSlice(2, 4), GemvTiles(gate_up_n=64, down_n=64, block_k=256)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_path_matches_reference(
    device: torch.device,
    tokens: int,
    top_k: int,
    hidden: int,
    inter: int,
    limit: float,
    held: ExpertSlice | None,
    tiles: GemvTiles | None,
    dtype: torch.dtype,
) -> None:
    gen = torch.Generator().manual_seed(tokens * 1000 + hidden + inter + top_k + (held.start if held else 9))
    stacks, weights, indices = _slice_case(tokens, top_k, hidden, inter, held, gen)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    oracle = grouped_moe(x.float(), weights, indices, stacks, limit, impl="reference", experts=held)
    on = stacks.map(lambda t: t.to(device))
    routing = (x.to(device), weights.to(device), indices.to(device))
    ours = grouped_moe_mxfp4_gemv(*routing, on, limit, tiles=tiles, experts=held).cpu()
    assert ours.dtype == dtype and ours.shape == x.shape
    assert _relative(ours, oracle) < (1e-5 if dtype == torch.float32 else 1e-2)
    if dtype == torch.bfloat16:
        reference = grouped_moe(x, weights, indices, stacks, limit, impl="reference", experts=held)
        assert _relative(ours, oracle) <= 1.5 * _relative(reference, oracle) + 1e-3
    if held is not None:  # a token none of whose experts is held gets exactly zero
        elsewhere = ~((indices >= held.start) & (indices < held.stop)).any(dim=1)
        assert torch.equal(ours[elsewhere], torch.zeros_like(ours[elsewhere]))


def test_decode_path_leaves_tokens_routed_elsewhere_at_zero(device: torch.device) -> None:
    """Token 1's experts are all on another rank: its row is exactly zero (the buffers are not zeroed)."""
    gen = torch.Generator().manual_seed(11)
    held = ExpertSlice(0, 4)
    stacks = _random_mxfp4(4, 128, 64, gen).map(lambda t: t.to(device))
    x = torch.randn(3, 128, generator=gen).to(device)
    indices = torch.tensor([[0, 5], [6, 7], [3, 1]], device=device)
    weights = torch.rand(3, 2, generator=gen).to(device)
    ours = grouped_moe_mxfp4_gemv(x, weights, indices, stacks, 1.0, experts=held)
    reference = grouped_moe(x, weights, indices, stacks, 1.0, impl="reference", experts=held)
    assert torch.equal(ours[1], torch.zeros_like(ours[1]))
    assert _relative(ours, reference) < 1e-5


def test_dispatch_takes_the_decode_path_for_few_pairs(
    device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = torch.Generator().manual_seed(12)
    stacks = _random_mxfp4(8, 64, 32, gen).map(lambda t: t.to(device))
    taken: list[str] = []
    for name in ("grouped_moe_mxfp4_gemv", "grouped_moe_mxfp4_triton"):
        module = gemv_module if name.endswith("gemv") else tiled_module
        original = getattr(module, name)

        def spy(*args: object, _name: str = name, _original: object = original, **kwargs: object) -> object:
            taken.append(_name)
            return _original(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(module, name, spy)
    for tokens in (GEMV_MAX_PAIRS // 2, GEMV_MAX_PAIRS // 2 + 1):  # top-2: 32 pairs, then 34
        x = torch.randn(tokens, 64, generator=gen).to(device)
        weights, indices = (t.to(device) for t in _routing(tokens, 2, 8, gen))
        ours = grouped_moe(x, weights, indices, stacks, 1.0, impl="triton")
        assert _relative(ours, grouped_moe(x, weights, indices, stacks, 1.0, impl="reference")) < 1e-5
    assert taken == ["grouped_moe_mxfp4_gemv", "grouped_moe_mxfp4_triton"]


@pytest.mark.parametrize("tokens", [2, 24], ids=["decode", "tiled"])
def test_a_ranks_part_adds_the_shared_output_in_float32(device: torch.device, tokens: int) -> None:
    """An expert-parallel rank's MoE part: its held pairs summed, plus the shared expert's output, in
    float32 for the all-reduce, from the launch that sums the pairs; as the reference's sum, add and cast."""
    gen = torch.Generator().manual_seed(17 + tokens)
    held = ExpertSlice(4, 4)
    stacks, weights, indices = _slice_case(tokens, 2, 128, 64, held, gen)
    x = torch.randn(tokens, 128, generator=gen).bfloat16()
    shared = torch.randn(tokens, 128, generator=gen).bfloat16()
    want = grouped_moe(
        x, weights, indices, stacks, 1.0, impl="reference", experts=held, add=shared, out_dtype=torch.float32
    )
    on = stacks.map(lambda t: t.to(device))
    routing = (x.to(device), weights.to(device), indices.to(device))
    got = grouped_moe(
        *routing, on, 1.0, impl="triton", experts=held, add=shared.to(device), out_dtype=torch.float32
    )
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert _relative(got.cpu(), want) < 1e-2  # the reference rounds the routed sum to bf16 before adding
    elsewhere = ~((indices >= held.start) & (indices < held.stop)).any(dim=1)
    assert torch.equal(got.cpu()[elsewhere], shared[elsewhere].float())  # nothing held: the shared output


@pytest.mark.parametrize("tiles", [GemvTiles(block_k=16), GemvTiles(block_k=96), GemvTiles(down_n=24)])
def test_decode_path_rejects_bad_tiles(tiles: GemvTiles) -> None:
    gen = torch.Generator().manual_seed(13)
    stacks = _random_mxfp4(4, 64, 32, gen)
    weights, indices = _routing(1, 2, 4, gen)
    with pytest.raises(ValueError, match="powers of two"):
        grouped_moe_mxfp4_gemv(torch.randn(1, 64), weights, indices, stacks, 1.0, tiles=tiles)


_FLASH_SLICES = [None, ExpertSlice(0, 128), ExpertSlice(128, 128)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("held", _FLASH_SLICES, ids=["all", "rank0of2", "rank1of2"])
@pytest.mark.parametrize("tokens", [1, 8])
def test_decode_path_at_flash_width_without_host_syncs(tokens: int, held: ExpertSlice | None) -> None:
    """V4-Flash's routed experts (256, hidden 4096, inter 2048, top-6; or a rank's 128 of them) in MXFP4
    with bf16 activations: the decode path runs with host syncs forbidden, matches the float32 reference
    and the tiled kernels."""
    gen = torch.Generator(device="cuda").manual_seed(tokens + (held.start if held else 7))
    stacks = _random_mxfp4(256 if held is None else held.count, 4096, 2048, gen, torch.device("cuda"))
    x = torch.randn(tokens, 4096, generator=gen, device="cuda").bfloat16()
    weights, indices = torch.rand(tokens, 256, generator=gen, device="cuda").topk(6, dim=-1)
    args = (x, weights, indices, stacks, 10.0)
    grouped_moe_mxfp4_gemv(*args, experts=held)  # compile outside the guarded region
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ours = grouped_moe(*args, impl="triton", experts=held)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    oracle = grouped_moe(x.float(), weights, indices, stacks, 10.0, impl="reference", experts=held)
    reference = grouped_moe(*args, impl="reference", experts=held)
    tiled = grouped_moe_mxfp4_triton(*args, experts=held)
    assert _relative(ours, oracle) < 1e-2
    assert _relative(ours, oracle) <= 1.5 * _relative(reference, oracle) + 1e-3
    assert _relative(ours, tiled) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decode_path_replays_in_a_cuda_graph() -> None:
    """One decode token on rank 0 of 2 captured once, replayed on new activations and routing: the same
    output as an eager call."""
    gen = torch.Generator(device="cuda").manual_seed(21)
    held = ExpertSlice(0, 128)
    stacks = _random_mxfp4(128, 4096, 2048, gen, torch.device("cuda"))
    x = torch.randn(1, 4096, generator=gen, device="cuda").bfloat16()
    weights, indices = torch.rand(1, 256, generator=gen, device="cuda").topk(6, dim=-1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        grouped_moe(x, weights, indices, stacks, 10.0, impl="triton", experts=held)  # compile first
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = grouped_moe(x, weights, indices, stacks, 10.0, impl="triton", experts=held)
    x.copy_(torch.randn(1, 4096, generator=gen, device="cuda").bfloat16())
    new_weights, new_indices = torch.rand(1, 256, generator=gen, device="cuda").topk(6, dim=-1)
    weights.copy_(new_weights)
    indices.copy_(new_indices)
    graph.replay()
    eager = grouped_moe(x, weights, indices, stacks, 10.0, impl="triton", experts=held)
    assert torch.equal(captured, eager)
    oracle = grouped_moe(x.float(), weights, indices, stacks, 10.0, impl="reference", experts=held)
    assert _relative(captured, oracle) < 1e-2


# --- the decode path's Gluon kernels (CUDA, bfloat16 activations) ------------------------------------------


@pytest.mark.parametrize(("hidden", "inter"), [(4096, 2048), (160, 96)], ids=["flash", "ragged"])
def test_gluon_kernels_build_for_hopper_without_shared_memory(hidden: int, inter: int) -> None:
    """Both kernels compile for sm_90 (on any machine: Triton ships ptxas) at V4-Flash's shape and at a
    ragged one, with no shared memory, as designed (every step's products and sums stay in their threads),
    and with the float16-pair conversion and multiply-add in their PTX."""
    probe = Path(__file__).with_name("gluon_build_probe.py")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, str(probe), str(hidden), str(inter)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    reports = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert [r["kernel"] for r in reports] == ["gate_up", "down"]
    assert all(r["shared"] == 0 and r["f16_pairs"] for r in reports)


@pytest.mark.parametrize(
    ("tokens", "top_k", "hidden", "inter", "limit", "held"),
    [
        (1, 2, 256, 128, 10.0, None),  # one step each launch, lanes shared by groups and rows
        (3, 2, 256, 128, 1.0, ExpertSlice(4, 4)),  # clamps active
        (5, 3, 160, 96, 0.0, None),  # last row blocks and last steps half full
        (2, 6, 2048, 1024, 10.0, ExpertSlice(3, 3)),  # two steps a launch in gate-up, one in down
    ],
)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gluon_kernels_match_reference(
    tokens: int, top_k: int, hidden: int, inter: int, limit: float, held: ExpertSlice | None
) -> None:
    gen = torch.Generator().manual_seed(tokens * 100 + hidden + inter)
    stacks, weights, indices = _slice_case(tokens, top_k, hidden, inter, held, gen)
    x = torch.randn(tokens, hidden, generator=gen).bfloat16()
    oracle = grouped_moe(x.float(), weights, indices, stacks, limit, impl="reference", experts=held)
    reference = grouped_moe(x, weights, indices, stacks, limit, impl="reference", experts=held)
    on = stacks.map(lambda t: t.cuda())
    ours = grouped_moe_mxfp4_gemv_gluon(
        x.cuda(), weights.cuda(), indices.cuda(), on, limit, experts=held
    ).cpu()
    assert ours.dtype == torch.bfloat16 and ours.shape == x.shape
    assert _relative(ours, oracle) < 1e-2
    assert _relative(ours, oracle) <= 1.5 * _relative(reference, oracle) + 1e-3
    if held is not None:  # a token none of whose experts is held gets exactly zero
        elsewhere = ~((indices >= held.start) & (indices < held.stop)).any(dim=1)
        assert torch.equal(ours[elsewhere], torch.zeros_like(ours[elsewhere]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gluon_kernels_keep_activations_of_any_magnitude() -> None:
    """Activations whose 32-column groups range from 1e-20 to 1e12 in magnitude (the SwiGLU products stay
    finite in float32), a group all zero and one mixing magnitudes 1e6 apart: each group's float16 sums
    are scaled to it, so the result matches the float32 reference as at ordinary magnitudes (float16
    alone overflows at 65504)."""
    gen = torch.Generator().manual_seed(31)
    hidden, inter = 1024, 256
    stacks, weights, indices = _slice_case(1, 4, hidden, inter, None, gen)
    magnitudes = 10.0 ** torch.randint(-20, 13, (hidden // 32, 1), generator=gen).float()
    x = torch.randn(hidden // 32, 32, generator=gen) * magnitudes
    x[3] = 0.0
    x[5, :16] *= 1e-6
    x = x.reshape(1, hidden).bfloat16()
    oracle = grouped_moe(x.float(), weights, indices, stacks, 0.0, impl="reference")
    on = stacks.map(lambda t: t.cuda())
    ours = grouped_moe_mxfp4_gemv_gluon(x.cuda(), weights.cuda(), indices.cuda(), on, 0.0).cpu()
    assert torch.isfinite(oracle).all() and torch.isfinite(ours).all()
    assert _relative(ours, oracle) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dispatch_takes_the_gluon_kernels_for_bfloat16_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = torch.Generator().manual_seed(32)
    stacks = _random_mxfp4(8, 256, 128, gen).map(lambda t: t.cuda())
    taken: list[torch.dtype] = []
    original = gluon_module.grouped_moe_mxfp4_gemv_gluon

    def spy(x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        taken.append(x.dtype)
        return original(x, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gluon_module, "grouped_moe_mxfp4_gemv_gluon", spy)
    weights, indices = (t.cuda() for t in _routing(2, 2, 8, gen))
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(2, 256, generator=gen).to(dtype).cuda()
        grouped_moe(x, weights, indices, stacks, 1.0, impl="triton")
    assert taken == [torch.bfloat16]
