"""The async streaming API yields progress events as the run goes, then the result."""

from __future__ import annotations

import asyncio

import pytest

from deepscout.agent.api import ResearchResult, aresearch_stream
from deepscout.agent.options import Budgets, ResearchOptions


def test_aresearch_stream_yields_events_then_the_result(settings, small_corpus, scripted) -> None:
    model = scripted(['{"queries":["Dracula author"]}', "Bram Stoker wrote Dracula [1]."])

    async def collect() -> list[dict]:
        return [
            event
            async for event in aresearch_stream(
                "Who wrote Dracula?",
                settings=settings,
                model=model,
                options=ResearchOptions(budgets=Budgets(max_steps=1)),
                database=small_corpus,
            )
        ]

    events = asyncio.run(collect())
    kinds = [event["type"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "result"
    assert kinds.index("queries") < kinds.index("search") < kinds.index("source") < kinds.index("answer")
    assert "answer_token" in kinds and "tokens" in kinds
    result = events[-1]["result"]
    assert isinstance(result, ResearchResult)
    assert result.answer == "Bram Stoker wrote Dracula [1]."


def test_aresearch_stream_raises_the_run_error(settings, small_corpus, scripted) -> None:
    async def collect() -> None:
        async for _ in aresearch_stream("   ", settings=settings, model=scripted([]), database=small_corpus):
            pass

    with pytest.raises(ValueError, match="question is empty"):
        asyncio.run(collect())
