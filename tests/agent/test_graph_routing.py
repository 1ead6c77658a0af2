"""Graph routing with a scripted chat model: plan → act → read → reflect → loop → answer, and budgets."""

from __future__ import annotations

from deepscout.agent.api import research
from deepscout.agent.settings import Budgets


def test_plan_act_read_reflect_loop_answer(settings, small_corpus, scripted) -> None:
    model = scripted(
        [
            '{"queries":["Dracula author"]}',
            '{"enough":false,"next_queries":["Bram Stoker birthplace"]}',
            '{"enough":true,"next_queries":[]}',
            "Dracula was written by Bram Stoker [1], born in Dublin [2]. See also [9].",
        ]
    )
    events: list[dict] = []
    result = research(
        "Where was the author of Dracula born?",
        settings=settings,
        model=model,
        budgets=Budgets(max_steps=4),
        database=small_corpus,
        on_event=events.append,
    )
    nodes = [step["node"] for step in result.trace]
    assert nodes == ["plan", "act", "read", "reflect", "act", "read", "reflect", "answer"]
    assert result.stop_reason == "enough"
    print(result.answer, result.sources, result.removed_citations)
