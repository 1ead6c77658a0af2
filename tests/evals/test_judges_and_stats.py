from __future__ import annotations

import pytest

from deepscout.evals.judges import PairwiseVerdict, combine_orders
from deepscout.evals.stats import bootstrap_mean, wilson_interval


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


@pytest.mark.parametrize(("successes", "n"), [(0, 20), (20, 20), (0, 1)])
def test_wilson_interval_does_not_collapse_at_the_ends(successes: int, n: int) -> None:
    interval = wilson_interval(successes, n)
    assert interval.estimate == successes / n
    assert interval.high - interval.low > 0.1  # a bootstrap of all-equal values gives [x, x]
    assert 0.0 <= interval.low <= interval.estimate <= interval.high <= 1.0


def test_wilson_interval_matches_the_formula() -> None:
    interval = wilson_interval(60, 100)
    assert interval.low == pytest.approx(0.502, abs=1e-3) and interval.high == pytest.approx(0.691, abs=1e-3)


def test_a_judge_that_flips_with_the_order_is_not_informative() -> None:
    from deepscout.evals.summary import MAX_ORDER_FLIP_RATE, JudgeCalibration

    assert JudgeCalibration(10, MAX_ORDER_FLIP_RATE, 0, float("nan")).informative
    assert not JudgeCalibration(10, MAX_ORDER_FLIP_RATE + 0.1, 0, float("nan")).informative
    assert not JudgeCalibration(0, float("nan"), 0, float("nan")).informative
