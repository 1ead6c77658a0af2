"""The one launch of `hc_merge_collapse` (one token on a GPU; contract in `hc_streams.py`).

The merge-premix program (`hc_streams_triton.merge_premix_block`) also stores its block's Gram matrix of
the new streams (`<stream i, stream j>` over its columns), then waits at its token's barrier: a release
ticket from the `arrivals` counter (after a barrier of the program's threads, so its stores are published
first), then acquire loads of the counter until every D block of the token has arrived. The counter is
never reset: a launch's programs wait for the next multiple of the block count (int64, so it never
wraps), so eager calls and graph replays share it; one launch at a time may use it. Past the barrier each
program reads the token's partials through L2 (`.cg`), finishes the pre weights, collapses its own columns
from the registers it merged them in, and norms them: the row's sum of squares is `preᵀ G pre` with `G`
the blocks' Gram matrices summed, so no second barrier is needed. A waiting program holds its
multiprocessor's slot, so the programs must all run at once: the one launch is taken only when they are
one wave (`merge_collapse_fuses`); more tokens, and Triton's interpreter (which runs programs one after
another), take the merge-premix and the collapse launches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deepscout.model_runtime.v4.kernels.hc_streams_triton import (
    MERGE_PREMIX_BLOCK_D,
    MergePremixLaunch,
    merge_premix_block,
)
from deepscout.model_runtime.v4.kernels.mix_logits import MixLogits
from deepscout.model_runtime.v4.kernels.multiprocessors import multiprocessors
from deepscout.model_runtime.v4.kernels.pdl import enter_pdl, pdl_launch

_PROGRAMS_PER_SM = 1
"""The most programs of the merge and collapse's one launch (whose programs wait for each other) a
multiprocessor runs: one, so a launch is one wave (one token at hidden 4096: 128 programs on an H200's 132
multiprocessors). Measured on an H200, the launch took 4.2 µs at one token (the merge-premix and collapse
launches 1.8 + 2.4) and 17.4 µs at eight (1,024 programs, 167 registers a thread; the two launches 3.3 +
2.4): eight tokens a step made batch-8 decode 0.85 ms slower (22.37 against 21.52 ms a step)."""


@triton.jit
def _merge_collapse_kernel(
    B,
    S,
    POST,
    COMB,
    FN,
    OUT,
    PART,
    SUMSQ,
    n_tokens,
    n_mix,
    dim,
    stride_bt,
    stride_st,
    stride_sh,
    stride_ot,
    stride_oh,
    stride_fn,
    SCALE,
    BASE,
    W,
    GRAM,
    X,
    ARRIVALS,
    stride_xt,
    mix_norm_eps,
    hc_eps,
    eps,
    HC: tl.constexpr,
    HCP: tl.constexpr,
    MIXP: tl.constexpr,
    BD: tl.constexpr,
    SPLITS: tl.constexpr,  # a power of two covering the launch's D blocks
    PDL: tl.constexpr,
):
    enter_pdl(PDL)
    token = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    x = merge_premix_block(
        B, S, POST, COMB, FN, OUT, PART, SUMSQ, token, split, n_tokens, n_mix, dim, stride_bt, stride_st,
        stride_sh, stride_ot, stride_oh, stride_fn, HC, HCP, MIXP, BD,
    )  # fmt: skip
    cols = split * BD + tl.arange(0, BD)
    live = cols < dim
    lanes = tl.arange(0, HCP)
    lane_ok = lanes < HC
    slot = split.to(tl.int64) * n_tokens + token
    gram = tl.sum(x[:, None, :] * x[None, :, :], axis=2)  # this block's <stream i, stream j>
    tl.store(GRAM + slot * (HCP * HCP) + lanes[:, None] * HCP + lanes[None, :], gram)
    # the token's barrier: every D block's partials are published before any block reads them back
    tl.debug_barrier()
    ticket = tl.atomic_add(ARRIVALS + token, 1, sem="release")
    target = (ticket // n_splits + 1) * n_splits
    seen = ticket + 1
    while seen < target:
        seen = _load_acquire(ARRIVALS + token)
    tl.debug_barrier()
    blocks = tl.arange(0, SPLITS)
    slots = blocks.to(tl.int64) * n_tokens + token
    block_ok = blocks < n_splits
    part = tl.load(
        PART + slots[:, None] * MIXP + lanes[None, :],
        mask=block_ok[:, None] & lane_ok[None, :],
        other=0.0,
        cache_modifier=".cg",
    )
    sumsq = tl.sum(tl.load(SUMSQ + slots, mask=block_ok, other=0.0, cache_modifier=".cg"), axis=0)
    logits = tl.sum(part, axis=0) * tl.rsqrt(sumsq / (HC * dim) + mix_norm_eps)
    base = tl.load(BASE + lanes, mask=lane_ok, other=0.0)
    pre = tl.where(lane_ok, tl.sigmoid(logits * tl.load(SCALE) + base) + hc_eps, 0.0)
    pairs = slots[:, None, None] * (HCP * HCP) + lanes[None, :, None] * HCP + lanes[None, None, :]
    grams = tl.load(GRAM + pairs, mask=block_ok[:, None, None], other=0.0, cache_modifier=".cg")
    grams = tl.sum(grams, axis=0)
    # |Σ_i pre_i · stream_i|² over the whole row, from the blocks' Gram matrices
    norm_sq = tl.sum(tl.sum(pre[:, None] * grams * pre[None, :], axis=1), axis=0)
    collapsed = tl.sum(pre[:, None] * x, axis=0)
    weight = tl.load(W + cols, mask=live, other=0.0).to(tl.float32)
    normed = weight * (collapsed * tl.rsqrt(norm_sq / dim + eps))
    tl.store(X + token * stride_xt + cols, normed.to(X.dtype.element_ty), mask=live)


@triton.jit
def _load_acquire(pointer):
    """An int64 read with acquire semantics at GPU scope (a plain load, not an atomic: the waiting programs
    poll the counter without serialising on its address)."""
    return tl.inline_asm_elementwise(
        "ld.acquire.gpu.global.b64 $0, [$1];", "=l,l", [pointer], dtype=tl.int64, is_pure=False, pack=1
    )


def hc_merge_collapse_triton(
    block_out: torch.Tensor,
    streams: torch.Tensor,
    post: torch.Tensor,
    comb: torch.Tensor,
    fn: torch.Tensor,
    scale: torch.Tensor,
    base: torch.Tensor,
    weight: torch.Tensor,
    arrivals: torch.Tensor,
    mix_norm_eps: float,
    hc_eps: float,
    eps: float,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, MixLogits, torch.Tensor]:
    """The one launch, for inputs where `merge_collapse_fuses` holds (the caller's choice)."""
    n, _, dim = streams.shape
    if arrivals.dtype != torch.int64 or arrivals.device != streams.device:
        raise ValueError(
            f"hc_merge_collapse needs int64 arrivals on {streams.device}, got {arrivals.dtype} on "
            f"{arrivals.device}"
        )
    launch = MergePremixLaunch.of(block_out, streams, post, comb, fn)
    splits, hc_pad = launch.grid[1], launch.constants["HCP"]
    gram = torch.empty(splits, n, hc_pad * hc_pad, dtype=torch.float32, device=streams.device)
    collapsed = torch.empty(n, dim, dtype=out_dtype, device=streams.device)
    _merge_collapse_kernel[launch.grid](
        *launch.args,
        scale.float().contiguous(),
        base.float().contiguous(),
        weight.float().contiguous(),
        gram,
        collapsed,
        arrivals,
        collapsed.stride(0),
        mix_norm_eps,
        hc_eps,
        eps,
        **launch.constants,
        SPLITS=triton.next_power_of_2(splits),
        num_warps=1,
        **pdl_launch(streams.device),
    )
    return launch.out, launch.logits, collapsed


def merge_collapse_fuses(n_tokens: int, dim: int, device: torch.device, counters: int) -> bool:
    """Whether `hc_merge_collapse_triton` runs as one launch: on a GPU (its programs wait for each other, so
    they must run side by side: not under the interpreter, which runs them one after another), for at most
    `counters` tokens (the `arrivals` elements) whose programs are one wave (`_PROGRAMS_PER_SM`)."""
    if device.type != "cuda" or triton.knobs.runtime.interpret or not 0 < n_tokens <= counters:
        return False
    programs = n_tokens * triton.cdiv(dim, MERGE_PREMIX_BLOCK_D)
    return programs <= _PROGRAMS_PER_SM * multiprocessors(device)
