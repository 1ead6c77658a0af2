"""The KV pool's indexer-key storages as the kernels see them: raw tensors and format, quantised where the
storage lives, and decoded by the kernels' reference exactly as the pool reads them."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.engine.kv_pool import KVBlockPool
from deepscout.model_runtime.v4.kernels.indexer_scores import dense_scores, indexer_scores
from deepscout.model_runtime.v4.kernels.paged_keys import IndexerInputError, PagedRows
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, tiny
from deepscout.model_runtime.v4.weights.quant import quantize_mxfp4


def _args() -> ModelArgs:
    return tiny((LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA), index_n_heads=4, index_head_dim=64)


def _normed(n: int, dim: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True))


@pytest.mark.parametrize(
    ("kv_dtype", "indexer_format", "expected"),
    [
        ("float32", "fp4", "plain"),
        ("bfloat16", "fp4", "plain"),
        ("paper", "fp8", "fp8"),
        ("paper", "fp4", "mxfp4"),
    ],
)
def test_indexer_storage_exposes_its_bytes_and_the_reference_reads_them_as_the_pool_does(
    kv_dtype: str, indexer_format: str, expected: str
) -> None:
    args = _args()
    pool = KVBlockPool(args, 6, kv_dtype, indexer_format=indexer_format)  # type: ignore[arg-type]
    store = pool.storage(1, "indexer")
    per_block = pool.entries_per_block(LayerKind.CSA)
    table = torch.tensor([[4, 1, 5]], dtype=torch.int32)
    count = 2 * per_block + 7
    logical = torch.arange(count)
    blocks, offsets = table[0].long()[logical // per_block], logical % per_block
    rows = _normed(count, 64, seed=1)
    store.write(blocks, offsets, rows)
    keys = store.paged_keys()
    assert keys.format == expected and keys.per_block == per_block and keys.dim == 64
    raw = (keys.data,) if keys.scale is None else (keys.data, keys.scale)
    assert [t.data_ptr() for t in raw] == [t.data_ptr() for t in store.tensors]  # views, not copies
    if expected == "mxfp4":  # quantised on the storage's device, the same bits as quantize_mxfp4
        packed, scale = quantize_mxfp4(rows)
        assert torch.equal(keys.data[blocks, offsets], packed.view(torch.uint8))
        assert keys.scale is not None and torch.equal(keys.scale[blocks, offsets], scale.view(torch.uint8))
    g = torch.Generator().manual_seed(2)
    q = torch.randn(3, 4, 64, generator=g).bfloat16()
    w = torch.randn(3, 4, generator=g)
    limit = torch.tensor([0, count - 5, count], dtype=torch.int32)
    scores = indexer_scores(
        q, w, keys, PagedRows(table, torch.tensor([0, 3], dtype=torch.int32), 3), limit, impl="reference"
    )
    expected_scores = dense_scores(q, w, store.read(blocks, offsets))
    visible = torch.arange(3 * per_block)[None, :] < limit[:, None]
    assert torch.equal(scores[:, :count][visible[:, :count]], expected_scores[visible[:, :count]])
    assert bool((scores[~visible] == float("-inf")).all())


def test_main_entries_are_not_indexer_keys() -> None:
    """The paper layout's main entries (FP8 + BF16 RoPE dims) go to attention, never to the indexer."""
    pool = KVBlockPool(_args(), 2, "paper")
    main = pool.storage(1, "main").paged_keys()
    assert main.format == "fp8_rope"
    q = torch.zeros(1, 2, main.dim)
    rows = PagedRows.single(1, q.device)
    with pytest.raises(IndexerInputError, match="not indexer keys"):
        indexer_scores(q, torch.zeros(1, 2), main, rows, torch.ones(1, dtype=torch.int32), impl="reference")
