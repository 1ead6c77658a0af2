"""Aggregates of an eval run: the pairwise table by category, objective scores and evidence recall (overall
and by difficulty / hops, model-written answers and fallbacks apart), judge calibration and cost. Pure
functions over records; the report renders them. Shares carry Wilson intervals, means bootstrap ones."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from deepscout.evals.datasets import EvalItem
from deepscout.evals.records import SystemAnswer, Verdict, evidence_recall, objective
from deepscout.evals.stats import Interval, bootstrap_mean, share_interval

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
                win=share_interval([v.outcome == "win" for v in group]),
                loss=share_interval([v.outcome == "loss" for v in group]),
                tie=share_interval([v.outcome == "tie" for v in group]),
            )
        )
    return rows


@dataclass(frozen=True)
class SystemScores:
    system: str
    category: str
    """``all``, or a difficulty / hop count as the items' tags name it."""
    n: int
    exact_match: Interval
    f1: Interval
    contains: Interval
    evidence_recall: Interval
    all_evidence_found: Interval
    errors: int
    fallbacks: int
    """Answers that are quoted sentences, not the model's own (``status == "fallback"``)."""
    contains_model: Interval
    """The gold answer contained, over the model-written answers only."""
    contains_fallback: Interval
    """The gold answer contained, over the fallback answers only."""


def _per_system(answers: Sequence[SystemAnswer]) -> list[tuple[str, list[SystemAnswer]]]:
    """The answers grouped by system, systems by name."""
    groups: dict[str, list[SystemAnswer]] = defaultdict(list)
    for answer in answers:
        groups[answer.system].append(answer)
    return sorted(groups.items())


def difficulty(item: EvalItem) -> str:
    """The item's difficulty or hop count as its tags name it (``unknown`` when untagged)."""
    return item.tags.get("difficulty", "unknown")


def _scores(
    system: str, name: str, group: Sequence[SystemAnswer], by_id: dict[str, EvalItem]
) -> SystemScores:
    scores = [objective(by_id[a.item_id], a) for a in group]
    recalls = [r for a in group if (r := evidence_recall(by_id[a.item_id], a)) is not None]
    model = [s.contains for a, s in zip(group, scores, strict=True) if a.status == "model"]
    fallback = [s.contains for a, s in zip(group, scores, strict=True) if a.status == "fallback"]
    return SystemScores(
        system=system,
        category=name,
        n=len(group),
        exact_match=share_interval([s.exact_match for s in scores]),
        f1=bootstrap_mean([s.f1 for s in scores]),
        contains=share_interval([s.contains for s in scores]),
        evidence_recall=bootstrap_mean([r.share for r in recalls]),
        all_evidence_found=share_interval([r.all_found for r in recalls]),
        errors=sum(1 for a in group if a.error),
        fallbacks=len(fallback),
        contains_model=share_interval(model),
        contains_fallback=share_interval(fallback),
    )


def system_scores(items: Sequence[EvalItem], answers: Sequence[SystemAnswer]) -> list[SystemScores]:
    """Per system: the overall row, then one row per difficulty / hop count (easy, medium, hard first)."""
    by_id = {item.id: item for item in items}
    rows = []
    for system, group in _per_system(answers):
        rows.append(_scores(system, ALL, group, by_id))
        split: dict[str, list[SystemAnswer]] = defaultdict(list)
        for answer in group:
            split[difficulty(by_id[answer.item_id])].append(answer)
        for name in sorted(split, key=lambda n: _category_order(f"{n} / ")):
            rows.append(_scores(system, name, split[name], by_id))
    return rows


MAX_ORDER_FLIP_RATE = 0.5
"""Above this share of order flips most verdicts were decided by the answers' positions, not their
content: the judge's win-rates are reported as not informative."""


@dataclass(frozen=True)
class JudgeCalibration:
    n: int
    order_flip_rate: float
    decisive_items: int
    """Items where exactly one of the two systems is objectively correct."""
    agreement_with_objective: float
    """Share of the decisive items where the judge's outcome picks the objectively correct system."""

    @property
    def informative(self) -> bool:
        """Whether the judge's verdicts say anything: judged items, and order flips at most
        :data:`MAX_ORDER_FLIP_RATE`."""
        return self.n > 0 and self.order_flip_rate <= MAX_ORDER_FLIP_RATE


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
    category: str
    """``all``, or a difficulty / hop count."""
    n: int
    tool_calls: float
    prompt_tokens: float
    computed_tokens: float
    output_tokens: float
    latency_s: float


def _cost(system: str, name: str, group: Sequence[SystemAnswer]) -> CostRow:
    n = len(group)
    return CostRow(
        system=system,
        category=name,
        n=n,
        tool_calls=sum(a.usage.tool_calls for a in group) / n,
        prompt_tokens=sum(a.usage.prompt_tokens for a in group) / n,
        computed_tokens=sum(a.usage.computed_tokens for a in group) / n,
        output_tokens=sum(a.usage.output_tokens for a in group) / n,
        latency_s=sum(a.usage.latency_s for a in group) / n,
    )


def cost_rows(items: Sequence[EvalItem], answers: Sequence[SystemAnswer]) -> list[CostRow]:
    """Per system: the overall row, then one row per difficulty / hop count."""
    by_id = {item.id: item for item in items}
    rows = []
    for system, group in _per_system(answers):
        rows.append(_cost(system, ALL, group))
        split: dict[str, list[SystemAnswer]] = defaultdict(list)
        for answer in group:
            split[difficulty(by_id[answer.item_id])].append(answer)
        for name in sorted(split, key=lambda n: _category_order(f"{n} / ")):
            rows.append(_cost(system, name, split[name]))
    return rows
