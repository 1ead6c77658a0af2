"""Speculative decoding with the MTP layer on the contiguous path: the same tokens as plain greedy decoding,
the drafts' acceptance counted (about 0 with random weights, all of them when the drafts are forced right)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from deepscout.model_runtime.v4.checkpoint_run import greedy_generate, new_sequence_cache
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, tiny
from deepscout.model_runtime.v4.mtp_speculation import (
    NoMtpLayerError,
    accepted_prefix,
    speculative_greedy_generate,
)
from tests.model_runtime.v4.conftest import two_token_head

ARGS = tiny(mtp_layer_types=(LayerKind.CSA,))  # main: sliding, CSA, HCA; the MTP layer compresses too
LENGTHS = (5, 126, 131)  # the last two decode across token 128 (entries of both ratios, the window's wrap)


@pytest.fixture(scope="module")
def model() -> DeepseekV4Model:
    return DeepseekV4Model.random(ARGS, seed=0).eval()


def test_accepted_prefix_keeps_up_to_the_first_disagreement() -> None:
    assert accepted_prefix([4, 5], [4, 5, 6]) == [4, 5, 6]  # all accepted, plus the bonus token
    assert accepted_prefix([4, 5], [4, 8, 6]) == [4, 8]
    assert accepted_prefix([4], [3, 9]) == [3]
    assert accepted_prefix([], [3]) == [3]


@pytest.mark.parametrize("length", LENGTHS)
def test_speculative_greedy_matches_plain_greedy(model: DeepseekV4Model, v4: Any, length: int) -> None:
    prompt = v4.random_ids(ARGS, length, seed=length)[0].tolist()
    plain, _, _, _ = greedy_generate(model, prompt, 10)
    result = speculative_greedy_generate(model, new_sequence_cache(model), prompt, 10)
    assert result.new_ids == plain
    rate = result.stats.acceptance_rate
    assert result.stats.drafted == 8 and rate is not None and 0.0 <= rate <= 1.0  # none for the last


@pytest.mark.parametrize("length", LENGTHS)
def test_partly_right_drafts_still_give_the_plain_tokens(
    model: DeepseekV4Model, v4: Any, length: int
) -> None:
    forced = two_token_head(model)
    prompt = v4.random_ids(ARGS, length, seed=length)[0].tolist()
    plain, _, _, _ = greedy_generate(forced, prompt, 16)
    result = speculative_greedy_generate(forced, new_sequence_cache(forced), prompt, 16)
    assert result.new_ids == plain
    assert 0 < result.stats.accepted <= result.stats.drafted


def test_drafts_forced_right_are_all_accepted(model: DeepseekV4Model, v4: Any) -> None:
    with torch.no_grad():
        model.head.weight.zero_()  # every logit 0: the main model and the MTP layer both choose token 0
    try:
        prompt = v4.random_ids(ARGS, 126, seed=1)[0].tolist()
        result = speculative_greedy_generate(model, new_sequence_cache(model), prompt, 9)
    finally:
        model.head.weight.data.copy_(DeepseekV4Model.random(ARGS, seed=0).head.weight)
    assert result.new_ids == [0] * 9
    assert result.stats.acceptance_rate == 1.0 and result.stats.drafted == 4  # 1 + 4 steps of 2 tokens


def test_a_model_without_mtp_layer_is_refused(v4: Any) -> None:
    args = tiny(num_nextn_predict_layers=0)
    model = DeepseekV4Model.random(args, seed=0).eval()
    with pytest.raises(NoMtpLayerError, match="needs an MTP layer"):
        speculative_greedy_generate(model, new_sequence_cache(model), [3, 4, 5], 4)
