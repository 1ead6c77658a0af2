"""Confidence intervals: Wilson score intervals for shares (win/loss/tie rates, answers contained, all
evidence found), which stay informative at 0% and 100% (a bootstrap collapses to [0, 0] there), and the
percentile bootstrap for means of other values (token F1, evidence recall)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Percentile bootstrap of the mean of VALUES (a share when the values are 0/1)."""
    if not values:
        return Interval(float("nan"), float("nan"), float("nan"))
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = means[int(tail * (resamples - 1))]
    high = means[int((1 - tail) * (resamples - 1))]
    return Interval(sum(values) / n, low, high)


Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, *, z: float = Z_95) -> Interval:
    """The Wilson score interval of the share ``successes / n`` (95% by default); NaN when ``n`` is 0."""
    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n ({n}), not {successes}")
    share = successes / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(share, max(0.0, centre - half), min(1.0, centre + half))


def share_interval(flags: Sequence[bool]) -> Interval:
    """The Wilson interval of the share of true ``flags``."""
    return wilson_interval(sum(flags), len(flags))
