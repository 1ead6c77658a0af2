"""The runner stores answers as they come; a killed run resumes without duplicates or losses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from sqlalchemy import func, select

from deepscout.agent.options import Budgets, ResearchInputError
from deepscout.evals.records import AnswerCost, SystemAnswer
from deepscout.evals.runner import EvalInputError, EvalOptions, run_eval
from deepscout.evals.systems import AgentSystem, RagSystem
from deepscout.memory.db import open_database
from deepscout.memory.tables import EvalAnswer, EvalRun
from deepscout.model_runtime.chat import ChatModel


class UnusedChat(ChatModel):
    """The systems are replaced in these tests; the runner only reads the context window."""

    @property
    def _llm_type(self) -> str:
        return "unused"

    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        return 0

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        raise AssertionError("not called")


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    items = tmp_path / "items.jsonl"
    rows = [{"id": f"q{i}", "question": f"Question {i}?", "answers": [f"answer {i}"]} for i in range(5)]
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "corpus.jsonl").write_text(
        json.dumps({"id": "d1", "title": "Doc", "text": "answer 1"}) + "\n"
    )
    return items


def _answering(calls: list[str], kill_at: int | None = None):
    def answer(self: Any, item: Any) -> SystemAnswer:
        if kill_at is not None and len(calls) == kill_at:
            raise KeyboardInterrupt  # the process is stopped mid-run
        calls.append(f"{self.name}:{item.id}")
        return SystemAnswer(item.id, self.name, f"answer {item.id[1:]}", usage=AnswerCost(tool_calls=1))

    return answer


def test_killed_run_resumes_without_duplicates_or_losses(
    dataset: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = EvalOptions(dataset=dataset, systems=("agent", "rag"), model="unused")
    calls: list[str] = []
    monkeypatch.setattr(AgentSystem, "answer", _answering(calls, kill_at=3))
    monkeypatch.setattr(RagSystem, "answer", _answering(calls, kill_at=3))
    with pytest.raises(KeyboardInterrupt):
        run_eval(options, settings=settings, chat=UnusedChat())
    assert len(calls) == 3

    resumed: list[str] = []
    monkeypatch.setattr(AgentSystem, "answer", _answering(resumed))
    monkeypatch.setattr(RagSystem, "answer", _answering(resumed))
    outcome = run_eval(options, settings=settings, chat=UnusedChat())
    assert outcome.skipped == 3 and outcome.answered == 7
    assert not set(calls) & set(resumed)  # nothing answered twice
    assert len(set(calls) | set(resumed)) == 10  # nothing lost: 5 items x 2 systems

    again = run_eval(options, settings=settings, chat=UnusedChat())
    assert again.run_id == outcome.run_id and again.answered == 0 and again.skipped == 10

    db = open_database(settings)
    with db.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(EvalAnswer)) == 10
        assert session.scalar(select(func.count()).select_from(EvalRun)) == 1
    db.dispose()


def test_longer_limit_extends_the_run_and_new_config_gets_new_id(
    dataset: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(AgentSystem, "answer", _answering(calls))
    monkeypatch.setattr(RagSystem, "answer", _answering(calls))
    short = run_eval(
        EvalOptions(dataset=dataset, model="unused", limit=2), settings=settings, chat=UnusedChat()
    )
    longer = run_eval(
        EvalOptions(dataset=dataset, model="unused", limit=4), settings=settings, chat=UnusedChat()
    )
    assert longer.run_id == short.run_id and longer.skipped == 4 and longer.answered == 4
    shorter_again = run_eval(
        EvalOptions(dataset=dataset, model="unused", limit=2), settings=settings, chat=UnusedChat()
    )
    assert shorter_again.answered == 0 and shorter_again.skipped == 4  # only the items within the limit
    other = run_eval(
        EvalOptions(dataset=dataset, model="unused", limit=2, top_k=3), settings=settings, chat=UnusedChat()
    )
    assert other.run_id != short.run_id and other.answered == 4


def test_bad_options_are_refused_clearly(dataset: Path, settings: Any, tmp_path: Path) -> None:
    with pytest.raises(EvalInputError, match="unknown systems"):
        run_eval(EvalOptions(dataset=dataset, systems=("agent", "oracle")), settings=settings)
    with pytest.raises(EvalInputError, match="exactly two systems"):
        run_eval(EvalOptions(dataset=dataset, systems=("agent",), judge="smollm2"), settings=settings)
    qa = tmp_path / "simpleqa.csv"
    qa.write_text("problem,answer\nWho?,Someone\n")
    with pytest.raises(EvalInputError, match="no corpus"):
        run_eval(EvalOptions(dataset=qa), settings=settings)


def test_a_context_budget_over_the_window_is_refused_before_any_answer(dataset: Path, settings: Any) -> None:
    oversized = EvalOptions(
        dataset=dataset, model="unused", budgets=Budgets(max_context_tokens=UnusedChat().context_window + 1)
    )
    with pytest.raises(ResearchInputError, match="context window holds 8192 tokens"):
        run_eval(oversized, settings=settings, chat=UnusedChat())
    db = open_database(settings)
    with db.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(EvalAnswer)) == 0
    db.dispose()


def test_ctrl_c_stops_the_queue_at_once(
    dataset: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The item in flight is interrupted and nothing after it starts (the embedded model runs items on the
    calling thread); what finished before Ctrl-C is stored."""
    options = EvalOptions(dataset=dataset, systems=("agent", "rag"), model="unused")
    calls: list[str] = []
    monkeypatch.setattr(AgentSystem, "answer", _answering(calls, kill_at=1))
    monkeypatch.setattr(RagSystem, "answer", _answering(calls, kill_at=1))
    with pytest.raises(KeyboardInterrupt):
        run_eval(options, settings=settings, chat=UnusedChat())
    assert calls == ["agent:q0"]  # no later item was started
    db = open_database(settings)
    with db.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(EvalAnswer)) == 1
    db.dispose()


def test_run_id_prefix_is_literal(dataset: Path, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepscout.evals.store import EvalRunNotFoundError, resolve_run_id

    monkeypatch.setattr(AgentSystem, "answer", _answering([]))
    monkeypatch.setattr(RagSystem, "answer", _answering([]))
    outcome = run_eval(EvalOptions(dataset=dataset, model="unused"), settings=settings, chat=UnusedChat())
    db = open_database(settings)
    with db.session_factory() as session:
        assert resolve_run_id(session, outcome.run_id[:6]) == outcome.run_id
        for pattern in ("%", "_", outcome.run_id[:3] + "%", ""):  # SQL wildcards are not wildcards here
            with pytest.raises(EvalRunNotFoundError):
                resolve_run_id(session, pattern)
    db.dispose()
