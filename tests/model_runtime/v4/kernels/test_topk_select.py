"""The Triton top-k select against torch.topk (tie-aware) and against its own tie rule exactly (every entry
above the k-th value, then the lowest-index ties): the three layouts (each entry ranked among its row; a
row in registers; rows split over chunks and passes), ragged limits, rows shorter than k, deliberate ties,
and the float corner cases."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.paged_keys import IndexerInputError
from deepscout.model_runtime.v4.kernels.topk_select import masked_topk
from deepscout.model_runtime.v4.kernels.topk_select_triton import (
    TopkTiles,
    choose_layout,
    prefers_triton,
    topk_select_triton,
)

#: the default layouts past the rank layout: a row in registers
RESIDENT = TopkTiles(rank_max_pairs=0)
#: the split layout at small sizes: rows past 64 scores cut into chunks of 128-score tiles
SPLIT = TopkTiles(rank_max_pairs=0, resident_max=64, block=128, target_programs=12, num_warps=4)
#: the rank layout at every test size, blocks of keys wider than the blocks of entries
RANK = TopkTiles(rank_max_pairs=1 << 30, rank_rows=64, rank_block=128)
LAYOUTS = pytest.mark.parametrize("tiles", [RANK, RESIDENT, SPLIT], ids=["rank", "resident", "split"])


def masked_case(
    rows: int, n: int, *, ties: bool, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores `[rows, n]` (-inf at and past each limit) and limits: row 0 sees everything (its limit past
    n), the others a random prefix (some shorter than k). `ties`: few distinct values."""
    g = torch.Generator().manual_seed(seed)
    scores = (
        torch.randint(-4, 5, (rows, n), generator=g).float() if ties else torch.randn(rows, n, generator=g)
    )
    limit = torch.randint(0, n + 1, (rows,), generator=g)
    limit[0] = n + 3
    scores = scores.masked_fill(torch.arange(n)[None, :] >= limit[:, None], float("-inf"))
    return scores.to(device), limit.to(device)


