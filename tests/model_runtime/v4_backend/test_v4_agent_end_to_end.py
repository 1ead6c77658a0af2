"""The research agent end to end on ``deepseek-v4:random-tiny``: the answer is noise; what is checked is
that every model call goes through the V4 format, tokenizer and engine, that its token accounting adds
up, and that later calls reuse the prompt prefix the engine already holds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from deepscout.agent.api import research
from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.model_runtime.chat.backends.embedded_v4 import EmbeddedV4ChatModel
from deepscout.model_runtime.v4.runtime import V4Runtime
from deepscout.settings import Settings

DOCUMENTS = [
    ("Dune", "Dune is a 1965 science-fiction novel by the American author Frank Herbert."),
    ("Frank Herbert", "Frank Herbert was an American science-fiction author born in Tacoma, Washington."),
    ("Tacoma", "Tacoma is a port city in Washington, on Commencement Bay of Puget Sound."),
]


@pytest.fixture
def dune_corpus(settings: Settings) -> Iterator[Any]:
    from deepscout.memory.corpus import CorpusIndex
    from deepscout.memory.db import open_database
    from deepscout.memory.schemas import CorpusDocument

    database = open_database(settings)
    documents = [CorpusDocument(doc_id=title, title=title, text=text) for title, text in DOCUMENTS]
    CorpusIndex(database.session_factory).add(documents, collection="demo")
    yield database
    database.dispose()


@pytest.mark.slow
def test_research_runs_end_to_end_on_random_tiny(
    settings: Settings, dune_corpus: Any, tiny_runtime: V4Runtime
) -> None:
    model = EmbeddedV4ChatModel.from_runtime(
        tiny_runtime, model_name="deepseek-v4:random-tiny", structured_retries=0
    )
    events: list[dict[str, Any]] = []
    result = research(
        "Where was the author of Dune born?",
        settings=settings,
        model=model,
        options=ResearchOptions(
            model="deepseek-v4:random-tiny",
            budgets=Budgets(max_steps=1, wall_time_s=600),
            plan_max_tokens=16,
            reflect_max_tokens=16,
            answer_max_tokens=16,
            queries_per_step=1,
            reads_per_step=2,
        ),
        database=dune_corpus,
        on_event=events.append,
    )
    nodes = [step["node"] for step in result.trace]
    assert nodes[0] == "plan" and nodes[-1] == "answer"
    assert {"act", "read"} <= set(nodes)
    assert result.sources, "the search over the corpus found documents and the agent read them"

    answer_step = result.trace[-1]
    assert answer_step["prompt_tokens"] > 0
    assert 1 <= answer_step["output_tokens"] <= 16
    for step in result.trace:
        assert step["computed_tokens"] == step["prompt_tokens"] - step["reused_tokens"]
    # the answer's prompt starts like the planner's (system prompt, question, instructions): the engine
    # reuses those tokens instead of prefilling them again
    assert answer_step["reused_tokens"] > 0
    usage = result.usage
    assert usage.tokens.prompt_tokens == sum(step["prompt_tokens"] for step in result.trace)
    assert usage.tokens.reused_tokens > 0
    assert any(event["type"] == "answer_token" for event in events) or result.status == "fallback"
