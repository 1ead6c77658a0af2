"""The decode batch's KV layers grow in place, holding what concatenation would, past reallocations."""

from __future__ import annotations

import torch

from deepscout.model_runtime.chat.backends.hf_ragged_cache import SPARE_COLUMNS, GrowingLayer


def test_a_growing_layer_holds_what_concatenation_would_across_reallocations() -> None:
    torch.manual_seed(0)
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = GrowingLayer(keys, values)
    expected_keys, expected_values = keys, values
    for width in (1, 1, SPARE_COLUMNS, 7, 1):
        new_keys, new_values = torch.randn(2, 3, width, 4), torch.randn(2, 3, width, 4)
        expected_keys = torch.cat([expected_keys, new_keys], dim=2)
        expected_values = torch.cat([expected_values, new_values], dim=2)
        got_keys, got_values = layer.update(new_keys, new_values)
        assert torch.equal(got_keys, expected_keys) and torch.equal(got_values, expected_values)
        assert layer.keys is got_keys and layer.get_seq_length() == expected_keys.shape[2]
