"""`Sequence`'s token views: per-step code reads slices, never the whole prompt + output list."""

from __future__ import annotations

import pytest

from deepscout.model_runtime.v4.engine.request import GenerationRequest
from deepscout.model_runtime.v4.engine.sequence import Sequence


@pytest.mark.parametrize(("start", "stop"), [(0, 0), (0, 3), (2, 5), (5, 7), (0, 7), (4, 4), (6, 7)])
def test_token_slice_equals_the_slice_of_all_tokens(start: int, stop: int) -> None:
    seq = Sequence("r", GenerationRequest(prompt_ids=[1, 2, 3, 4, 5]), 0, [1, 2, 3, 4, 5], output=[6, 7])
    assert seq.token_slice(start, stop) == seq.tokens[start:stop]
    assert seq.num_tokens == len(seq.tokens) == 7
