"""Aggregates of an eval run: the pairwise table by category, objective scores, evidence recall, judge
calibration and cost. Pure functions over records; the report renders them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from deepscout.evals.datasets import EvalItem
from deepscout.evals.records import SystemAnswer, Verdict, evidence_recall, objective
from deepscout.evals.stats import Interval, bootstrap_mean

ALL = "all"
DIFFICULTY_ORDER = ("easy", "medium", "hard")


def category(item: EvalItem) -> str:
    """The paper's categories: difficulty × objective/subjective, from the item's tags as they are."""
    return f"{item.tags.get('difficulty', 'unknown')} / {item.tags.get('kind', 'objective')}"


def _category_order(name: str) -> tuple[bool, int, str]:
    """Easy, medium, hard (other difficulties after them by name), the overall row last."""
    difficulty = name.split(" / ", 1)[0]
    rank = DIFFICULTY_ORDER.index(difficulty) if difficulty in DIFFICULTY_ORDER else len(DIFFICULTY_ORDER)
    return name == ALL, rank, name


@dataclass(frozen=True)
class PairwiseRow:
    category: str
    n: int
    win: Interval
    loss: Interval
    tie: Interval


def pairwise_rows(items: Sequence[EvalItem], verdicts: Sequence[Verdict]) -> list[PairwiseRow]:
    by_id = {item.id: item for item in items}
    groups: dict[str, list[Verdict]] = defaultdict(list)
    for verdict in verdicts:
        groups[category(by_id[verdict.item_id])].append(verdict)
        groups[ALL].append(verdict)
    rows = []
    for name in sorted(groups, key=_category_order):
        group = groups[name]
        rows.append(
            PairwiseRow(
                category=name,
                n=len(group),
                win=bootstrap_mean([float(v.outcome == "win") for v in group]),
                loss=bootstrap_mean([float(v.outcome == "loss") for v in group]),
                tie=bootstrap_mean([float(v.outcome == "tie") for v in group]),
            )
        )
    return rows


@dataclass(frozen=True)
class SystemScores:
    system: str
    n: int
    exact_match: Interval
    f1: Interval
    contains: Interval
    evidence_recall: Interval
    all_evidence_found: Interval
    errors: int


def _per_system(answers: Sequence[SystemAnswer]) -> list[tuple[str, list[SystemAnswer]]]:
    """The answers grouped by system, systems by name."""
    groups: dict[str, list[SystemAnswer]] = defaultdict(list)
    for answer in answers:
        groups[answer.system].append(answer)
    return sorted(groups.items())


def system_scores(items: Sequence[EvalItem], answers: Sequence[SystemAnswer]) -> list[SystemScores]:
    by_id = {item.id: item for item in items}
    rows = []
    for system, group in _per_system(answers):
        scores = [objective(by_id[a.item_id], a) for a in group]
        recalls = [r for a in group if (r := evidence_recall(by_id[a.item_id], a)) is not None]
        rows.append(
            SystemScores(
                system=system,
                n=len(group),
                exact_match=bootstrap_mean([float(s.exact_match) for s in scores]),
                f1=bootstrap_mean([s.f1 for s in scores]),
                contains=bootstrap_mean([float(s.contains) for s in scores]),
                evidence_recall=bootstrap_mean([r.share for r in recalls]),
                all_evidence_found=bootstrap_mean([float(r.all_found) for r in recalls]),
                errors=sum(1 for a in group if a.error),
            )
        )
    return rows


@dataclass(frozen=True)
class JudgeCalibration:
    n: int
    order_flip_rate: float
    decisive_items: int
    """Items where exactly one of the two systems is objectively correct."""
    agreement_with_objective: float
    """Share of the decisive items where the judge's outcome picks the objectively correct system."""


def judge_calibration(
    items: Sequence[EvalItem], answers: Sequence[SystemAnswer], verdicts: Sequence[Verdict]
) -> JudgeCalibration:
    by_id = {item.id: item for item in items}
    by_key = {(a.item_id, a.system): a for a in answers}
    decisive = agreeing = 0
    for verdict in verdicts:
        item = by_id[verdict.item_id]
        first, second = by_key.get((item.id, verdict.first)), by_key.get((item.id, verdict.second))
        if first is None or second is None:
            continue
        first_ok, second_ok = objective(item, first).correct, objective(item, second).correct
        if first_ok == second_ok:
            continue
        decisive += 1
        agreeing += verdict.outcome == ("win" if first_ok else "loss")
    n = len(verdicts)
    return JudgeCalibration(
        n=n,
        order_flip_rate=sum(v.order_flip for v in verdicts) / n if n else float("nan"),
        decisive_items=decisive,
        agreement_with_objective=agreeing / decisive if decisive else float("nan"),
    )


@dataclass(frozen=True)
class CostRow:
    system: str
    n: int
    tool_calls: float
    prompt_tokens: float
    computed_tokens: float
    output_tokens: float
    latency_s: float


def cost_rows(answers: Sequence[SystemAnswer]) -> list[CostRow]:
    rows = []
    for system, group in _per_system(answers):
        n = len(group)
        rows.append(
            CostRow(
                system=system,
                n=n,
                tool_calls=sum(a.usage.tool_calls for a in group) / n,
                prompt_tokens=sum(a.usage.prompt_tokens for a in group) / n,
                computed_tokens=sum(a.usage.computed_tokens for a in group) / n,
                output_tokens=sum(a.usage.output_tokens for a in group) / n,
                latency_s=sum(a.usage.latency_s for a in group) / n,
            )
        )
    return rows
