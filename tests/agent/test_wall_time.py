"""The wall-time budget stops a generation in progress: in the loop the run goes on to answer from what
it gathered; in the answer it falls back to the most relevant passages, cited."""

from __future__ import annotations

import time

import pytest

from deepscout.agent.api import research
from deepscout.agent.settings import AgentSettings, Budgets

QUESTION = "Where was the author of Dracula born?"


def test_deadline_in_the_loop_goes_on_to_answer(settings, small_corpus, scripted) -> None:
    model = scripted(
        ['{"queries":["Dracula author"]}', '{"enough":true,"next_queries":[]}', "Stoker [1]."],
        delays={1: 30.0},  # the reflection would take 30 s
    )
    started = time.monotonic()
    result = research(
        QUESTION, settings=settings, model=model, budgets=Budgets(wall_time_s=2.0), database=small_corpus
    )
    elapsed = time.monotonic() - started
    assert elapsed < 5.0
    assert result.stop_reason == "wall_time"
    assert result.status == "model" and result.answer == "Stoker [1]."
    assert result.trace[-2]["detail"] == {"budget_spent": "wall_time"}


def test_deadline_in_the_answer_falls_back_to_cited_passages(settings, small_corpus, scripted) -> None:
    model = scripted(
        ['{"queries":["Dracula author"]}', '{"enough":true,"next_queries":[]}', "never"],
        delays={2: 30.0},
    )
    started = time.monotonic()
    result = research(
        QUESTION, settings=settings, model=model, budgets=Budgets(wall_time_s=2.0), database=small_corpus
    )
    assert time.monotonic() - started < 5.0
    assert result.status == "fallback"
    assert "wall-time budget" in result.answer
    assert "Bram Stoker" in result.answer
    assert result.citations and result.citations[0].title in {s["title"] for s in result.sources}


@pytest.mark.slow
def test_wall_time_stops_smollm2_mid_generation(settings, small_corpus, smollm2_chat_model) -> None:
    """The real embedded model: a 6 s budget stops a prefill/decode that would take far longer."""
    agent = AgentSettings(answer_max_tokens=2000, plan_max_tokens=2000, answer_time_share=0.5)
    started = time.monotonic()
    result = research(
        QUESTION,
        settings=settings,
        model=smollm2_chat_model,
        agent=agent,
        budgets=Budgets(wall_time_s=6.0),
        database=small_corpus,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 6.0 + 3.0  # stopped within a chunk/token of the deadline (plus database work)
    assert result.stop_reason in {"wall_time", "enough", "max_steps"}
    assert result.answer
