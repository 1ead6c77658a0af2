"""The sparse-attention kernel against its dense float32 reference, on fresh random inputs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from deepscout.model_runtime.v4.kernels.attention_keys import BandKeys, EntryKeys
from deepscout.model_runtime.v4.kernels.paged_keys import PagedKeys, to_fp8
from deepscout.model_runtime.v4.kernels.sparse_attention import sparse_attention, sparse_attention_reference

_SENTINEL = 2**62


def _case(
    *,
    device: torch.device,
    dtype: torch.dtype,
    n_heads: int,
    dim: int,
    window: int,
    rows: int,
    queries_per_row: int,
    entries_per_row: int,
    per_block: int,
    chosen: int | None,
    ratio: int,
    seed: int,
) -> tuple[torch.Tensor, BandKeys, EntryKeys, torch.Tensor, torch.Tensor]:
    """Rows whose queries sit at the end of a long context: each row's band is its own ring of `window`
    keys (some slots unwritten for short rows) and its entries live in shuffled pool blocks."""
    g = torch.Generator().manual_seed(seed)
    m = rows * queries_per_row
    q = torch.randn(m, n_heads, dim, generator=g)
    band_rows = rows * (window + queries_per_row)
    band_kv = torch.randn(band_rows, dim, generator=g)
    band_pos = torch.full((band_rows,), _SENTINEL, dtype=torch.long)
    starts, lengths, qpos, row_ids, limits = [], [], [], [], []
    blocks_per_row = -(-entries_per_row // per_block)
    physical = torch.randperm(rows * blocks_per_row, generator=g).view(rows, blocks_per_row)
    for r in range(rows):
        context = int(torch.randint(1, entries_per_row * ratio, (1,), generator=g))
        base = r * (window + queries_per_row)
        first = max(0, context - window + 1)
        keys_pos = torch.arange(first, context + queries_per_row)
        band_pos[base : base + keys_pos.shape[0]] = keys_pos
        for i in range(queries_per_row):
            p = context + i
            lo = max(0, p - window + 1) - first
            starts.append(base + lo)
            lengths.append(p - first - lo + 1)
            qpos.append(p)
            row_ids.append(r)
            limits.append((p + 1) // ratio)
    pool = torch.randn(rows * blocks_per_row, per_block, dim, generator=g)
    limit = torch.tensor(limits, dtype=torch.int32)
    indices = None
    if chosen is not None:
        indices = torch.randint(-1, entries_per_row, (m, chosen), generator=g, dtype=torch.int32)
    band = BandKeys(
        kv=band_kv.to(device, dtype),
        positions=band_pos.to(device),
        start=torch.tensor(starts, dtype=torch.int32, device=device),
        length=torch.tensor(lengths, dtype=torch.int32, device=device),
        max_length=max(lengths),
    )
    entries = EntryKeys(
        keys=PagedKeys("plain", pool.to(device, dtype)),
        block_table=physical.to(device, torch.int32),
        row=torch.tensor(row_ids, dtype=torch.int32, device=device),
        limit=limit.to(device),
        indices=None if indices is None else indices.to(device),
        max_count=chosen if chosen is not None else entries_per_row,
    )
    sink = torch.randn(n_heads, generator=g)
    return q.to(device, dtype), band, entries, sink.to(device), torch.tensor(qpos, device=device)


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def _small_case(
    device: torch.device, chosen: int | None, queries_per_row: int, rows: int, *, n_heads: int, seed: int
) -> tuple[torch.Tensor, BandKeys, EntryKeys, torch.Tensor, torch.Tensor]:
    """A float32 case of the interpreter's size: 48 dims, window 16, 150 entries per row in blocks of 8."""
    return _case(
        device=device,
        dtype=torch.float32,
        n_heads=n_heads,
        dim=48,
        window=16,
        rows=rows,
        queries_per_row=queries_per_row,
        entries_per_row=150,
        per_block=8,
        chosen=chosen,
        ratio=4,
        seed=seed,
    )


@pytest.mark.parametrize(
    ("chosen", "queries_per_row", "rows"),
    [(None, 1, 3), (24, 1, 3), (None, 40, 2), (24, 40, 1), (24, 260, 1)],
    ids=["hca-decode", "csa-decode", "hca-prefill", "csa-prefill", "csa-prefill-wide-tiles"],
)
def test_kernel_matches_reference(
    device: torch.device, chosen: int | None, queries_per_row: int, rows: int
) -> None:
    seed = hash((chosen, queries_per_row)) % 1000
    q, band, entries, sink, qpos = _small_case(device, chosen, queries_per_row, rows, n_heads=20, seed=seed)
    ref = sparse_attention_reference(q, band, entries, sink, qpos, scale=0.2, window=16)
    out = sparse_attention(q, band, entries, sink, qpos, scale=0.2, window=16, impl="triton")
    assert torch.isfinite(out).all()
    assert _relative_error(out, ref) < 1e-4


