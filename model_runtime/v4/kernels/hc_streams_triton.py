"""The Triton kernels behind `hc_premix`, `hc_collapse` and `hc_merge` with impl="triton" (contracts in
`hc_streams.py`).

Premix: a program per (block of tokens, slice of the hc·D axis) walks its slice once, accumulating
`x · fnᵀ` (float32 "ieee" dots, the mix axis padded to a power of two) and the sum of squares together.
With one slice (prefill-sized T) it scales by `rsqrt(mean(x²) + eps)` and stores the logits; decode-sized
T splits the axis so the GPU fills (`_PREMIX_PROGRAMS`), the partials `[splits, T, mix]` and sums of squares
`[splits, T]` then summed by a second launch, one program per token. The split depends only on the shapes,
so a captured CUDA graph replays it unchanged.

`premix_partials` is the first launch alone, for a consumer that sums the partials itself (the mHC
mapping kernel, `hc_mix_triton`: the premix and the mapping are two launches, not three).

Collapse: a program per token holding the whole `[D]` row, so the RMS norm that follows the collapse is
in the same launch (the row's sum of squares is the program's own). Merge: a program per (block of tokens,
block of D), each hc stream row loaded once with contiguous (vectorised) loads; it keeps the
`[tokens, hc, D-block]` output tile in registers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

_PREMIX_BLOCK_K = 64
_PREMIX_PROGRAMS = 128  # about one per SM of an H200 (132): fewer token blocks split the hc·D axis
_STREAM_BLOCK_D = 512
_MERGE_TOKENS = 2


@triton.jit
def _premix_kernel(
    X,
    FN,
    OUT,
    SUMSQ,
    n_tokens,
    n_mix,
    k_total,
    stride_x,
    stride_fn,
    eps,
    BT: tl.constexpr,
    MIXP: tl.constexpr,
    BK: tl.constexpr,
    K_SPLIT: tl.constexpr,
    SPLIT: tl.constexpr,
    PRECISION: tl.constexpr,  # "tf32x3" on tensor cores (float32-accurate), "ieee" elsewhere
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    split = tl.program_id(1)
    tokens = tl.program_id(0) * BT + tl.arange(0, BT)
    live = tokens < n_tokens
    rows = tokens.to(tl.int64)
    mixes = tl.arange(0, MIXP)
    mix_live = mixes < n_mix
    acc = tl.zeros([BT, MIXP], tl.float32)
    sumsq = tl.zeros([BT], tl.float32)
    k0 = split * K_SPLIT
    for start in range(0, K_SPLIT, BK):
        k = k0 + start + tl.arange(0, BK)
        k_live = k < k_total
        x = tl.load(
            X + rows[:, None] * stride_x + k[None, :], mask=live[:, None] & k_live[None, :], other=0.0
        )
        x = x.to(tl.float32)
        w = tl.load(
            FN + mixes[:, None] * stride_fn + k[None, :], mask=mix_live[:, None] & k_live[None, :], other=0.0
        )
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
        sumsq += tl.sum(x * x, axis=1)
    if SPLIT:
        slot = split.to(tl.int64) * n_tokens + rows
        tl.store(OUT + slot[:, None] * MIXP + mixes[None, :], acc, mask=live[:, None])
        tl.store(SUMSQ + slot, sumsq, mask=live)
    else:
        scaled = acc * tl.rsqrt(sumsq / k_total + eps)[:, None]
        tl.store(OUT + rows[:, None] * n_mix + mixes[None, :], scaled, mask=live[:, None] & mix_live[None, :])


@triton.jit
def _premix_combine_kernel(
    PART,
    SUMSQ,
    OUT,
    n_tokens,
    n_mix,
    n_splits,
    k_total,
    eps,
    SPLITS: tl.constexpr,
    MIXP: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    token = tl.program_id(0).to(tl.int64)
    splits = tl.arange(0, SPLITS)
    split_live = splits < n_splits
    mixes = tl.arange(0, MIXP)
    slot = splits.to(tl.int64) * n_tokens + token
    part = tl.load(PART + slot[:, None] * MIXP + mixes[None, :], mask=split_live[:, None], other=0.0)
    sumsq = tl.sum(tl.load(SUMSQ + slot, mask=split_live, other=0.0), axis=0)
    scaled = tl.sum(part, axis=0) * tl.rsqrt(sumsq / k_total + eps)
    tl.store(OUT + token * n_mix + mixes, scaled, mask=mixes < n_mix)


@dataclass(frozen=True)
class PremixPartials:
    """The premix's unscaled projections `part` `[splits, T, mix_pad]` and sums of squares `sumsq`
    `[splits, T]` over `splits` slices of the hc·D axis (`k_total` long): the logits are
    `Σ part · rsqrt(Σ sumsq / k_total + eps)`, summed by `_premix_combine_kernel` or by a consumer."""

    part: torch.Tensor
    sumsq: torch.Tensor
    k_total: int

    @property
    def splits(self) -> int:
        return self.part.shape[0]


def hc_premix_triton(streams: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    n = streams.shape[0]
    n_mix = fn.shape[0]
    out = torch.empty(n, n_mix, dtype=torch.float32, device=streams.device)
    if n == 0:
        return out
    partials = premix_partials(streams, fn, norm_eps, out=out)
    if partials is None:
        return out
    mix_pad = partials.part.shape[2]
    _premix_combine_kernel[(n,)](
        partials.part,
        partials.sumsq,
        out,
        n,
        n_mix,
        partials.splits,
        partials.k_total,
        norm_eps,
        SPLITS=triton.next_power_of_2(partials.splits),
        MIXP=mix_pad,
        num_warps=4,
        **pdl_launch(out.device),
    )
    return out


def premix_partials(
    streams: torch.Tensor, fn: torch.Tensor, norm_eps: float, *, out: torch.Tensor | None = None
) -> PremixPartials | None:
    """The premix launch over `streams` (T > 0): its partials, or with `out` `[T, mix]` given and one slice
    (prefill-sized T) the finished logits stored there and None."""
    n = streams.shape[0]
    x = _rows_contiguous(streams.reshape(n, -1))
    fn = fn.float().contiguous()
    n_mix, k_total = fn.shape
    block_t = 16 if n <= 16 else 32  # tl.dot needs at least 16 rows
    mix_pad = max(16, triton.next_power_of_2(n_mix))
    token_blocks = triton.cdiv(n, block_t)
    k_split = _premix_split(k_total, token_blocks)
    splits = triton.cdiv(k_total, k_split)
    split = splits > 1 or out is None
    if split:
        part = torch.empty(splits, n, mix_pad, dtype=torch.float32, device=streams.device)
        sumsq = torch.empty(splits, n, dtype=torch.float32, device=streams.device)
    else:
        assert out is not None
        part = sumsq = out
    _premix_kernel[(token_blocks, splits)](
        x,
        fn,
        part,
        sumsq,
        n,
        n_mix,
        k_total,
        x.stride(0),
        fn.stride(0),
        norm_eps,
        BT=block_t,
        MIXP=mix_pad,
        BK=_PREMIX_BLOCK_K,
        K_SPLIT=k_split,
        SPLIT=split,
        PRECISION="tf32x3" if x.is_cuda else "ieee",
        num_warps=4,
        **pdl_launch(x.device),
    )
    return PremixPartials(part, sumsq, k_total) if split else None


def _premix_split(k_total: int, token_blocks: int) -> int:
    """The length of one program's slice of the hc·D axis: a multiple of the K block, as many slices as
    fill `_PREMIX_PROGRAMS` programs (one slice once the token blocks alone do)."""
    wanted = min(triton.cdiv(_PREMIX_PROGRAMS, token_blocks), triton.cdiv(k_total, _PREMIX_BLOCK_K))
    return triton.cdiv(triton.cdiv(k_total, wanted), _PREMIX_BLOCK_K) * _PREMIX_BLOCK_K


@triton.jit
def _collapse_kernel(
    S,
    PRE,
    W,
    OUT,
    dim,
    stride_st,
    stride_sh,
    stride_ot,
    eps,
    HC: tl.constexpr,
    BD: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BD)
    live = cols < dim
    acc = tl.zeros([BD], tl.float32)
    for i in tl.static_range(HC):
        weight = tl.load(PRE + row * HC + i).to(tl.float32)
        stream = tl.load(S + row * stride_st + i * stride_sh + cols, mask=live, other=0.0)
        acc += weight * stream.to(tl.float32)
    inv = tl.rsqrt(tl.sum(acc * acc, axis=0) / dim + eps)
    normed = tl.load(W + cols, mask=live, other=0.0).to(tl.float32) * (acc * inv)
    tl.store(OUT + row * stride_ot + cols, normed.to(OUT.dtype.element_ty), mask=live)


def hc_collapse_triton(
    streams: torch.Tensor, pre: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype
) -> torch.Tensor:
    n, hc, dim = streams.shape
    streams = _rows_contiguous(streams)
    out = torch.empty(n, dim, dtype=out_dtype, device=streams.device)
    if n == 0:
        return out
    block = triton.next_power_of_2(dim)
    _collapse_kernel[(n,)](
        streams,
        pre.float().contiguous(),
        weight.float().contiguous(),
        out,
        dim,
        streams.stride(0),
        streams.stride(1),
        out.stride(0),
        eps,
        HC=hc,
        BD=block,
        num_warps=min(16, max(1, block // 256)),
        **pdl_launch(streams.device),
    )
    return out


@triton.jit
def _merge_kernel(
    B,
    S,
    POST,
    COMB,
    OUT,
    n_tokens,
    dim,
    stride_bt,
    stride_st,
    stride_sh,
    stride_ot,
    stride_oh,
    HC: tl.constexpr,
    HCP: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    tokens = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    live = tokens < n_tokens
    rows = tokens.to(tl.int64)
    lanes = tl.arange(0, HCP)  # the output stream j
    weight_mask = live[:, None] & (lanes < HC)[None, :]
    mask = live[:, None] & (cols < dim)[None, :]
    post = tl.load(POST + rows[:, None] * HC + lanes[None, :], mask=weight_mask, other=0.0)
    block = tl.load(B + rows[:, None] * stride_bt + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    acc = post[:, :, None] * block[:, None, :]
    for i in tl.static_range(HC):
        comb = tl.load(
            COMB + rows[:, None] * (HC * HC) + i * HC + lanes[None, :], mask=weight_mask, other=0.0
        )
        stream = tl.load(S + rows[:, None] * stride_st + i * stride_sh + cols[None, :], mask=mask, other=0.0)
        acc += comb[:, :, None] * stream.to(tl.float32)[:, None, :]
    out = OUT + rows[:, None, None] * stride_ot + lanes[None, :, None] * stride_oh + cols[None, None, :]
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=weight_mask[:, :, None] & mask[:, None, :])


def hc_merge_triton(
    block_out: torch.Tensor, streams: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
) -> torch.Tensor:
    n, hc, dim = streams.shape
    streams = _rows_contiguous(streams)
    block_out = _rows_contiguous(block_out)
    out = torch.empty(n, hc, dim, dtype=streams.dtype, device=streams.device)
    if n == 0:
        return out
    grid = (triton.cdiv(n, _MERGE_TOKENS), triton.cdiv(dim, _STREAM_BLOCK_D))
    _merge_kernel[grid](
        block_out,
        streams,
        post.float().contiguous(),
        comb.float().contiguous(),
        out,
        n,
        dim,
        block_out.stride(0),
        streams.stride(0),
        streams.stride(1),
        out.stride(0),
        out.stride(1),
        HC=hc,
        HCP=triton.next_power_of_2(hc),
        BT=_MERGE_TOKENS,
        BD=_STREAM_BLOCK_D,
        num_warps=4,
        **pdl_launch(block_out.device),
    )
    return out


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """`x` with a unit stride in its last dimension (a copy only when it has none)."""
    return x if x.stride(-1) == 1 else x.contiguous()
