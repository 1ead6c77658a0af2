"""Tie-aware comparison of two top-k selections made from (nearly) the same scores.

Two exact computations of the same scores can differ in the last float32 bits, and where the k-th and
(k+1)-th scores are that close the two top-k sets swap an entry. Such a flip is not an error; any other
difference is. Given the reference's scores and both selections, a selected entry that only one side
chose is *explained* when its reference score lies within `tolerance` of the reference's k-th score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TopkAgreement:
    """How two selections differ: `flips` entries chosen by the reference and not by the other side,
    of which `unexplained` (counting both sides' extra entries) are not near-ties at the k-th score."""

    selections: int
    flips: int
    unexplained: int


def compare_topk(
    scores: torch.Tensor,
    reference: tuple[torch.Tensor, torch.Tensor],
    other: tuple[torch.Tensor, torch.Tensor],
    *,
    tolerance: float,
) -> TopkAgreement:
    """Compare `other`'s (indices `[n, k]`, validity `[n, k]`) with `reference`'s, both taken from scores
    `[n, T]` (the reference's, -inf where not selectable)."""
    n, width = scores.shape
    chosen = []
    for indices, valid in (reference, other):
        mask = torch.zeros(n, width, dtype=torch.bool, device=scores.device)
        chosen.append(mask.scatter_(1, indices.long(), valid))
    ref_set, other_set = chosen
    kth = scores.masked_fill(~ref_set, float("inf")).amin(dim=1, keepdim=True)
    near = (scores - kth).abs() <= tolerance
    differs = ref_set ^ other_set
    return TopkAgreement(
        selections=int(ref_set.sum()),
        flips=int((ref_set & ~other_set).sum()),
        unexplained=int((differs & ~near).sum()),
    )