def _as_paper(entries: EntryKeys, rope_dim: int) -> EntryKeys:
    """The same entries stored in the paper layout: FP8 leading dims, BF16 trailing RoPE dims."""
    pool = entries.keys.data
    split = pool.shape[-1] - rope_dim
    keys = PagedKeys("fp8_rope", to_fp8(pool[..., :split]), rope=pool[..., split:].bfloat16().contiguous())
    return replace(entries, keys=keys)


@pytest.mark.parametrize(("chosen", "queries_per_row", "rows"), [(None, 1, 3), (24, 1, 3), (24, 40, 1)])
def test_kernel_reads_paper_entries(
    device: torch.device, chosen: int | None, queries_per_row: int, rows: int
) -> None:
    """Entries stored as FP8 + BF16 RoPE dims are read as the reference dequantises them (float32
    queries here: Triton's interpreter has no bfloat16 dot; the GPU test below runs bfloat16)."""
    q, band, entries, sink, qpos = _small_case(device, chosen, queries_per_row, rows, n_heads=16, seed=11)
    paper = _as_paper(entries, rope_dim=16)
    ref = sparse_attention_reference(q, band, paper, sink, qpos, scale=0.2, window=16)
    out = sparse_attention(q, band, paper, sink, qpos, scale=0.2, window=16, impl="triton")
    assert _relative_error(out, ref) < 1e-4
    plain = sparse_attention_reference(q, band, entries, sink, qpos, scale=0.2, window=16)
    assert 1e-4 < _relative_error(ref, plain) < 0.1  # FP8 rounding is visible, and small


def test_band_only_and_empty_rows(device: torch.device) -> None:
    """Sliding layers (no entries), and queries that see nothing but the sink (empty band) give zeros."""
    q, band, _, sink, qpos = _case(
        device=device,
        dtype=torch.float32,
        n_heads=16,
        dim=32,
        window=8,
        rows=2,
        queries_per_row=5,
        entries_per_row=4,
        per_block=4,
        chosen=None,
        ratio=4,
        seed=3,
    )
    ref = sparse_attention_reference(q, band, None, sink, qpos, scale=0.3, window=8)
    out = sparse_attention(q, band, None, sink, qpos, scale=0.3, window=8, impl="triton")
    assert _relative_error(out, ref) < 1e-4
    empty = BandKeys(band.kv, band.positions, band.start, torch.zeros_like(band.length), 0)
    zeros = sparse_attention(q, empty, None, sink, qpos, scale=0.3, window=8, impl="triton")
    assert torch.equal(zeros, torch.zeros_like(zeros))


@pytest.mark.parametrize("with_entries", [False, True], ids=["sliding", "hca"])
def test_decode_shares_a_long_band_out_over_splits(device: torch.device, with_entries: bool) -> None:
    """With few queries a band longer than two tiles is split over several programs (and the entries after
    it), whose partial results are merged with the sink: the same attention as one program's."""
    q, band, entries, sink, qpos = _case(
        device=device,
        dtype=torch.float32,
        n_heads=16,
        dim=32,
        window=100,
        rows=2,
        queries_per_row=1,
        entries_per_row=40,
        per_block=8,
        chosen=None,
        ratio=4,
        seed=11,
    )
    kept = entries if with_entries else None
    ref = sparse_attention_reference(q, band, kept, sink, qpos, scale=0.3, window=100)
    out = sparse_attention(q, band, kept, sink, qpos, scale=0.3, window=100, impl="triton")
    assert _relative_error(out, ref) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("paper", [False, True], ids=["bf16", "paper"])
@pytest.mark.parametrize(("chosen", "queries_per_row", "rows"), [(None, 1, 8), (512, 1, 8), (512, 256, 1)])
def test_kernel_at_flash_shapes(chosen: int | None, queries_per_row: int, rows: int, paper: bool) -> None:
    """V4-Flash's attention shapes in bfloat16 (64 heads of 512, window 128), no host sync; entries as
    BF16 rows or in the paper layout (FP8 + BF16 RoPE dims)."""
    case = _case(
        device=torch.device("cuda"),
        dtype=torch.bfloat16,
        n_heads=64,
        dim=512,
        window=128,
        rows=rows,
        queries_per_row=queries_per_row,
        entries_per_row=4096,
        per_block=32,
        chosen=chosen,
        ratio=4 if chosen else 128,
        seed=7,
    )
    q, band, entries, sink, qpos = case
    if paper:
        entries = _as_paper(entries, rope_dim=64)
    ref = sparse_attention_reference(q, band, entries, sink, qpos, scale=512**-0.5, window=128)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sparse_attention(q, band, entries, sink, qpos, scale=512**-0.5, window=128, impl="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert _relative_error(out, ref) < 1e-2
