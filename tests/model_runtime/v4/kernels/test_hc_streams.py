"""The fused mHC stream passes (premix, collapse with its norm, merge) against their PyTorch references, on
random streams: small widths under the interpreter (or the GPU), and the real width on a GPU.

Tolerances: every path sums in float32, only the order differs (the slices of the hc·D axis), so float32
results agree to a few ulps of the largest value; a bfloat16 collapse may round to the neighbouring
bfloat16 value.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from deepscout.model_runtime.v4.kernels.hc_merge_collapse_triton import merge_collapse_fuses
from deepscout.model_runtime.v4.kernels.hc_streams import (
    MERGE_COLLAPSE_MAX_ROWS,
    hc_collapse,
    hc_merge,
    hc_merge_collapse,
    hc_merge_premix,
    hc_premix,
)

HC, MIX, EPS = 4, 24, 1e-6


def _streams(n: int, dim: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "streams": torch.randn(n, HC, dim, generator=g) * 3,
        "fn": torch.randn(MIX, HC * dim, generator=g) * dim**-0.5,
        "scale": torch.rand(3, generator=g) + 0.5,
        "base": torch.randn(MIX, generator=g),
        "post": 2 * torch.rand(n, HC, generator=g),
        "comb": torch.softmax(torch.randn(n, HC, HC, generator=g), dim=-1),
        "block_out": torch.randn(n, dim, generator=g),
    }
    return {name: t.to(device) for name, t in tensors.items()}


def _close(got: torch.Tensor, want: torch.Tensor, rel: float) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = want.float().abs().max().clamp(min=1.0)
    assert float((got.float() - want.float()).abs().max()) <= rel * float(scale)


def _collapse(t: dict[str, torch.Tensor], fn: torch.Tensor, weight: torch.Tensor, **kw: Any) -> torch.Tensor:
    logits = hc_premix(t["streams"], fn, impl=kw["impl"])
    return hc_collapse(
        t["streams"], logits, t["scale"], t["base"], weight, mix_norm_eps=EPS, hc_eps=EPS, eps=EPS, **kw
    )


# D 16: the hc·D axis is one K block (one slice, as in prefill); D 64/96: split slices, a ragged D block.
@pytest.mark.parametrize("dim", [16, 64, 96])
@pytest.mark.parametrize("n_tokens", [1, 3, 70])
def test_premix_matches_the_normed_projection(device: torch.device, n_tokens: int, dim: int) -> None:
    t = _streams(n_tokens, dim, device, seed=n_tokens + dim)
    x = t["streams"].flatten(1)
    for fn in (t["fn"], t["fn"][:HC]):  # the sub-blocks' 24 logits, the hyper-head's hc
        want = (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + EPS)) @ fn.t()
        for impl in ("reference", "triton"):
            logits = hc_premix(t["streams"], fn, impl=impl)
            _close(logits.logits(EPS), want, 1e-5)
        assert logits.splits > 1 or n_tokens > 16 or dim == 16  # decode shapes split the axis


@pytest.mark.parametrize("dim", [64, 96])
@pytest.mark.parametrize("n_tokens", [1, 3, 70])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_collapse_matches_reference(
    device: torch.device, n_tokens: int, dim: int, out_dtype: torch.dtype
) -> None:
    """The pre weights from the logits, the collapse, and the sub-block's RMS norm after it, in one
    launch."""
    t = _streams(n_tokens, dim, device, seed=n_tokens + dim)
    weight = torch.rand(dim, generator=torch.Generator().manual_seed(dim)).to(device) + 0.5
    want = _collapse(t, t["fn"], weight, out_dtype=out_dtype, impl="reference")
    for fn in (t["fn"], t["fn"][:HC]):  # pre weights first in the 24 logits and in the head's hc
        got = _collapse(t, fn, weight, out_dtype=out_dtype, impl="triton")
        _close(got, want, 1e-5 if out_dtype == torch.float32 else 2**-7)
    logits = hc_premix(t["streams"], t["fn"], impl="reference").logits(EPS)
    pre = torch.sigmoid(logits[:, :HC] * t["scale"][0] + t["base"][:HC]) + EPS
    collapsed = (pre[..., None] * t["streams"]).sum(1)
    normed = collapsed * torch.rsqrt(collapsed.square().mean(-1, keepdim=True) + EPS) * weight
    _close(want, normed.to(out_dtype), 1e-6 if out_dtype == torch.float32 else 2**-7)


@pytest.mark.parametrize("dim", [64, 96])
@pytest.mark.parametrize("n_tokens", [1, 3, 70])
@pytest.mark.parametrize("block_dtype", [torch.float32, torch.bfloat16])
def test_merge_matches_reference(
    device: torch.device, n_tokens: int, dim: int, block_dtype: torch.dtype
) -> None:
    t = _streams(n_tokens, dim, device, seed=n_tokens + dim)
    args = (t["block_out"].to(block_dtype), t["streams"], t["post"], t["comb"])
    _close(hc_merge(*args, impl="triton"), hc_merge(*args, impl="reference"), 1e-6)


# 1 and 3 tokens: one launch (D 96: a ragged last block); 20: past MERGE_PREMIX_MAX_ROWS, two launches
@pytest.mark.parametrize("dim", [64, 96])
@pytest.mark.parametrize("n_tokens", [1, 3, 20])
def test_merge_premix_matches_merge_then_premix(device: torch.device, n_tokens: int, dim: int) -> None:
    t = _streams(n_tokens, dim, device, seed=n_tokens + dim)
    args = (t["block_out"], t["streams"], t["post"], t["comb"])
    want = hc_merge(*args, impl="reference")
    for fn in (t["fn"], t["fn"][:HC]):  # the next sub-block's 24 logits, the hyper-head's hc
        logits_want = hc_premix(want, fn, impl="reference").logits(EPS)
        for impl in ("reference", "triton"):
            out, logits = hc_merge_premix(*args, fn, impl=impl)
            _close(out, want, 1e-6)
            _close(logits.logits(EPS), logits_want, 1e-5)


def _merge_collapse_case(
    t: dict[str, torch.Tensor], weight: torch.Tensor, arrivals: torch.Tensor, impl: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(new streams, their finished logits, the collapse) of `hc_merge_collapse` on `t`."""
    out, logits, collapsed = hc_merge_collapse(
        t["block_out"],
        t["streams"],
        t["post"],
        t["comb"],
        t["fn"],
        t["scale"],
        t["base"],
        weight,
        arrivals=arrivals,
        mix_norm_eps=EPS,
        hc_eps=EPS,
        eps=EPS,
        out_dtype=torch.bfloat16,
        impl=impl,  # type: ignore[arg-type]
    )
    return out, logits.logits(EPS), collapsed


