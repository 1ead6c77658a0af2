"""``model: "deepscout-agent"``: a chat completion answered by the research agent.

The last user message is the question. The answer is the message content; its citations are
``url_citation`` annotations (a local document's URL is this server's ``/v1/sources/{id}``); the steps
(queries, searches, documents read, reflections) are ``reasoning_content``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from deepscout.agent.api import Citation, ResearchResult, aresearch_stream
from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.errors import DeepscoutError
from deepscout.ui.http_errors import ApiError
from deepscout.ui.model_service import AGENT_MODEL
from deepscout.ui.openai_schemas import (
    DONE_FRAME,
    ChatCompletionRequest,
    chunk_frame,
    completion_body,
    completion_id,
    error_frame,
)
from deepscout.ui.rendering import safe_url
from deepscout.ui.server_state import ServerState


def question_of(request: ChatCompletionRequest) -> str:
    questions = [message.text() for message in request.messages if message.role == "user"]
    if not questions or not questions[-1].strip():
        raise ApiError(400, "deepscout-agent needs a user message with the question")
    return questions[-1]


def step_line(event: dict[str, Any]) -> str | None:
    """One line of reasoning text for a progress event (None for events that are not steps)."""
    kind = event["type"]
    if kind == "queries":
        return f"Step {event.get('step')}: searching for " + "; ".join(map(str, event.get("queries", [])))
    if kind == "search":
        return f"Search '{event.get('query')}' ({event.get('tool')}): {event.get('hits')} results"
    if kind == "source":
        return f"Read [{event.get('n')}] {event.get('title')}"
    if kind == "reflection":
        further = "; ".join(map(str, event.get("queries") or []))
        return f"Searching further: {further}" if further else "Enough to answer."
    if kind == "stop":
        return f"Stopped: {event.get('reason')}"
    return None


def url_citations(answer: str, citations: list[Citation], base_url: str) -> list[dict[str, Any]]:
    found = []
    for citation in citations:
        url = safe_url(citation.url) or f"{base_url}v1/sources/{citation.source_id}"
        for match in re.finditer(re.escape(f"[{citation.n}]"), answer):
            found.append(
                {
                    "type": "url_citation",
                    "url_citation": {
                        "url": url,
                        "title": citation.title,
                        "start_index": match.start(),
                        "end_index": match.end(),
                    },
                }
            )
    return sorted(found, key=lambda item: item["url_citation"]["start_index"])


async def _events(state: ServerState, request: ChatCompletionRequest) -> AsyncIterator[dict[str, Any]]:
    """The agent's events for the request's question, on the server's default model (checked and loaded
    before anything is sent, so a bad request is a 4xx, never a broken stream)."""
    question = question_of(request)
    model_name = state.models.default
    model = await asyncio.to_thread(state.models.get, model_name)
    return aresearch_stream(
        question,
        settings=state.settings,
        options=ResearchOptions(model=model_name, budgets=Budgets(max_steps=2)),
        model=model,
        database=state.database,
    )


async def complete(state: ServerState, request: ChatCompletionRequest, base_url: str) -> dict[str, Any]:
    steps: list[str] = []
    result: ResearchResult | None = None
    async for event in await _events(state, request):
        line = step_line(event)
        if line:
            steps.append(line)
        if event["type"] == "result":
            result = event["result"]
    assert result is not None
    message = {
        "role": "assistant",
        "content": result.answer,
        "reasoning_content": "\n".join(steps),
        "annotations": url_citations(result.answer, result.citations, base_url),
    }
    return completion_body(completion_id(), AGENT_MODEL, message, "stop", result.usage.tokens)


async def stream(state: ServerState, request: ChatCompletionRequest, base_url: str) -> AsyncIterator[str]:
    return _frames(await _events(state, request), base_url)


async def _frames(events: AsyncIterator[dict[str, Any]], base_url: str) -> AsyncIterator[str]:
    ident = completion_id()
    yield chunk_frame(ident, AGENT_MODEL, {"role": "assistant", "content": ""})
    try:
        async for event in events:
            line = step_line(event)
            if line:
                yield chunk_frame(ident, AGENT_MODEL, {"reasoning_content": line + "\n"})
            elif event["type"] == "answer_token":
                yield chunk_frame(ident, AGENT_MODEL, {"content": event["text"]})
            elif event["type"] == "result":
                result: ResearchResult = event["result"]
                cited = url_citations(result.answer, result.citations, base_url)
                yield chunk_frame(ident, AGENT_MODEL, {"annotations": cited}, "stop", result.usage.tokens)
    except DeepscoutError as error:  # e.g. an empty corpus
        yield error_frame(str(error))
    yield DONE_FRAME
