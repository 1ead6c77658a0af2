"""Ragged batches (rows of different lengths and start positions in one forward) against batch-1 runs."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.model.packing import ForwardInputError
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, tiny

S, C, H = LayerKind.SLIDING, LayerKind.CSA, LayerKind.HCA
ARGS = tiny((S, C, H, C), num_hash_layers=1)
# per step, how many tokens each of 3 rows feeds (0 = the row sits this step out)
STEPS = [[5, 130, 37], [1, 1, 1], [3, 0, 64], [1, 2, 1], [0, 1, 200], [1, 1, 1]]


@pytest.fixture(scope="module")
def model() -> DeepseekV4Model:
    return DeepseekV4Model.random(ARGS, seed=11).eval()


@pytest.mark.parametrize("impl", ["sparse", "naive"])
def test_ragged_rows_match_their_batch_of_one_runs(model: DeepseekV4Model, v4, impl: str) -> None:
    totals = [sum(step[r] for step in STEPS) for r in range(3)]
    streams = [v4.random_ids(ARGS, n, seed=20 + r)[0] for r, n in enumerate(totals)]
    caches = [v4.new_cache(ARGS) for _ in range(3)]
    ragged: list[list[torch.Tensor]] = [[], [], []]
    fed = [0, 0, 0]
    with torch.no_grad():
        for step in STEPS:
            rows = [r for r in range(3) if step[r]]
            width = max(step[r] for r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : step[r]] = streams[r][fed[r] : fed[r] + step[r]]
            logits = model(ids, [caches[r] for r in rows], [step[r] for r in rows], attn_impl=impl)
            for i, r in enumerate(rows):
                ragged[r].append(logits[i, : step[r]])
                fed[r] += step[r]
                assert caches[r].num_tokens == fed[r]
            last = model(ids, [v4.new_cache(ARGS) for _ in rows], [step[r] for r in rows], last_only=True)
            assert last.shape == (len(rows), ARGS.vocab_size)
        for r in range(3):
            alone = []
            cache = v4.new_cache(ARGS)
            start = 0
            for step in STEPS:
                if step[r]:
                    alone.append(
                        model(streams[r][start : start + step[r]].view(1, -1), [cache], attn_impl=impl)[0]
                    )
                    start += step[r]
            v4.assert_close(torch.cat(ragged[r]), torch.cat(alone), rel=1e-5)


def test_padding_positions_are_zero_and_bad_inputs_are_named(model: DeepseekV4Model, v4) -> None:
    ids = v4.random_ids(ARGS, 6, batch=2)
    with torch.no_grad():
        logits = model(ids, [v4.new_cache(ARGS), v4.new_cache(ARGS)], [6, 2])
    assert torch.all(logits[1, 2:] == 0) and torch.all(logits[0].abs().sum(-1) > 0)
    with pytest.raises(ForwardInputError, match="one cache per row"):
        model(ids, [v4.new_cache(ARGS)])
    with pytest.raises(ForwardInputError, match="lengths"):
        model(ids, [v4.new_cache(ARGS), v4.new_cache(ARGS)], [7, 1])
    with pytest.raises(ForwardInputError, match=r"\[batch, seq\]"):
        model(ids[0], [v4.new_cache(ARGS)])
