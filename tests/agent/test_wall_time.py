"""The wall-time budget stops a generation in progress: in the loop the run goes on to answer from what
it gathered; in the answer it falls back to the most relevant passages, cited."""

from __future__ import annotations

import time

import pytest

from deepscout.agent.api import research
from deepscout.agent.options import Budgets, ResearchOptions

QUESTION = "Where was the author of Dracula born?"


def test_deadline_in_the_loop_goes_on_to_answer(settings, small_corpus, scripted) -> None:
    model = scripted(
        ['{"queries":["Dracula author"]}', '{"enough":true,"next_queries":[]}', "Stoker [1]."],
        delays={1: 30.0},  # the reflection would take 30 s
    )
    started = time.monotonic()
    result = research(
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(wall_time_s=2.0)),
        database=small_corpus,
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
        QUESTION,
        settings=settings,
        model=model,
        options=ResearchOptions(budgets=Budgets(wall_time_s=2.0)),
        database=small_corpus,
    )
    assert time.monotonic() - started < 5.0
    assert result.status == "fallback"
    assert "wall-time budget" in result.answer
    assert "Bram Stoker" in result.answer
    assert result.citations and result.citations[0].title in {s["title"] for s in result.sources}


@pytest.mark.slow
def test_wall_time_stops_smollm2_mid_generation(settings, small_corpus, smollm2_chat_model) -> None:
    """The real embedded model: a document of about 6,000 tokens makes every prefill after it take far
    longer than the 4 s budget, so the deadline must stop the model mid-prefill (reflection, answer)."""
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
        options=ResearchOptions(answer_time_share=0.5, reads_per_step=1, budgets=Budgets(wall_time_s=4.0)),
        database=small_corpus,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 4.0 + 4.0  # within a prefill chunk of the deadline, plus database work
    assert result.stop_reason == "wall_time"
    assert result.status == "fallback"
    assert "wall-time budget ran out while it was writing" in result.answer
    assert result.citations  # the fallback cites the passages it shows