# 1 and 3 tokens: one launch on a GPU (D 96: a ragged last block); 20: past the row limit, two launches
@pytest.mark.parametrize("dim", [64, 96])
@pytest.mark.parametrize("n_tokens", [1, 3, 20])
def test_merge_collapse_matches_merge_premix_then_collapse(
    device: torch.device, n_tokens: int, dim: int
) -> None:
    """The new streams, their logits, and the next sub-block's normed input, against the reference merge,
    premix and collapse; three calls on one counter (its programs meet at a barrier on a GPU)."""
    t = _streams(n_tokens, dim, device, seed=n_tokens + dim)
    weight = torch.rand(dim, generator=torch.Generator().manual_seed(dim)).to(device) + 0.5
    arrivals = torch.zeros(MERGE_COLLAPSE_MAX_ROWS, dtype=torch.int64, device=device)
    want = _merge_collapse_case(t, weight, arrivals, "reference")
    for _ in range(3):
        got = _merge_collapse_case(t, weight, arrivals, "triton")
        for g, w, rel in zip(got, want, (1e-6, 1e-5, 2**-7), strict=True):
            _close(g, w, rel)
    fused = merge_collapse_fuses(n_tokens, dim, device, MERGE_COLLAPSE_MAX_ROWS)
    assert fused == (device.type == "cuda" and n_tokens <= MERGE_COLLAPSE_MAX_ROWS)
    blocks = -(-dim // 32) if fused else 0
    # every program of a token arrived, once a call
    assert arrivals.tolist() == [3 * blocks if i < n_tokens else 0 for i in range(MERGE_COLLAPSE_MAX_ROWS)]


def test_merge_mixes_by_the_transposed_comb(device: torch.device) -> None:
    """Stream j receives Σ_i comb[i, j] · stream i: a one-hot comb moves stream 0 into stream 2."""
    t = _streams(2, 64, device, seed=0)
    comb = torch.zeros(2, HC, HC, device=device)
    comb[:, 0, 2] = 1.0
    post = torch.zeros(2, HC, device=device)
    for impl in ("reference", "triton"):
        out = hc_merge(t["block_out"], t["streams"], post, comb, impl=impl)
        assert torch.equal(out[:, 2], t["streams"][:, 0])
        assert not out[:, [0, 1, 3]].any()


def test_no_tokens_give_empty_results(device: torch.device) -> None:
    """A step with no tokens launches nothing and returns empty tensors of the right widths."""
    t = _streams(0, 64, device, seed=0)
    weight = torch.ones(64, device=device)
    for impl in ("reference", "triton"):
        logits = hc_premix(t["streams"], t["fn"], impl=impl)
        assert logits.logits(EPS).shape == (0, MIX)
        assert _collapse(t, t["fn"], weight, out_dtype=torch.float32, impl=impl).shape == (0, 64)
        out, after = hc_merge_premix(t["block_out"], t["streams"], t["post"], t["comb"], t["fn"], impl=impl)
        assert out.shape == (0, HC, 64) and after.logits(EPS).shape == (0, MIX)


def test_bad_shapes_raise_one_line_errors() -> None:
    t = _streams(3, 16, torch.device("cpu"), seed=0)
    with pytest.raises(ValueError, match="weight must be"):
        hc_premix(t["streams"], t["fn"][:, :-1], impl="triton")
    checks = {"mix_norm_eps": EPS, "hc_eps": EPS, "eps": EPS, "out_dtype": torch.float32, "impl": "triton"}
    few = hc_premix(t["streams"][:2], t["fn"], impl="reference")
    with pytest.raises(ValueError, match="logits of 3 tokens"):
        hc_collapse(t["streams"], few, t["scale"], t["base"], torch.ones(16), **checks)
    logits = hc_premix(t["streams"], t["fn"], impl="reference")
    with pytest.raises(ValueError, match="norm weights"):
        hc_collapse(t["streams"], logits, t["scale"], t["base"], torch.ones(15), **checks)
    with pytest.raises(ValueError, match="block output"):
        hc_merge(t["block_out"][:, :8], t["streams"], t["post"], t["comb"], impl="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("n_tokens", [1, 8, 8192])
def test_real_width_matches_reference(n_tokens: int) -> None:
    device = torch.device("cuda")
    t = _streams(n_tokens, 4096, device, seed=n_tokens)
    s = t["streams"]
    want = hc_premix(s, t["fn"], impl="reference").logits(EPS)
    _close(hc_premix(s, t["fn"], impl="triton").logits(EPS), want, 1e-5)
    weight = torch.rand(4096, device=device) + 0.5
    for out_dtype, rel in ((torch.float32, 1e-5), (torch.bfloat16, 2**-7)):
        want = _collapse(t, t["fn"], weight, out_dtype=out_dtype, impl="reference")
        _close(_collapse(t, t["fn"], weight, out_dtype=out_dtype, impl="triton"), want, rel)
    args = (t["block_out"].to(torch.bfloat16), s, t["post"], t["comb"])
    want = hc_merge(*args, impl="reference")
    _close(hc_merge(*args, impl="triton"), want, 1e-6)
    out, logits = hc_merge_premix(*args, t["fn"], impl="triton")
    _close(out, want, 1e-6)
    _close(logits.logits(EPS), hc_premix(want, t["fn"], impl="reference").logits(EPS), 1e-5)
    if n_tokens <= MERGE_COLLAPSE_MAX_ROWS:
        arrivals = torch.zeros(MERGE_COLLAPSE_MAX_ROWS, dtype=torch.int64, device=device)
        t["block_out"] = t["block_out"].to(torch.bfloat16)
        expected = _merge_collapse_case(t, weight, arrivals, "reference")
        got = _merge_collapse_case(t, weight, arrivals, "triton")
        for g, w, rel in zip(got, expected, (1e-6, 1e-5, 2**-7), strict=True):
            _close(g, w, rel)
        fused = merge_collapse_fuses(n_tokens, 4096, device, MERGE_COLLAPSE_MAX_ROWS)
        assert fused == (n_tokens == 1)  # one launch while its programs are one wave (132 SMs: one token)
        assert arrivals[:n_tokens].tolist() == [4096 // 32 if fused else 0] * n_tokens


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_merge_collapse_replays_from_a_cuda_graph() -> None:
    """Captured once and replayed: each replay's programs meet at the same counter as eager calls between
    the replays, which then stands at the launches' program count, and every result stays the
    reference's."""
    device = torch.device("cuda")
    t, other = (_streams(1, 4096, device, seed=seed) for seed in (5, 6))
    weight = torch.rand(4096, device=device) + 0.5
    arrivals = torch.zeros(MERGE_COLLAPSE_MAX_ROWS, dtype=torch.int64, device=device)
    want = _merge_collapse_case(t, weight, arrivals, "reference")
    other_want = _merge_collapse_case(other, weight, arrivals, "reference")
    _merge_collapse_case(t, weight, arrivals, "triton")  # compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = _merge_collapse_case(t, weight, arrivals, "triton")
    for _ in range(5):
        graph.replay()
        other_got = _merge_collapse_case(other, weight, arrivals, "triton")
    torch.cuda.synchronize()
    for g, w, rel in zip((*got, *other_got), (*want, *other_want), (1e-6, 1e-5, 2**-7) * 2, strict=True):
        _close(g, w, rel)
    assert arrivals.tolist() == [11 * 128] + [0] * (MERGE_COLLAPSE_MAX_ROWS - 1)
