from __future__ import annotations

import pytest

from deepscout.evals.judges import PairwiseVerdict, combine_orders
from deepscout.evals.stats import bootstrap_mean


def _v(winner: str) -> PairwiseVerdict:
    return PairwiseVerdict(winner=winner, reason="r")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("first_as_a", "first_as_b", "outcome", "flip"),
    [
        ("A", "B", "win", False),  # first system preferred in both orders
        ("B", "A", "loss", False),  # second system preferred in both orders
        ("tie", "tie", "tie", False),
        ("A", "A", "tie", True),  # the judge preferred position A both times: a flip, so a tie
        ("B", "B", "tie", True),
        ("A", "tie", "tie", True),
        ("tie", "A", "tie", True),
    ],
)
def test_order_swap_rule(first_as_a: str, first_as_b: str, outcome: str, flip: bool) -> None:
    result = combine_orders(_v(first_as_a), _v(first_as_b))
    assert result.outcome == outcome
    assert result.order_flip is flip


def test_verdict_rejects_unknown_winner_and_extra_keys() -> None:
    with pytest.raises(ValueError):
        PairwiseVerdict.model_validate({"winner": "C", "reason": "x"})
    with pytest.raises(ValueError):
        PairwiseVerdict.model_validate({"winner": "A", "reason": "x", "score": 3})


def test_bootstrap_interval_brackets_the_share_and_is_deterministic() -> None:
    values = [1.0] * 60 + [0.0] * 40
    interval = bootstrap_mean(values, seed=1)
    assert interval.estimate == pytest.approx(0.6)
    assert interval.low < 0.6 < interval.high
    assert interval.low > 0.45 and interval.high < 0.75  # ≈ ±1.96·sqrt(.24/100) = ±0.096
    assert bootstrap_mean(values, seed=1) == interval
    assert bootstrap_mean([1.0] * 10).low == 1.0


def test_bootstrap_of_nothing_is_nan() -> None:
    interval = bootstrap_mean([])
    assert interval.estimate != interval.estimate
