"""Eval runs in the database: the run and its items, each system's answer, each verdict.

Answers and verdicts are written one at a time, each in its own short transaction, as soon as they exist,
so a killed run loses at most the item in flight; unique constraints keep a rerun from duplicating one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from deepscout.errors import DeepscoutError
from deepscout.evals.datasets import EvalItem
from deepscout.evals.records import SystemAnswer, Verdict
from deepscout.memory.tables import EvalAnswer, EvalRun, EvalVerdict


class EvalRunNotFoundError(DeepscoutError, LookupError):
    """No eval run has this id (or prefix)."""


def ensure_eval_run(
    session: Session,
    *,
    run_id: str,
    dataset: str,
    config: dict[str, Any],
    manifest: dict[str, Any],
    items: Sequence[EvalItem],
) -> EvalRun:
    """Create the run, or extend a stored one with new items (a rerun with a larger limit)."""
    run = session.get(EvalRun, run_id)
    rows = [item.to_json() for item in items]
    if run is None:
        run = EvalRun(id=run_id, dataset=dataset, config=config, manifest=manifest, items=rows)
        session.add(run)
        return run
    known = {row["id"] for row in run.items}
    run.items = [*run.items, *(row for row in rows if row["id"] not in known)]
    run.manifest = manifest
    return run


def answered(session: Session, *, run_id: str) -> set[tuple[str, str]]:
    """(item id, system) pairs already answered in this run."""
    rows = session.execute(
        select(EvalAnswer.item_id, EvalAnswer.system).where(EvalAnswer.eval_run_id == run_id)
    ).all()
    return {(row.item_id, row.system) for row in rows}


def judged(session: Session, *, run_id: str) -> set[str]:
    return set(session.scalars(select(EvalVerdict.item_id).where(EvalVerdict.eval_run_id == run_id)))


def save_answer(session: Session, *, run_id: str, answer: SystemAnswer) -> None:
    session.add(
        EvalAnswer(eval_run_id=run_id, item_id=answer.item_id, system=answer.system, payload=answer.to_json())
    )


def save_verdict(session: Session, *, run_id: str, verdict: Verdict) -> None:
    session.add(
        EvalVerdict(
            eval_run_id=run_id, item_id=verdict.item_id, outcome=verdict.outcome, payload=asdict(verdict)
        )
    )


def resolve_run_id(session: Session, run_id: str) -> str:
    """The full id of the run named by ``run_id`` or by a unique prefix of it (an empty prefix names none)."""
    if not run_id:
        raise EvalRunNotFoundError("no eval run id given; `deepscout eval list` shows the runs")
    # autoescape: '%' and '_' in what the user typed are characters, not wildcards.
    matches = list(session.scalars(select(EvalRun.id).where(EvalRun.id.startswith(run_id, autoescape=True))))
    if len(matches) != 1:
        known = ", ".join(session.scalars(select(EvalRun.id).order_by(EvalRun.created_at.desc()).limit(10)))
        what = "no eval run" if not matches else "several eval runs"
        raise EvalRunNotFoundError(f"{what} match {run_id!r}; recent runs: {known or 'none'}")
    return matches[0]


def load_run(
    session: Session, *, run_id: str
) -> tuple[EvalRun, list[EvalItem], list[SystemAnswer], list[Verdict]]:
    run = session.get(EvalRun, resolve_run_id(session, run_id))
    assert run is not None
    items = [EvalItem.from_json(row) for row in run.items]
    answers = [
        SystemAnswer.from_json(row.payload)
        for row in session.scalars(
            select(EvalAnswer).where(EvalAnswer.eval_run_id == run.id).order_by(EvalAnswer.id)
        )
    ]
    verdicts = [
        Verdict(**row.payload)
        for row in session.scalars(
            select(EvalVerdict).where(EvalVerdict.eval_run_id == run.id).order_by(EvalVerdict.id)
        )
    ]
    return run, items, answers, verdicts


def list_eval_runs(session: Session, *, limit: int = 20) -> list[EvalRun]:
    return list(session.scalars(select(EvalRun).order_by(EvalRun.created_at.desc()).limit(limit)))
