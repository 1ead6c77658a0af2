"""The lightning-indexer kernel against its float32 reference: every storage format, paged rows with
shuffled block tables, ragged causal limits, prefill tiles and decode; top-k compared tie-aware."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from deepscout.model_runtime.v4.kernels.indexer_scores import indexer_scores, indexer_topk
from deepscout.model_runtime.v4.kernels.paged_keys import KeyFormat, PagedKeys, PagedRows
from deepscout.model_runtime.v4.kernels.topk_agreement import TopkAgreement, compare_topk
from deepscout.model_runtime.v4.model.indexer import Indexer, IndexQueries, select_topk
from deepscout.model_runtime.v4.model_config import tiny
from deepscout.model_runtime.v4.weights.quant import quantize_mxfp4

#: max |kernel - reference| / max |reference| allowed: float32 on the CPU (interpreter); bfloat16 MMAs with
#: float32 accumulation (exact products, another summation order) on the GPU.
RELATIVE_TOLERANCE = {"cpu": 1e-5, "cuda": 1e-4}

FORMATS: list[tuple[KeyFormat, torch.dtype]] = [
    ("plain", torch.bfloat16),
    ("plain", torch.float32),
    ("fp8", torch.float8_e4m3fn),
    ("mxfp4", torch.uint8),
]


def stored_keys(fmt: KeyFormat, dtype: torch.dtype, rows: torch.Tensor) -> PagedKeys:
    """RMS-normalised key rows `[blocks, per_block, dim]` stored as the KV pool stores them."""
    if fmt == "plain":
        return PagedKeys("plain", rows.to(dtype))
    if fmt == "fp8":
        return PagedKeys("fp8", rows.to(torch.float8_e4m3fn))
    blocks, per_block, dim = rows.shape
    packed, scale = quantize_mxfp4(rows.reshape(-1, dim))
    return PagedKeys(
        "mxfp4",
        packed.view(torch.uint8).view(blocks, per_block, dim // 2),
        scale.view(torch.uint8).view(blocks, per_block, dim // 32),
    )


def paged_case(
    *,
    fmt: KeyFormat,
    dtype: torch.dtype,
    queries_per_row: Sequence[int],
    n_heads: int,
    dim: int,
    per_block: int,
    max_blocks: int,
    device: torch.device,
    seed: int,
    min_last: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, PagedKeys, PagedRows, torch.Tensor]:
    """Rows whose blocks are scattered over a shared pool (spare blocks in between); each row's queries
    are consecutive positions, so limits grow within a row; the last query's limit is drawn from
    [`min_last`, capacity + 3) (0: nothing visible; past the capacity: everything), and the table entries
    past the row's last visible block point outside the pool."""
    g = torch.Generator().manual_seed(seed)
    n_rows, n_queries = len(queries_per_row), sum(queries_per_row)
    pool_blocks = n_rows * max_blocks + 3
    raw = torch.randn(pool_blocks, per_block, dim, generator=g)
    raw = raw * torch.rsqrt(raw.square().mean(-1, keepdim=True))
    table = torch.randperm(pool_blocks, generator=g)[: n_rows * max_blocks].view(n_rows, max_blocks)
    limits: list[int] = []
    capacity = max_blocks * per_block
    for r, count in enumerate(queries_per_row):
        last = int(torch.randint(min_last, capacity + 3, (1,), generator=g))
        limits.extend(max(0, last - count + 1 + i) for i in range(count))
        table[r, -(-last // per_block) :] = 1 << 30  # unallocated: never read (out of the pool)
    starts = torch.tensor([0, *queries_per_row]).cumsum(0)
    q = torch.randn(n_queries, n_heads, dim, generator=g).to(
        torch.bfloat16 if dtype != torch.float32 else dtype
    )
    weights = torch.randn(n_queries, n_heads, generator=g) * n_heads**-0.5
    rows = PagedRows(
        table.to(device=device, dtype=torch.int32),
        starts.to(device=device, dtype=torch.int32),
        max(queries_per_row),
    )
    keys = stored_keys(fmt, dtype, raw)
    keys = PagedKeys(keys.format, keys.data.to(device), None if keys.scale is None else keys.scale.to(device))
    limit = torch.tensor(limits, dtype=torch.int32, device=device)
    return q.to(device), weights.to(device), keys, rows, limit


def assert_scores_close(reference: torch.Tensor, kernel: torch.Tensor) -> float:
    """Same -inf pattern, finite scores within the device's relative tolerance of max|reference|;
    returns the absolute tolerance."""
    finite = torch.isfinite(reference)
    assert torch.equal(finite, torch.isfinite(kernel))
    assert bool((kernel[~finite] == float("-inf")).all())
    if not bool(finite.any()):
        return 0.0
    scale = float(reference[finite].abs().max())
    error = float((reference[finite] - kernel[finite]).abs().max())
    relative = RELATIVE_TOLERANCE[reference.device.type]
    assert error <= relative * scale, f"max |diff| / max |ref| = {error / scale:.2e} > {relative:.0e}"
    return relative * scale


def assert_same_selection(
    scores: torch.Tensor, limit: torch.Tensor, k: int, kernel: tuple[torch.Tensor, torch.Tensor], tol: float
) -> TopkAgreement:
    reference = select_topk(scores, limit, k)
    assert kernel[0].shape == reference[0].shape
    assert torch.equal(kernel[1], kernel[0] < limit[:, None])
    agreement = compare_topk(scores, reference, kernel, tolerance=tol)
    assert agreement.unexplained == 0, agreement
    return agreement


@pytest.mark.parametrize(("fmt", "dtype"), FORMATS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize(
    ("queries_per_row", "n_heads"),
    [([1, 1, 1, 1], 8), ([5, 1, 19], 4), ([40, 3], 12)],
    ids=["decode", "mixed", "prefill"],
)
def test_kernel_matches_reference_on_paged_rows(
    fmt: KeyFormat, dtype: torch.dtype, queries_per_row: list[int], n_heads: int, device: torch.device
) -> None:
    q, w, keys, rows, limit = paged_case(
        fmt=fmt,
        dtype=dtype,
        queries_per_row=queries_per_row,
        n_heads=n_heads,
        dim=64,
        per_block=8,
        max_blocks=5,
        device=device,
        seed=len(queries_per_row) * 7 + n_heads,
    )
    reference = indexer_scores(q, w, keys, rows, limit, impl="reference")
    kernel = indexer_scores(q, w, keys, rows, limit, impl="triton")
    assert kernel.shape == (q.shape[0], 40)
    tol = assert_scores_close(reference, kernel)
    for k in (6, 64):  # fewer than the visible entries, and more than the capacity
        chosen = indexer_topk(q, w, keys, rows, limit, k, impl="triton")
        assert_same_selection(reference, limit, k, chosen, 2 * tol)


def test_bfloat16_head_weights_score_as_their_float32_values(device: torch.device) -> None:
    """The weights projection's bfloat16 output goes in as it is (no cast or scaling launch before the
    scores): both paths give exactly what its float32 values give."""
    q, w, keys, rows, limit = paged_case(
        fmt="plain",
        dtype=torch.bfloat16,
        queries_per_row=[1, 1],
        n_heads=8,
        dim=64,
        per_block=8,
        max_blocks=3,
        device=device,
        seed=5,
    )
    half = w.bfloat16()
    for impl in ("reference", "triton"):
        ours = indexer_scores(q, half, keys, rows, limit, impl=impl)
        assert torch.equal(ours, indexer_scores(q, half.float(), keys, rows, limit, impl=impl))


def test_reference_reads_keys_as_the_pool_decodes_them() -> None:
    """Dense reference keys: FP8 and MXFP4 decode exactly to bfloat16, then the float32 formula."""
    q, w, keys, rows, limit = paged_case(
        fmt="mxfp4",
        dtype=torch.uint8,
        queries_per_row=[3],
        n_heads=4,
        dim=64,
        per_block=8,
        max_blocks=2,
        device=torch.device("cpu"),
        seed=3,
        min_last=16,  # both blocks allocated
    )
    decoded = keys.dequantize()
    assert decoded.dtype == torch.bfloat16
    logical = decoded[rows.block_table[0].long()].reshape(16, 64).float()
    expected = torch.einsum("mhd,td->mht", q.float(), logical).relu() * w[:, :, None] * (4 * 64) ** -0.5
    expected = expected.sum(1).masked_fill(torch.arange(16)[None, :] >= limit[:, None], float("-inf"))
    torch.testing.assert_close(indexer_scores(q, w, keys, rows, limit, impl="reference"), expected)


def test_indexer_top_k_triton_matches_reference(device: torch.device) -> None:
    indexer = Indexer(tiny(index_n_heads=8, index_head_dim=32, index_topk=5)).to(device)
    g = torch.Generator().manual_seed(11)
    queries = IndexQueries(
        torch.randn(9, 8, 32, generator=g).to(device), torch.randn(9, 8, generator=g).to(device)
    )
    keys = torch.randn(23, 32, generator=g).to(device)
    limit = torch.tensor([0, 1, 2, 5, 8, 13, 21, 23, 23], device=device)
    scores = indexer.scores(queries, keys)
    kernel = indexer.top_k(queries, keys, limit, impl="triton")
    tol = RELATIVE_TOLERANCE[device.type] * float(scores.abs().max())
    assert_same_selection(scores, limit, 5, kernel, tol)
    reference = indexer.top_k(queries, keys, limit)
    assert torch.equal(reference[1].sum(1), kernel[1].sum(1))  # as many valid entries (in any order)


def test_compare_topk_counts_near_ties_and_flags_real_differences() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0, 3.0 + 5e-7, 1.0]])
    limit = torch.tensor([5])
    reference = select_topk(scores, limit, 3)  # {0, 1, 3}
    swapped = (torch.tensor([[0, 1, 2]]), torch.tensor([[True, True, True]]))
    assert compare_topk(scores, reference, swapped, tolerance=1e-6) == TopkAgreement(3, 1, 0)
    wrong = (torch.tensor([[0, 1, 4]]), torch.tensor([[True, True, True]]))
    assert compare_topk(scores, reference, wrong, tolerance=1e-6) == TopkAgreement(3, 1, 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("fmt", "dtype"), FORMATS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("queries_per_row", [[1], [1] * 8, [64, 64, 128]], ids=["m1", "decode8", "m256"])
def test_kernel_at_real_shapes_without_host_sync(
    fmt: KeyFormat, dtype: torch.dtype, queries_per_row: list[int]
) -> None:
    """H=64, D=128, up to 64K keys per row in blocks of 32; the triton call runs under sync-error mode."""
    device = torch.device("cuda")
    q, w, keys, rows, limit = paged_case(
        fmt=fmt,
        dtype=dtype,
        queries_per_row=queries_per_row,
        n_heads=64,
        dim=128,
        per_block=32,
        max_blocks=2048,
        device=device,
        seed=sum(queries_per_row),
        min_last=32768,
    )
    indexer_topk(q, w, keys, rows, limit, 512, impl="triton")  # compile outside the sync check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        scores = indexer_scores(q, w, keys, rows, limit, impl="triton")
        chosen = indexer_topk(q, w, keys, rows, limit, 512, impl="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    reference = indexer_scores(q, w, keys, rows, limit, impl="reference")
    tol = assert_scores_close(reference, scores)
    agreement = assert_same_selection(reference, limit, 512, chosen, 2 * tol)
    assert agreement.flips <= 2 + agreement.selections // 100, agreement  # near-ties only, and few


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("fmt", "dtype"), [FORMATS[0], FORMATS[3]], ids=["bfloat16", "mxfp4"])
def test_decode_selection_replays_in_a_cuda_graph(fmt: KeyFormat, dtype: torch.dtype) -> None:
    """Scores + top-k for 8 decode rows captured once, replayed on new queries, equal to an eager call."""
    q, w, keys, rows, limit = paged_case(
        fmt=fmt,
        dtype=dtype,
        queries_per_row=[1] * 8,
        n_heads=64,
        dim=128,
        per_block=32,
        max_blocks=256,
        device=torch.device("cuda"),
        seed=5,
        min_last=4096,
    )
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        indexer_topk(q, w, keys, rows, limit, 512, impl="triton")  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, captured_valid = indexer_topk(q, w, keys, rows, limit, 512, impl="triton")
    q.copy_(torch.randn(q.shape, generator=torch.Generator().manual_seed(6)).to(q))
    graph.replay()
    eager, eager_valid = indexer_topk(q, w, keys, rows, limit, 512, impl="triton")
    assert torch.equal(captured.sort(dim=1).values, eager.sort(dim=1).values)
    assert torch.equal(captured_valid, eager_valid)
