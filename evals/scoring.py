"""Objective answer scoring against gold aliases: normalised exact match, token F1, containment.

Normalisation is the SQuAD/HotpotQA one: lower-case, drop punctuation and the articles a/an/the,
collapse whitespace. Each score takes the best over the gold aliases.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation + "‘’“”–—")
_CITATION = re.compile(r"\[\d+\]")


def normalize_answer(text: str) -> str:
    text = _CITATION.sub(" ", text.lower())
    text = text.translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def token_f1(prediction: str, gold: str) -> float:
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision = common / len(predicted)
    recall = common / len(expected)
    return 2 * precision * recall / (precision + recall)


def contains_answer(prediction: str, gold: str) -> bool:
    """The normalised gold answer appears in the normalised prediction as whole words."""
    needle = normalize_answer(gold)
    return bool(needle) and f" {needle} " in f" {normalize_answer(prediction)} "


@dataclass(frozen=True)
class ObjectiveScore:
    exact_match: bool
    f1: float
    contains: bool

    @property
    def correct(self) -> bool:
        """The verdict the judge is calibrated against: exact match or the gold answer contained."""
        return self.exact_match or self.contains


def score_answer(prediction: str, golds: Sequence[str]) -> ObjectiveScore:
    if not golds:
        raise ValueError("score_answer needs at least one gold answer")
    return ObjectiveScore(
        exact_match=any(exact_match(prediction, g) for g in golds),
        f1=max(token_f1(prediction, g) for g in golds),
        contains=any(contains_answer(prediction, g) for g in golds),
    )
