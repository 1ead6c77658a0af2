from __future__ import annotations

import pytest

from deepscout.evals.scoring import contains_answer, normalize_answer, score_answer, token_f1


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The Beatles", "beatles"),
        ("  a   Spirit. ", "spirit"),
        ("U.S.A.", "usa"),
        ("Stanley Kubrick [1][2]", "stanley kubrick"),
        ("“Quoted” — answer", "quoted answer"),
        ("An apple, the pear", "apple pear"),
        ("", ""),
    ],
)
def test_normalize_answer(raw: str, normalised: str) -> None:
    assert normalize_answer(raw) == normalised


def test_token_f1_partial_and_disjoint() -> None:
    assert token_f1("Stanley Kubrick", "Kubrick") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("Arthur Clarke", "Kubrick") == 0.0
    assert token_f1("", "") == 1.0
    assert token_f1("the", "Kubrick") == 0.0


def test_containment_is_on_whole_words() -> None:
    assert contains_answer("It was directed by Stanley Kubrick in 1968.", "stanley kubrick")
    assert not contains_answer("Kubrickian style", "Kubrick")


def test_score_answer_takes_the_best_alias() -> None:
    score = score_answer("The USA", ["United States", "U.S.A."])
    assert score.exact_match and score.contains and score.f1 == 1.0 and score.correct
    wrong = score_answer("France", ["United States"])
    assert not wrong.correct and wrong.f1 == 0.0
    with pytest.raises(ValueError):
        score_answer("x", [])
