"""Citation resolution: [n] markers mapped to the sources read; unknown ones removed and logged."""

from __future__ import annotations

import logging

from deepscout.agent.api import research
from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.text.citations import resolve_citations


def test_known_citations_are_kept_in_order() -> None:
    resolved = resolve_citations("A [2]. B [1][2]. C [1, 2].", [1, 2])
    assert resolved.text == "A [2]. B [1][2]. C [1][2]."
    assert resolved.cited == [2, 1]
    assert resolved.removed == []


def test_unknown_citations_are_removed_and_logged(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="deepscout.text.citations"):
        resolved = resolve_citations("Stoker wrote Dracula [1][7]. He was Irish [3, 1; 9] .", [1, 3])
    assert resolved.text == "Stoker wrote Dracula [1]. He was Irish [3][1]."
    assert resolved.cited == [1, 3]
    assert resolved.removed == ["[7]", "[9]"]
    assert "[7]" in caplog.text and "[9]" in caplog.text


def test_brackets_that_are_not_citations_are_left_alone() -> None:
    resolved = resolve_citations("The list [a, b] and [1a] stay.", [1])
    assert resolved.text == "The list [a, b] and [1a] stay."
    assert resolved.cited == []


def test_answer_loses_invented_citations_end_to_end(settings, small_corpus, scripted, caplog) -> None:
    model = scripted(['{"queries":["Dracula author"]}', "Bram Stoker wrote Dracula [1] [4]."])
    with caplog.at_level(logging.WARNING, logger="deepscout.text.citations"):
        result = research(
            "Who wrote Dracula?",
            settings=settings,
            model=model,
            options=ResearchOptions(budgets=Budgets(max_steps=1)),
            database=small_corpus,
        )
    known = {source["n"] for source in result.sources}
    assert 4 not in known
    assert result.answer == "Bram Stoker wrote Dracula [1]."
    assert result.removed_citations == ["[4]"]
    assert [c.n for c in result.citations] == [1]
    assert "[4]" in caplog.text
