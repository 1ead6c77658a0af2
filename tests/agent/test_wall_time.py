"""The wall-time budget stops a generation in progress: in the loop the run goes on to answer from what
it gathered; in the answer it falls back to the sentences read that best answer the question, cited."""

from __future__ import annotations

import time

import pytest

from deepscout.agent.api import research
from deepscout.agent.options import Budgets, ResearchOptions

QUESTION = "Where was the author of Dracula born?"


def test_deadline_in_the_loop_goes_on_to_answer(settings, small_corpus, scripted) -> None:
    model = scripted(
        ['{"queries":["Dracula author"]}', '{"next_queries":[]}', "Stoker [1]."],
        delays={1: 60.0},  # the reflection would take a minute
    )
    started = time.monotonic()
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(hits_per_query=2, budgets=Budgets(max_steps=2, wall_time_s=6.0)),
        database=small_corpus,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 10.0
    assert result.status == "model" and result.answer == "Stoker [1]."
    # The reflection's model call was cut at its share of the loop's time; the round's own follow-up
    # queries were still searched and read.
    reflection = next(step for step in result.trace if step["node"] == "reflect")
    assert "time ran out" in reflection["detail"]["error"]
    assert reflection["detail"]["follow_ups"]
    assert len(result.sources) > 2


def test_deadline_in_the_answer_falls_back_to_cited_sentences(settings, small_corpus, scripted) -> None:
    model = scripted(['{"queries":["Dracula author"]}', "never"], delays={1: 30.0})
    started = time.monotonic()
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(max_steps=1, wall_time_s=2.0)),
        database=small_corpus,
    )
    assert time.monotonic() - started < 5.0
    assert result.status == "fallback"
    assert "wall-time budget" in (result.fallback_reason or "")
    assert "Bram Stoker" in result.answer
    assert result.citations and result.citations[0].title in {s["title"] for s in result.sources}


@pytest.mark.slow
def test_wall_time_stops_smollm2_mid_generation(settings, small_corpus, smollm2_chat_model) -> None:
    """The real embedded model: a document of about 6,000 tokens makes every prefill after it take far
    longer than the 4 s budget, so the deadline must stop the model mid-prefill (the answer)."""
    from deepscout.memory.corpus import CorpusIndex
    from deepscout.memory.schemas import CorpusDocument

    chapters = " ".join(
        f"In chapter {i} of Dracula, Jonathan Harker writes letter number {i} about the castle, the count, "
        f"the wolves and the road through the Borgo Pass on day {i} of his journey."
        for i in range(300)
    )
    CorpusIndex(small_corpus.session_factory).add(
        [CorpusDocument(doc_id="long", title="Dracula chapters", text=chapters)], collection="demo"
    )
    started = time.monotonic()
    result = research(
        "What happens in the chapters of Dracula?",
        settings=settings,
        model=smollm2_chat_model,
        options=ResearchOptions(
            answer_time_share=0.5,
            queries_per_step=0,  # no query proposals: the answer's prefill is what the deadline stops
            hits_per_query=1,
            reads_per_step=1,
            budgets=Budgets(wall_time_s=4.0),
        ),
        database=small_corpus,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 4.0 + 4.0  # within a prefill chunk of the deadline, plus database work
    assert result.stop_reason in {"max_steps", "wall_time"}  # the loop itself costs no model time
    assert result.status == "fallback"
    assert "wall-time budget ran out while it was writing" in (result.fallback_reason or "")
    assert result.citations  # the fallback cites the sentences it quotes


def test_tool_calls_are_waited_for_no_longer_than_the_deadline() -> None:
    from langchain_core.tools import StructuredTool

    from deepscout.agent.tool_runner import run_tools

    def slow(query: str) -> str:
        time.sleep(3.0)
        return query

    def quick(query: str) -> str:
        return query

    calls = [
        (StructuredTool.from_function(slow, name="slow", description="sleeps"), {"query": "a"}),
        (StructuredTool.from_function(quick, name="quick", description="answers"), {"query": "b"}),
    ]
    started = time.monotonic()
    results = run_tools(calls, time.monotonic() + 0.5)
    assert time.monotonic() - started < 1.5
    (slow_message, slow_record), (quick_message, _) = results
    assert slow_message is None and "timed out" in slow_record["error"]
    assert quick_message is not None and quick_message.content == "b"
