"""Cache protocol v2: `mark()` + `rollback(n)` restore exactly the state before the forgotten tokens, on the
contiguous cache and the engine's paged cache, for sliding, CSA and HCA layers (window ring wrap-around,
compressor tails and overlap state, compressed entries across entry boundaries)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from deepscout.model_runtime.v4.cache.protocol import SequenceCache
from deepscout.model_runtime.v4.engine.kv_pool import KVBlockPool
from deepscout.model_runtime.v4.engine.paged_cache import PagedSequenceCache
from deepscout.model_runtime.v4.engine.state_cache import StatePool
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs, tiny

ARGS = tiny()  # sliding, CSA (ratio 4) and HCA (ratio 128) layers, window 128
COMPRESSORS = {LayerKind.SLIDING: (), LayerKind.CSA: ("main", "indexer"), LayerKind.HCA: ("main",)}


@pytest.fixture(scope="module")
def model() -> DeepseekV4Model:
    return DeepseekV4Model.random(ARGS, seed=3).eval()


def _paged(args: ModelArgs) -> PagedSequenceCache:
    states = StatePool(args, num_slots=1)
    return PagedSequenceCache(KVBlockPool(args, num_blocks=4), states, states.allocate(), [0, 1, 2, 3])


CACHES: dict[str, Callable[[Any], SequenceCache]] = {
    "contiguous": lambda v4: v4.new_cache(ARGS),
    "paged": lambda v4: _paged(ARGS),
}


def _run(model: DeepseekV4Model, cache: SequenceCache, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]), [cache])[0]


# (prefix, kept, forgotten): the detour runs `kept` true tokens then `forgotten` wrong ones at `prefix`
CASES = [
    (126, 1, 3),  # the detour crosses token 128: HCA's first entry, a CSA entry, the window's wrap
    (126, 2, 2),  # keeps exactly the tokens up to the HCA/CSA boundary
    (127, 0, 4),  # forgets the whole forward, entries and all
    (130, 3, 5),  # a CSA boundary on each side, the ring wrapped
    (5, 1, 1),  # early: the compressors' first tails
]


@pytest.mark.parametrize("kind", sorted(CACHES))
@pytest.mark.parametrize(("prefix", "kept", "forgotten"), CASES)
def test_forward_after_a_rolled_back_detour_matches_the_straight_run(
    model: DeepseekV4Model, v4: Any, kind: str, prefix: int, kept: int, forgotten: int
) -> None:
    tokens = v4.random_ids(ARGS, prefix + kept + 6, seed=prefix)[0].tolist()
    junk = v4.random_ids(ARGS, forgotten, seed=99)[0].tolist()
    straight, detour = CACHES[kind](v4), CACHES[kind](v4)
    for cache in (straight, detour):
        _run(model, cache, tokens[:prefix])
    _run(model, straight, tokens[prefix : prefix + kept]) if kept else None
    detour.mark()
    _run(model, detour, tokens[prefix : prefix + kept] + junk)
    detour.rollback(forgotten)
    assert detour.num_tokens == straight.num_tokens == prefix + kept
    for index in range(ARGS.num_hidden_layers):
        ours, ref = detour.layer(index), straight.layer(index)
        v4.assert_close(ours.read_window().kv, ref.read_window().kv, rel=1e-6)
        assert torch.equal(ours.read_window().positions.cpu(), ref.read_window().positions.cpu())
        for name in COMPRESSORS[ours.kind]:
            assert ours.num_entries(name) == ref.num_entries(name)  # type: ignore[arg-type]
            tail, ref_tail = ours.read_tail(name), ref.read_tail(name)  # type: ignore[arg-type]
            assert (tail is None) == (ref_tail is None)
            if tail is not None and ref_tail is not None:
                assert len(tail.tensors()) == len(ref_tail.tensors())
                for got, want in zip(tail.tensors(), ref_tail.tensors(), strict=True):
                    v4.assert_close(got, want, rel=1e-5) if want.numel() else None
    rest = tokens[prefix + kept :]
    v4.assert_close(_run(model, detour, rest), _run(model, straight, rest), rel=1e-5)


@pytest.mark.parametrize("kind", sorted(CACHES))
def test_rollback_needs_a_mark_and_stays_within_it(v4: Any, model: DeepseekV4Model, kind: str) -> None:
    cache = CACHES[kind](v4)
    _run(model, cache, [3, 4, 5])
    with pytest.raises(ValueError, match="mark"):
        cache.rollback(1)
    cache.mark()
    _run(model, cache, [6, 7])
    with pytest.raises(ValueError, match=r"roll back 0\.\.2 tokens"):
        cache.rollback(3)
    cache.mark()
    cache.rollback(0)  # nothing written since the mark: nothing changes
    assert cache.num_tokens == 5
