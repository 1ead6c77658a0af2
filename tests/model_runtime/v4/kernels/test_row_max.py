"""Each row's first largest index and log-sum-exp on the Triton path equal the reference's: ties keep the
first index (within a block, across blocks and across chunks), rows partly or wholly `-inf` (a logits
processor's masks) and a vocabulary that ends mid-chunk."""

from __future__ import annotations

import pytest
import torch

from deepscout.model_runtime.v4.kernels.row_max import row_max_logsumexp
from deepscout.model_runtime.v4.kernels.row_max_triton import CHUNK


def test_the_triton_path_matches_the_reference(device: torch.device) -> None:
    cols = 2 * CHUNK + 777
    logits = torch.randn(5, cols, generator=torch.Generator().manual_seed(0)).mul_(4)
    logits[1, [10, CHUNK + 3, 2 * CHUNK + 5]] = 50.0  # the largest value three times, in three chunks
    logits[2, [7, 9]] = 60.0  # twice in one block
    logits[3, : CHUNK + 100] = float("-inf")  # a chunk wholly masked, the next one partly
    logits[4] = float("-inf")
    logits = logits.to(device)
    ids, lse = row_max_logsumexp(logits, impl="triton")
    want_ids, want_lse = row_max_logsumexp(logits, impl="reference")
    assert ids.tolist() == want_ids.tolist() == [ids[0].item(), 10, 7, ids[3].item(), 0]
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)


def test_bad_logits_are_refused() -> None:
    with pytest.raises(ValueError, match="float32"):
        row_max_logsumexp(torch.zeros(2, 3, dtype=torch.bfloat16), impl="triton")
