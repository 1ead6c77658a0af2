"""A real run of the agent on the embedded SmolLM2 over a small HotpotQA corpus, with a short budget.

Slow (the real model on the CPU); kept to one question, two rounds and a two-minute wall time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from deepscout.agent.api import research
from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.memory.tables import Answer, Run, Step

pytestmark = pytest.mark.slow
QUESTIONS = 3


@pytest.fixture
def hotpotqa_corpus(settings, hotpotqa_dir) -> Iterator[tuple[Any, list[dict[str, Any]]]]:
    """The passages of the first few questions' contexts (about 30 documents) as collection ``hotpotqa``."""
    from deepscout.memory.corpus import CorpusIndex
    from deepscout.memory.db import open_database
    from deepscout.memory.schemas import CorpusDocument

    questions = json.loads((hotpotqa_dir / "hotpotqa_train.json").read_text())[:QUESTIONS]
    passages = {title: "".join(sentences) for q in questions for title, sentences in q["context"]}
    database = open_database(settings)
    CorpusIndex(database.session_factory).add(
        [CorpusDocument(doc_id=title, title=title, text=text) for title, text in passages.items()],
        collection="hotpotqa",
    )
    yield database, questions
    database.dispose()


def test_smollm2_researches_a_hotpotqa_question(settings, hotpotqa_corpus, smollm2_chat_model) -> None:
    database, questions = hotpotqa_corpus
    question = questions[1]  # Are Christopher Nolan and Sathish Kalathil both film directors?
    wall_time = 120.0
    events: list[dict[str, Any]] = []
    started = time.monotonic()
    result = research(
        question["question"],
        settings=settings,
        model=smollm2_chat_model,
        options=ResearchOptions(budgets=Budgets(max_steps=2, max_context_tokens=3072, wall_time_s=wall_time)),
        database=database,
        on_event=events.append,
    )
    elapsed = time.monotonic() - started
    assert elapsed < wall_time + 15
    nodes = [step["node"] for step in result.trace]
    assert nodes[:3] == ["plan", "act", "read"] and nodes[-1] == "answer"
    # It searched the corpus and read documents from it, including a supporting one.
    titles = {source["title"] for source in result.sources}
    assert titles and titles <= {title for title, _ in question["context"]}
    assert titles & {title for title, _ in question["supporting_facts"]}
    assert result.answer.strip()
    # Every citation left in the answer resolves to a document read in this run.
    read_numbers = {source["n"] for source in result.sources}
    assert {citation.n for citation in result.citations} <= read_numbers
    # Append-only prompts: the model calls after the first reuse the session's KV cache.
    model_steps = [step for step in result.trace if step["prompt_tokens"]]
    assert model_steps and all(step["reused_tokens"] > 0 for step in model_steps[1:])
    assert sum(1 for event in events if event["type"] == "tokens") == len(model_steps)
    with database.session_factory() as session:
        assert session.get(Run, result.run_id).status == "succeeded"
        stored = session.scalars(select(Step).where(Step.run_id == result.run_id)).all()
        assert [step.node for step in stored] == nodes
        assert session.scalar(select(Answer).where(Answer.run_id == result.run_id)).text == result.answer
