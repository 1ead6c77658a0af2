"""Pairwise LLM judging with order swap.

Each item is judged twice, once with the system under test shown as A and once as B. When the two
orders agree, that is the outcome; when they disagree the outcome is a tie and the item counts as an
order flip, so a judge that prefers a position rather than an answer shows itself in the flip rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from deepscout.evals.judge_prompts import PAIRWISE_JUDGE_SYSTEM, PAIRWISE_JUDGE_USER
from deepscout.tools.untrusted import wrap_untrusted

Winner = Literal["A", "B", "tie"]
Outcome = Literal["win", "loss", "tie"]


class PairwiseVerdict(BaseModel):
    """What the judge returns for one ordering."""

    model_config = ConfigDict(extra="forbid")
    winner: Winner
    reason: str = Field(max_length=400)


@dataclass(frozen=True)
class PairwiseResult:
    """The outcome for the first system (the one under test) against the second."""

    outcome: Outcome
    first_as_a: PairwiseVerdict
    first_as_b: PairwiseVerdict

    @property
    def order_flip(self) -> bool:
        return outcome_first_as_a(self.first_as_a.winner) != outcome_first_as_b(self.first_as_b.winner)


_FIRST_AS_A: dict[Winner, Outcome] = {"A": "win", "B": "loss", "tie": "tie"}
_FIRST_AS_B: dict[Winner, Outcome] = {"A": "loss", "B": "win", "tie": "tie"}


def outcome_first_as_a(winner: Winner) -> Outcome:
    return _FIRST_AS_A[winner]


def outcome_first_as_b(winner: Winner) -> Outcome:
    return _FIRST_AS_B[winner]


def combine_orders(first_as_a: PairwiseVerdict, first_as_b: PairwiseVerdict) -> PairwiseResult:
    """The order-swap rule: agreement stands, disagreement is a tie."""
    a = outcome_first_as_a(first_as_a.winner)
    b = outcome_first_as_b(first_as_b.winner)
    return PairwiseResult(outcome=a if a == b else "tie", first_as_a=first_as_a, first_as_b=first_as_b)


class PairwiseJudge:
    """Judges two answers with any chat model that supports structured output."""

    def __init__(self, chat_model: Any) -> None:
        self._structured = chat_model.with_structured_output(PairwiseVerdict)

    def _ask(self, question: str, gold: str | None, answer_a: str, answer_b: str) -> PairwiseVerdict:
        gold_line = f"Gold answer: {gold}\n" if gold else ""
        messages = [
            SystemMessage(PAIRWISE_JUDGE_SYSTEM),
            HumanMessage(
                PAIRWISE_JUDGE_USER.format(
                    question=question,
                    gold_line=gold_line,
                    answer_a=wrap_untrusted(answer_a, origin="answer", label="A"),
                    answer_b=wrap_untrusted(answer_b, origin="answer", label="B"),
                )
            ),
        ]
        verdict = self._structured.invoke(messages)
        return verdict if isinstance(verdict, PairwiseVerdict) else PairwiseVerdict.model_validate(verdict)

    def judge(self, *, question: str, gold: str | None, first: str, second: str) -> PairwiseResult:
        return combine_orders(
            self._ask(question, gold, first, second),
            self._ask(question, gold, second, first),
        )