def lowest_index_rule(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The Triton path's selection, sorted: a stable descending sort keeps the lowest index among ties."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : min(k, scores.shape[1])]


def assert_same_as_reference(
    scores: torch.Tensor, limit: torch.Tensor, k: int, chosen: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Same shapes and dtypes as torch.topk's, the same multiset of selected values (so the same entries
    above the k-th value, and as many at it), validity = index < limit, and exactly the tie rule's set."""
    indices, valid = chosen
    ref_indices, ref_valid = masked_topk(scores, limit, k, impl="reference")
    assert indices.shape == ref_indices.shape and indices.dtype == ref_indices.dtype == torch.int64
    assert valid.dtype == torch.bool
    picked = [scores.gather(1, i).sort(dim=1).values for i in (indices, ref_indices)]
    assert torch.equal(picked[0], picked[1])
    assert torch.equal(valid, indices < limit[:, None])
    assert torch.equal(valid.sum(1), ref_valid.sum(1))
    assert torch.equal(indices.sort(dim=1).values, lowest_index_rule(scores, k).sort(dim=1).values)


@pytest.mark.parametrize(
    ("rows", "n", "k", "ties"),
    [(3, 64, 16, False), (5, 700, 512, True), (2, 3000, 512, False), (4, 300, 1, True), (2, 40, 512, False)],
    ids=["small", "ties-short-rows", "long", "k1-ties", "k-past-n"],
)
@LAYOUTS
def test_triton_select_matches_reference(
    rows: int, n: int, k: int, ties: bool, tiles: TopkTiles, device: torch.device
) -> None:
    scores, limit = masked_case(rows, n, ties=ties, device=device, seed=n + k)
    assert_same_as_reference(scores, limit, k, topk_select_triton(scores, limit, k, tiles))


def test_dispatch_runs_the_triton_path(device: torch.device) -> None:
    scores, limit = masked_case(4, 900, ties=True, device=device, seed=3)
    assert_same_as_reference(scores, limit, 512, masked_topk(scores, limit, 512, impl="triton"))


@LAYOUTS
def test_float_corner_cases_follow_the_tie_rule(tiles: TopkTiles, device: torch.device) -> None:
    """-0.0 ties with 0.0, NaN ranks above +inf, subnormals and infinities keep their order."""
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(3, 200, generator=g)
    scores[:, ::5] = 0.0
    scores[:, 1::5] = -0.0
    scores[:, 2::17] = float("nan")
    scores[:, 3::11] = float("inf")
    scores[:, 4::13] = torch.finfo(torch.float32).tiny / 8
    scores[1] = -scores[1]
    limit = torch.tensor([200, 150, 0])
    scores = scores.masked_fill(torch.arange(200)[None, :] >= limit[:, None], float("-inf"))
    indices, valid = topk_select_triton(scores.to(device), limit.to(device), 60, tiles)
    assert torch.equal(indices.cpu().sort(dim=1).values, lowest_index_rule(scores, 60).sort(dim=1).values)
    assert torch.equal(valid.cpu().sum(1), torch.tensor([60, 60, 0]))


def test_empty_selections_and_bad_inputs(device: torch.device) -> None:
    scores = torch.randn(2, 10, device=device)
    limit = torch.tensor([10, 5], device=device)
    assert masked_topk(scores, limit, 0, impl="triton")[0].shape == (2, 0)
    assert masked_topk(scores[:0], limit[:0], 4, impl="triton")[0].shape == (0, 4)
    with pytest.raises(IndexerInputError, match="float32"):
        masked_topk(scores.half(), limit, 4, impl="triton")
    with pytest.raises(IndexerInputError, match=r"limit \[R\]"):
        masked_topk(scores, limit[:1], 4, impl="triton")
    with pytest.raises(IndexerInputError, match="k >= 0"):
        masked_topk(scores, limit, -1, impl="reference")
    for bad in (TopkTiles(block=3000), TopkTiles(rank_rows=12)):
        with pytest.raises(IndexerInputError, match="powers of two"):
            topk_select_triton(scores, limit, 4, bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("rows", "n"), [(1, 2048), (8, 8192), (8, 262144), (256, 65536), (2048, 2048)], ids=lambda v: str(v)
)
def test_real_sizes_without_host_sync(rows: int, n: int) -> None:
    """Decode and prefill shapes, causal limits (the first row sees everything), k = 512, no host sync."""
    device = torch.device("cuda")
    g = torch.Generator(device=device).manual_seed(rows)
    scores = torch.randn(rows, n, device=device, generator=g).relu_()  # many exact zeros: real ties
    limit = torch.randint(0, n + 1, (rows,), device=device, generator=g)
    limit[0] = n
    scores.masked_fill_(torch.arange(n, device=device)[None, :] >= limit[:, None], float("-inf"))
    masked_topk(scores, limit, 512, impl="triton")  # compile outside the sync check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        chosen = masked_topk(scores, limit, 512, impl="triton")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_same_as_reference(scores, limit, 512, chosen)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    ("rows", "n"), [(1, 2048), (8, 2048), (8, 131072)], ids=["rank", "resident", "split"]
)
def test_selection_replays_in_a_cuda_graph(rows: int, n: int) -> None:
    """Decode rows captured once, replayed on new scores: the same indices as an eager call."""
    device = torch.device("cuda")
    scores = torch.randn(rows, n, device=device)
    limit = torch.full((rows,), n, device=device, dtype=torch.int32)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        masked_topk(scores, limit, 512, impl="triton")  # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured, captured_valid = masked_topk(scores, limit, 512, impl="triton")
    scores.copy_(torch.randn(rows, n, device=device))
    graph.replay()
    eager, eager_valid = masked_topk(scores, limit, 512, impl="triton")
    assert torch.equal(captured, eager)
    assert torch.equal(captured_valid, eager_valid)


def test_the_faster_path_is_chosen_by_shape() -> None:
    """Rows held in registers and a few long rows (decode) take the kernel; many long rows (prefill)
    take torch.topk."""
    assert prefers_triton(2048, 2048) and prefers_triton(1, 262_144) and prefers_triton(8, 32_768)
    assert not prefers_triton(9, 262_144) and not prefers_triton(2048, 65_536)


def test_one_short_decode_row_is_ranked() -> None:
    """Up to 2^24 comparisons (one row of 4,096 scores) the rank layout; past it registers, then splits."""
    tiles = TopkTiles()
    assert choose_layout(tiles, 1, 4096) == choose_layout(tiles, 4, 2048) == "rank"
    assert choose_layout(tiles, 1, 4097) == choose_layout(tiles, 8, 2048) == "resident"
    assert choose_layout(tiles, 1, 8193) == "split"
    assert choose_layout(TopkTiles(rank_max_pairs=0), 1, 16) == "resident"
