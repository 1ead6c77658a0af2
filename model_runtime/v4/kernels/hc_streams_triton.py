"""The Triton kernels behind `hc_premix`, `hc_collapse` and `hc_merge` with impl="triton" (contracts in
`hc_streams.py`).

Premix: a program per (block of tokens, slice of the hc·D axis) walks its slice once, accumulating
`x · fnᵀ` (float32 "ieee" dots, the mix axis padded to a power of two) and the sum of squares together.
With one slice (prefill-sized T) it scales by `rsqrt(mean(x²) + eps)` and stores the logits; decode-sized
T splits the axis so the GPU fills (`_PREMIX_PROGRAMS`), the partials `[splits, T, mix]` and sums of squares
`[splits, T]` then summed by a second launch, one program per token. The split depends only on the shapes,
so a captured CUDA graph replays it unchanged.

Collapse and merge: a program per (block of tokens, block of D), each hc stream row loaded once with
contiguous (vectorised) loads; merge keeps the `[tokens, hc, D-block]` output tile in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_PREMIX_BLOCK_K = 64
_PREMIX_PROGRAMS = 128  # about one per SM of an H200 (132): fewer token blocks split the hc·D axis
_STREAM_BLOCK_D = 512
_COLLAPSE_TOKENS = 4
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
):
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
    PART, SUMSQ, OUT, n_tokens, n_mix, n_splits, k_total, eps, SPLITS: tl.constexpr, MIXP: tl.constexpr
):
    token = tl.program_id(0).to(tl.int64)
    splits = tl.arange(0, SPLITS)
    split_live = splits < n_splits
    mixes = tl.arange(0, MIXP)
    slot = splits.to(tl.int64) * n_tokens + token
    part = tl.load(PART + slot[:, None] * MIXP + mixes[None, :], mask=split_live[:, None], other=0.0)
    sumsq = tl.sum(tl.load(SUMSQ + slot, mask=split_live, other=0.0), axis=0)
    scaled = tl.sum(part, axis=0) * tl.rsqrt(sumsq / k_total + eps)
    tl.store(OUT + token * n_mix + mixes, scaled, mask=mixes < n_mix)


def hc_premix_triton(streams: torch.Tensor, fn: torch.Tensor, norm_eps: float) -> torch.Tensor:
    n = streams.shape[0]
    x = _rows_contiguous(streams.reshape(n, -1))
    fn = fn.float().contiguous()
    n_mix, k_total = fn.shape
    out = torch.empty(n, n_mix, dtype=torch.float32, device=streams.device)
    if n == 0:
        return out
    block_t = 16 if n <= 16 else 32  # tl.dot needs at least 16 rows
    mix_pad = max(16, triton.next_power_of_2(n_mix))
    token_blocks = triton.cdiv(n, block_t)
    k_split = _premix_split(k_total, token_blocks)
    splits = triton.cdiv(k_total, k_split)
    split = splits > 1
    part = torch.empty(splits, n, mix_pad, dtype=torch.float32, device=streams.device) if split else out
    sumsq = torch.empty(splits, n, dtype=torch.float32, device=streams.device) if split else out
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
    )
    if split:
        _premix_combine_kernel[(n,)](
            part,
            sumsq,
            out,
            n,
            n_mix,
            splits,
            k_total,
            norm_eps,
            SPLITS=triton.next_power_of_2(splits),
            MIXP=mix_pad,
            num_warps=4,
        )
    return out


def _premix_split(k_total: int, token_blocks: int) -> int:
    """The length of one program's slice of the hc·D axis: a multiple of the K block, as many slices as
    fill `_PREMIX_PROGRAMS` programs (one slice once the token blocks alone do)."""
    wanted = min(triton.cdiv(_PREMIX_PROGRAMS, token_blocks), triton.cdiv(k_total, _PREMIX_BLOCK_K))
    return triton.cdiv(triton.cdiv(k_total, wanted), _PREMIX_BLOCK_K) * _PREMIX_BLOCK_K


@triton.jit
def _collapse_kernel(
    S,
    PRE,
    OUT,
    n_tokens,
    dim,
    stride_st,
    stride_sh,
    stride_ot,
    HC: tl.constexpr,
    BT: tl.constexpr,
    BD: tl.constexpr,
):
    tokens = tl.program_id(0) * BT + tl.arange(0, BT)
    cols = tl.program_id(1) * BD + tl.arange(0, BD)
    live = tokens < n_tokens
    rows = tokens.to(tl.int64)
    mask = live[:, None] & (cols < dim)[None, :]
    acc = tl.zeros([BT, BD], tl.float32)
    for i in tl.static_range(HC):
        weight = tl.load(PRE + rows * HC + i, mask=live, other=0.0).to(tl.float32)
        stream = tl.load(S + rows[:, None] * stride_st + i * stride_sh + cols[None, :], mask=mask, other=0.0)
        acc += weight[:, None] * stream.to(tl.float32)
    tl.store(OUT + rows[:, None] * stride_ot + cols[None, :], acc.to(OUT.dtype.element_ty), mask=mask)


def hc_collapse_triton(streams: torch.Tensor, pre: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    n, hc, dim = streams.shape
    streams = _rows_contiguous(streams)
    out = torch.empty(n, dim, dtype=out_dtype, device=streams.device)
    if n == 0:
        return out
    grid = (triton.cdiv(n, _COLLAPSE_TOKENS), triton.cdiv(dim, _STREAM_BLOCK_D))
    _collapse_kernel[grid](
        streams,
        pre.float().contiguous(),
        out,
        n,
        dim,
        streams.stride(0),
        streams.stride(1),
        out.stride(0),
        HC=hc,
        BT=_COLLAPSE_TOKENS,
        BD=_STREAM_BLOCK_D,
        num_warps=4,
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
):
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
    )
    return out


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """`x` with a unit stride in its last dimension (a copy only when it has none)."""
    return x if x.stride(-1) == 1 else x.contiguous()
