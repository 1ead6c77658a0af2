"""Graph routing with a scripted chat model: plan → act → read → reflect → loop → answer, and the budgets
that stop the loop."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from deepscout.agent.api import research
from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.memory.tables import Answer, Run, Step, ToolCall

QUESTION = "Where was the author of Dracula born?"


def test_plan_act_read_reflect_loop_answer(settings, small_corpus, scripted) -> None:
    model = scripted(
        [
            '{"queries":["Dracula author"]}',
            '{"enough":false,"next_queries":["Bram Stoker birthplace"]}',
            '{"enough":true,"next_queries":[]}',
            "Dracula was written by Bram Stoker [1]; Stoker was born in Clontarf, Dublin [3].",
        ]
    )
    events: list[dict] = []
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=4)),
        database=small_corpus,
        on_event=events.append,
    )
    nodes = [step["node"] for step in result.trace]
    assert nodes == ["plan", "act", "read", "reflect", "act", "read", "reflect", "answer"]
    assert result.stop_reason == "enough"
    assert result.status == "model"
    by_n = {source["n"]: source["title"] for source in result.sources}
    assert by_n[1] == "Dracula" and "Bram Stoker" in by_n.values()
    assert [c.n for c in result.citations] == [1, 3]
    assert result.citations[0].title == "Dracula"
    # Round 1 searched the plan and the question itself; round 2 the reflection's query only.
    searched = [event["query"] for event in events if event["type"] == "search"]
    assert searched == ["Dracula author", QUESTION, "Bram Stoker birthplace"]
    # Append-only prompts: each model call extends the previous prompt, so the fake backend reuses it.
    model_steps = [step for step in result.trace if step["prompt_tokens"]]
    assert all(step["reused_tokens"] > 0 for step in model_steps[1:])
    assert result.usage.tokens.reused_tokens > result.usage.tokens.computed_tokens
    with small_corpus.session_factory() as session:
        run = session.get(Run, result.run_id)
        assert run is not None and run.status == "succeeded"
        steps = session.scalars(select(Step).where(Step.run_id == result.run_id)).all()
        assert [step.node for step in steps] == nodes
        calls = session.scalars(select(ToolCall).where(ToolCall.run_id == result.run_id)).all()
        assert len(calls) == result.usage.tool_calls
        stored = session.scalar(select(Answer).where(Answer.run_id == result.run_id))
        assert stored is not None and stored.text == result.answer


def test_max_steps_stops_the_loop(settings, small_corpus, scripted) -> None:
    model = scripted(['{"queries":["Dracula author"]}', "Bram Stoker wrote Dracula [1]."])
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=1)),
        database=small_corpus,
    )
    # The step budget ends the loop before the reflection asks the model anything.
    assert [step["node"] for step in result.trace] == ["plan", "act", "read", "reflect", "answer"]
    assert result.stop_reason == "max_steps"
    assert model.calls == 2


def test_max_tool_calls_stops_the_loop(settings, small_corpus, scripted) -> None:
    model = scripted(
        [
            '{"queries":["Dracula author","Bram Stoker birthplace","River Liffey"]}',
            "Bram Stoker wrote Dracula [1].",
        ]
    )
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=5, max_tool_calls=5)),
        database=small_corpus,
    )
    # Four searches (three planned, plus the question) and one read, then the budget is spent.
    assert result.usage.tool_calls == 5
    assert result.stop_reason == "max_tool_calls"
    assert len(result.sources) == 1


def test_reflection_loops_back_to_plan_without_new_queries(settings, small_corpus, scripted) -> None:
    model = scripted(
        [
            '{"queries":["Dracula author"]}',
            '{"enough":false,"next_queries":["Dracula author"]}',  # nothing new: plan again
            '{"queries":["River Liffey Dublin"]}',
            '{"enough":true,"next_queries":[]}',
            "The Liffey flows through Dublin [2].",
        ]
    )
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=3)),
        database=small_corpus,
    )
    nodes = [step["node"] for step in result.trace]
    assert nodes == ["plan", "act", "read", "reflect", "plan", "act", "read", "reflect", "answer"]


def test_parroted_and_invalid_plans_fall_back_to_the_question(settings, small_corpus, scripted) -> None:
    # The first reply is not JSON; the schema-constrained retry parrots the worked example's queries
    # or writes no words at all (seen from SmolLM2: a query "]}").
    model = scripted(["I will search.", '{"queries":["Antonio Vivaldi","]}"]}', "Stoker [1]."])
    result = research(
        "Who wrote Dracula?",
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=1)),
        database=small_corpus,
    )
    plan = result.trace[0]
    assert plan["detail"]["queries"] == ["Who wrote Dracula?"]


def test_worked_example_entities_are_cut_from_queries(settings, small_corpus, scripted) -> None:
    plan = '{"queries":["The Four Seasons author of Dracula","Venice"]}'
    model = scripted([plan, "Bram Stoker wrote Dracula [1]."])
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=1)),
        database=small_corpus,
    )
    assert result.trace[0]["detail"]["queries"] == ["The author of Dracula", QUESTION]


def test_model_that_cites_nothing_still_lists_sources(settings, small_corpus, scripted) -> None:
    model = scripted(['{"queries":["Dracula author"]}', "Bram Stoker wrote it."])
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=1)),
        database=small_corpus,
    )
    assert result.citations == []
    assert result.sources and result.sources[0]["title"] == "Dracula"


def test_ungrounded_answer_is_replaced_by_cited_passages(settings, small_corpus, scripted) -> None:
    # The tiny model sometimes repeats the worked example's answer instead of answering.
    parroted = "The Four Seasons was composed by Antonio Vivaldi [1], who was born in Venice [2]."
    model = scripted(['{"queries":["Dracula author"]}', parroted])
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=1)),
        database=small_corpus,
    )
    assert result.status == "fallback"
    assert "Vivaldi" not in result.answer
    assert "Bram Stoker" in result.answer and "[1]" in result.answer


@pytest.mark.parametrize(
    "echo",
    [
        '"Where was the author of Dracula born?"',
        'The answer to the question "Where was the author of Dracula born?" is [1].',
    ],
)
def test_answer_echoing_the_question_is_replaced(settings, small_corpus, scripted, echo: str) -> None:
    model = scripted(['{"queries":["Dracula author"]}', echo])
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=1)),
        database=small_corpus,
    )
    assert result.status == "fallback"
    assert "only repeated the question" in result.answer


def test_structured_replies_are_repaired_when_cut_or_unbalanced() -> None:
    from deepscout.agent.state import QueryPlan, Reflection
    from deepscout.agent.structured import balance_json, parse_lenient

    assert balance_json('{"queries":["a b","c d"') == '{"queries":["a b","c d"]}'
    assert balance_json('noise {"queries":["x y"]] trailing') == '{"queries":["x y"]}'
    plan = parse_lenient(QueryPlan, 'Sure! {"queries":["Gallu demon","Lilu demon"]]')
    assert plan is not None and plan.queries == ["Gallu demon", "Lilu demon"]
    reflection = parse_lenient(Reflection, '{"enough":false,"next_queries":["Lilu spirit"')
    assert reflection is not None and reflection.next_queries == ["Lilu spirit"]
    assert parse_lenient(QueryPlan, '{"queries":[""]}') is None  # empty queries are not a plan
