"""``research(question, *, settings, options, model, ...)``: each option is given once, in
``ResearchOptions``; the context budget must fit the model; sources carry the corpus doc_id."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from deepscout.agent.api import _result, research
from deepscout.agent.options import Budgets, ResearchInputError, ResearchOptions
from deepscout.memory.tables import Run

QUESTION = "Who wrote Dracula?"


def test_a_context_budget_over_the_window_is_refused(settings, small_corpus, scripted) -> None:
    model = scripted([], context_window=4096)
    options = ResearchOptions(budgets=Budgets(max_context_tokens=6000))
    with pytest.raises(ResearchInputError) as caught:
        research(QUESTION, settings=settings, options=options, model=model, database=small_corpus)
    message = str(caught.value)
    assert "6000" in message and "4096" in message and "\n" not in message
    assert model.calls == 0
    with small_corpus.session_factory() as session:
        assert session.scalars(select(Run)).all() == []  # refused before any run was stored


def test_a_context_budget_within_the_window_is_used(settings, small_corpus, scripted) -> None:
    model = scripted(
        ['{"queries":["Dracula author"]}', "Bram Stoker wrote Dracula [1]."], context_window=4096
    )
    options = ResearchOptions(budgets=Budgets(max_steps=1, max_context_tokens=4096))
    result = research(QUESTION, settings=settings, options=options, model=model, database=small_corpus)
    assert result.answer == "Bram Stoker wrote Dracula [1]."


def test_a_model_spec_is_an_option_not_the_model_argument(settings, small_corpus) -> None:
    with pytest.raises(ResearchInputError, match=r"options\.model"):
        research(QUESTION, settings=settings, model="smollm2", database=small_corpus)  # type: ignore[arg-type]


def test_the_model_spec_defaults_to_the_settings(settings, small_corpus, scripted) -> None:
    model = scripted(['{"queries":["Dracula author"]}', "Bram Stoker wrote Dracula [1]."])
    options = ResearchOptions(budgets=Budgets(max_steps=1))
    result = research(QUESTION, settings=settings, options=options, model=model, database=small_corpus)
    with small_corpus.session_factory() as session:
        run = session.get(Run, result.run_id)
        assert run is not None and run.manifest["model"] == settings.model
        assert run.settings["model"] == settings.model and run.settings["budgets"]["max_steps"] == 1


def test_sources_carry_the_corpus_doc_id(settings, small_corpus, scripted) -> None:
    model = scripted(['{"queries":["Dracula author"]}', "Bram Stoker wrote Dracula [1]."])
    options = ResearchOptions(budgets=Budgets(max_steps=1))
    result = research(QUESTION, settings=settings, options=options, model=model, database=small_corpus)
    assert result.sources
    # The small corpus uses each title as its doc_id.
    assert all(source["doc_id"] == source["title"] for source in result.sources)


def test_sources_of_an_old_checkpoint_read_without_doc_id() -> None:
    old_source = {"n": 1, "source_id": 7, "title": "Dracula", "url": None, "chars": 120}
    state = {"question": QUESTION, "run_id": "run-1", "sources": [old_source], "citations": [1]}
    result = _result(state, "thread-1", 0.0)  # type: ignore[arg-type]
    assert result.sources[0]["doc_id"] is None
    assert result.citations[0].source_id == 7


@pytest.mark.parametrize(
    ("question", "reason"),
    [("Who wrote\x00 Dracula?", "NUL"), ("Who wrote \udcff Dracula?", "UTF-8")],
    ids=["nul", "not-utf8"],
)
def test_a_question_that_cannot_be_stored_is_refused(
    settings, small_corpus, scripted, question, reason
) -> None:
    """NUL (PostgreSQL refuses it) and lone surrogates (bytes that were not UTF-8) fail before any run."""
    model = scripted([])
    with pytest.raises(ResearchInputError, match=reason):
        research(question, settings=settings, model=model, database=small_corpus)
    assert model.calls == 0
    with small_corpus.session_factory() as session:
        assert session.scalars(select(Run)).all() == []
