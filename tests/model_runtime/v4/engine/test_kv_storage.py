"""KV block pool storage formats and state slots: round trips, measured bytes, ring order, snapshots."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.cache.protocol import CompressorTail
from deepscout.model_runtime.v4.engine.kv_pool import KVBlockPool, KvFormatError
from deepscout.model_runtime.v4.engine.state_cache import SnapshotStore, StatePool, StatePoolExhausted
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, tiny
from deepscout.model_runtime.v4.weights.quant import dequantize_mxfp4


def _normed(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True))


def _flash_like() -> ModelArgs:
    """V4-Flash attention shapes (head_dim 512, rope 64, indexer 128) on a 3-layer stack."""
    return tiny(
        (LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA),
        head_dim=512,
        qk_rope_head_dim=64,
        index_head_dim=128,
    )


def test_float32_storage_round_trips_exactly(tiny_args: ModelArgs) -> None:
    pool = KVBlockPool(tiny_args, 4, "float32")
    store = pool.storage(1, "main")
    rows = _normed(5, tiny_args.head_dim)
    blocks, offsets = torch.tensor([3, 3, 0, 1, 2]), torch.tensor([0, 31, 5, 7, 9])
    store.write(blocks, offsets, rows)
    assert torch.equal(store.read(blocks, offsets), rows)
    assert store.read(blocks[None, :2], offsets[None, :2]).shape == (1, 2, tiny_args.head_dim)
    with pytest.raises(KvFormatError, match="no paged 'main'"):
        pool.storage(0, "main")  # a sliding layer has no compressed entries


def test_paper_layout_bytes_per_entry_and_error() -> None:
    args = _flash_like()
    pool = KVBlockPool(args, 2, "paper", indexer_format="fp4")
    per_block = {k: v // 2 for k, v in pool.nbytes_by_kind().items()}
    assert per_block["csa.main"] == 32 * 576  # 448 FP8 + 64 x BF16
    assert per_block["hca.main"] == 1 * 576
    assert per_block["csa.indexer"] == 32 * (64 + 4)  # MXFP4: 128 e2m1 + 4 e8m0 scales
    rows = _normed(32, 512)
    idx = torch.zeros(32, dtype=torch.long), torch.arange(32)
    main = pool.storage(1, "main")
    main.write(*idx, rows)
    back = main.read(*idx).float()
    assert back.dtype == torch.float32 and back.shape == rows.shape
    assert torch.equal(back[:, 448:], rows[:, 448:].bfloat16().float())  # rope kept in BF16
    assert (back[:, :448] - rows[:, :448]).abs().max() <= 0.07 * rows.abs().max()  # e4m3: 3 mantissa bits
    keys = _normed(32, 128, seed=1)
    indexer = pool.storage(1, "indexer")
    indexer.write(*idx, keys)
    decoded = indexer.read(*idx).float()
    stored = indexer.tensors  # (packed e2m1 pairs, e8m0 scales): the checkpoint loader's MXFP4 format
    reference = dequantize_mxfp4(stored[0][0], stored[1][0])
    assert torch.equal(decoded, reference.bfloat16().float())
    err = (decoded - keys).abs().max()
    assert err <= 0.26 * keys.abs().max()  # e2m1 with a power-of-two scale per 32 values
    fp8 = KVBlockPool(args, 2, "paper", indexer_format="fp8")
    assert fp8.nbytes_by_kind()["csa.indexer"] // 2 == 32 * 128


def test_fp4_indexer_needs_dims_in_blocks_of_32(tiny_args: ModelArgs) -> None:
    with pytest.raises(KvFormatError, match="indexer_format='fp8'"):
        KVBlockPool(tiny_args, 1, "paper", indexer_format="fp4")  # index_head_dim 16


def test_window_ring_keeps_the_last_window_oldest_first(tiny_args: ModelArgs) -> None:
    pool = StatePool(tiny_args, 2)
    slot = pool.allocate()
    w, d = tiny_args.sliding_window, tiny_args.head_dim
    kv = torch.randn(400, d)
    pos = torch.arange(400)
    written = 0
    for n in (5, 100, 1, 130, 64, 100):
        pool.write_window(slot, 0, kv[written : written + n], pos[written : written + n], start=written)
        written += n
        view = pool.read_window(slot, 0)
        lo = max(0, written - w)
        assert torch.equal(view.positions, pos[lo:written])
        assert torch.equal(view.kv, kv[lo:written])


def test_window_ring_is_addressed_by_position(tiny_args: ModelArgs) -> None:
    """Position p sits at ring row p % window whatever the write pattern (restores included), and rows a
    sequence never wrote hold positions larger than any of its queries."""
    pool = StatePool(tiny_args, 1)
    slot = pool.allocate()
    w, d = tiny_args.sliding_window, tiny_args.head_dim
    _, ring_pos, _ = pool.layer_tensors(0)
    assert bool((ring_pos[slot] > 10**15).all())
    pool.write_window(slot, 0, torch.randn(7, d), torch.arange(300, 307), start=300)
    assert torch.equal(ring_pos[slot, torch.arange(300, 307) % w], torch.arange(300, 307))
    assert torch.equal(pool.read_window(slot, 0).positions, torch.arange(300, 307))


def test_device_decoded_slots_derive_their_bookkeeping(tiny_args: ModelArgs) -> None:
    """After `mark_decoded`, reads see the window and tails of the new token count."""
    pool = StatePool(tiny_args, 1)
    slot = pool.allocate()
    w, d = tiny_args.sliding_window, tiny_args.head_dim
    pool.write_window(slot, 0, torch.randn(10, d), torch.arange(10), start=0)
    _, ring_pos, _ = pool.layer_tensors(0)
    ring_pos[slot, torch.arange(10, 13) % w] = torch.arange(10, 13)  # what device steps write
    pool.mark_decoded(slot, 13)
    assert torch.equal(pool.read_window(slot, 0).positions, torch.arange(13))
    tail = pool.read_tail(slot, 1, "main")
    assert tail is not None and tail.kv.shape[0] == 13 % tiny_args.ratio(tiny_args.layer_types[1])


def test_tails_and_snapshots_round_trip(tiny_args: ModelArgs) -> None:
    pool = StatePool(tiny_args, 2)
    a, b = pool.allocate(), pool.allocate()
    with pytest.raises(StatePoolExhausted):
        pool.allocate()
    assert pool.read_tail(a, 1, "main") is None
    d = tiny_args.head_dim
    tail = CompressorTail(torch.randn(3, 2 * d), torch.randn(3, 2 * d), torch.randn(4, d), torch.randn(4, d))
    pool.write_tail(a, 1, "main", tail)
    pool.write_window(a, 2, torch.randn(50, d), torch.arange(50), start=0)
    snap = pool.capture(a, 50)
    pool.write_tail(a, 1, "main", CompressorTail(torch.randn(1, 2 * d), torch.randn(1, 2 * d)))
    pool.restore(b, snap)
    got = pool.read_tail(b, 1, "main")
    assert got is not None and got.overlap_kv is not None and tail.overlap_kv is not None
    assert torch.equal(got.kv, tail.kv) and torch.equal(got.overlap_kv, tail.overlap_kv)
    assert torch.equal(pool.read_window(b, 2).kv, pool.read_window(a, 2).kv)
    assert pool.read_tail(b, 1, "indexer") is None
    assert snap.nbytes > 0 and pool.slot_nbytes == pool.nbytes // 2


def test_snapshot_store_keeps_to_its_budget(tiny_args: ModelArgs) -> None:
    pool = StatePool(tiny_args, 1)
    slot = pool.allocate()
    pool.write_window(slot, 0, torch.randn(128, tiny_args.head_dim), torch.arange(128), start=0)
    snap = pool.capture(slot, 128)
    store = SnapshotStore(budget_bytes=2 * snap.nbytes)
    assert store.put(1, snap) and store.put(2, snap)
    assert store.get(1) is snap  # 1 becomes most recent
    assert store.put(3, snap)
    assert 2 not in store and 1 in store and 3 in store and store.nbytes <= store.budget_bytes
    assert not SnapshotStore(budget_bytes=snap.nbytes - 1).put(1, snap)
