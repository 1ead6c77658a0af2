"""Reciprocal-rank fusion: one ranking from several, each item scoring ``sum(1 / (k + rank))`` over the
rankings that hold it (ranks from 1). Used by the hybrid retriever (BM25 + dense) and by the agent to
order the hits of a round across queries and search tools.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import TypeVar

RRF_K = 60
"""The usual constant (Cormack et al., 2009): damps the weight of the very first ranks."""

Key = TypeVar("Key", bound=Hashable)


def reciprocal_rank_fusion(ranked: Iterable[tuple[Key, int]], k: int = RRF_K) -> list[tuple[Key, float]]:
    """``(key, fused score)`` best first, from ``(key, rank)`` pairs (rank 1 = first of its ranking);
    a key ranked by several rankings adds up their scores. Ties keep the order keys were first seen in."""
    fused: dict[Key, float] = {}
    for key, rank in ranked:
        fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda item: -item[1])
