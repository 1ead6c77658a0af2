"""Resume after an interrupted run: the run stops mid-graph, then continues by thread id from its last
checkpoint, with nothing done twice (steps, tool calls, sources) and the same run id."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from deepscout.agent.api import research
from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.memory.tables import Run, Step, ToolCall

QUESTION = "Where was the author of Dracula born?"


def _power_cut(messages) -> str:
    raise KeyboardInterrupt("power cut during the reflection")


def test_interrupted_run_resumes_by_thread_id(settings, small_corpus, scripted) -> None:
    first = scripted(['{"queries":["Dracula author"]}', _power_cut])
    with pytest.raises(KeyboardInterrupt):
        research(
            QUESTION,
            settings=settings,
            model=first,
            options=ResearchOptions(hits_per_query=2, budgets=Budgets(max_steps=3)),
            thread_id="thread-1",
            database=small_corpus,
        )
    with small_corpus.session_factory() as session:
        run = session.scalars(select(Run)).one()
        assert run.status == "interrupted"
        before = [step.node for step in session.scalars(select(Step).order_by(Step.index))]
    assert before == ["plan", "act", "read"]

    second = scripted(
        [
            '{"next_queries":["Bram Stoker birthplace"]}',
            '{"next_queries":[]}',
            "Bram Stoker [1] was born in Dublin [3].",
        ]
    )
    events: list[dict] = []
    result = research(
        "",  # the stored question is used
        settings=settings,
        model=second,
        options=ResearchOptions(hits_per_query=2, budgets=Budgets(max_steps=3)),
        thread_id="thread-1",
        database=small_corpus,
        on_event=events.append,
    )
    assert events[0]["type"] == "resume"
    assert second.calls == 3  # the plan was not asked again
    # The resumed reflection saw the documents read before the interruption.
    assert any(
        str(message.content).startswith("[1]\n") and "Dracula" in str(message.content)
        for message in second.prompts[0]
    )
    nodes = [step["node"] for step in result.trace]
    assert nodes == ["plan", "act", "read", *["reflect", "act", "read"] * 2, "reflect", "answer"]
    assert result.run_id == run.id
    source_ids = [source["source_id"] for source in result.sources]
    assert len(source_ids) == len(set(source_ids))
    with small_corpus.session_factory() as session:
        assert session.scalars(select(Run)).one().status == "succeeded"
        stored = [step.node for step in session.scalars(select(Step).order_by(Step.index))]
        assert stored == nodes
        calls = session.scalars(select(ToolCall)).all()
        assert len(calls) == result.usage.tool_calls
        assert len({call.call_id for call in calls}) == len(calls)

    # A finished thread returns its result without running anything.
    third = scripted([])
    again = research("", settings=settings, model=third, thread_id="thread-1", database=small_corpus)
    assert again.answer == result.answer and third.calls == 0


def test_a_resumed_run_keeps_its_earlier_latency(settings, small_corpus, scripted) -> None:
    model = scripted(['{"queries":["Dracula author"]}', "Bram Stoker wrote Dracula [1]."], delays={1: 0.5})
    options = ResearchOptions(budgets=Budgets(max_steps=1))
    first = research(
        QUESTION, settings=settings, model=model, options=options, thread_id="t-lat", database=small_corpus
    )
    assert first.usage.seconds >= 0.5
    # The finished thread answers at once, with the time the run took (not the lookup's milliseconds).
    again = research("", settings=settings, model=scripted([]), thread_id="t-lat", database=small_corpus)
    assert again.usage.seconds >= 0.5
