"""The research API: threads and their messages, research jobs, their events over SSE, and sources."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from deepscout.memory import repository
from deepscout.memory.db import write_session
from deepscout.memory.tables import Source
from deepscout.ui.dependencies import Caller, State
from deepscout.ui.http_errors import ApiError
from deepscout.ui.rendering import render_markdown
from deepscout.ui.research_schemas import (
    JobView,
    MessageView,
    ResearchRequest,
    SourceView,
    ThreadCreate,
    ThreadDetail,
    ThreadView,
)

router = APIRouter(prefix="/v1", tags=["research"])
MAX_ID = 2**31 - 1
"""Largest integer id (source, event) a request may name; larger ones cannot exist."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/threads", status_code=201)
def create_thread(body: ThreadCreate, state: State, caller: Caller) -> ThreadView:
    with write_session(state.database.session_factory) as session:
        return ThreadView.of(repository.create_thread(session, title=body.title, owner=caller))


@router.get("/threads")
def list_threads(
    state: State, caller: Caller, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[ThreadView]:
    with state.database.session_factory() as session:
        return [
            ThreadView.of(thread) for thread in repository.list_threads(session, owner=caller, limit=limit)
        ]


@router.get("/threads/{thread_id}")
def get_thread(thread_id: str, state: State, caller: Caller) -> ThreadDetail:
    with state.database.session_factory() as session:
        thread = repository.get_owned_thread(session, thread_id=thread_id, owner=caller)
        if thread is None:
            raise ApiError(404, f"no thread {thread_id!r}", kind="not_found_error")
        messages = [_message(message) for message in repository.list_messages(session, thread_id=thread_id)]
        jobs = [JobView.of(job) for job in repository.list_jobs(session, thread_id=thread_id)]
        return ThreadDetail(**ThreadView.of(thread).model_dump(), messages=messages, jobs=jobs)


@router.get("/threads/{thread_id}/messages")
def list_messages(thread_id: str, state: State, caller: Caller) -> list[MessageView]:
    return get_thread(thread_id, state, caller).messages


@router.delete("/threads/{thread_id}", status_code=204)
def delete_thread(thread_id: str, state: State, caller: Caller) -> Response:
    with state.database.session_factory() as session:
        if repository.get_owned_thread(session, thread_id=thread_id, owner=caller) is None:
            raise ApiError(404, f"no thread {thread_id!r}", kind="not_found_error")
    state.jobs.cancel_thread(thread_id)
    with write_session(state.database.session_factory) as session:
        repository.delete_thread(session, thread_id=thread_id)
    return Response(status_code=204)


def _message(message: repository.Message) -> MessageView:
    html = render_markdown(message.content, citations=True) if message.role == "assistant" else None
    return MessageView.of(message, None if html is None else str(html))


@router.post("/research", status_code=202)
def start_research(body: ResearchRequest, state: State, caller: Caller) -> JobView:
    """Start a research job; follow it at ``events_url`` (SSE)."""
    return JobView.of(state.jobs.start(owner=caller, request=body))


@router.get("/research/{job_id}")
def get_research(job_id: str, state: State, caller: Caller) -> JobView:
    return JobView.of(state.jobs.owned(owner=caller, job_id=job_id))


@router.post("/research/{job_id}/cancel")
def cancel_research(job_id: str, state: State, caller: Caller) -> JobView:
    return JobView.of(state.jobs.cancel(owner=caller, job_id=job_id))


@router.post("/research/{job_id}/resume", status_code=202)
def resume_research(job_id: str, state: State, caller: Caller) -> JobView:
    """Resume an interrupted (server stopped) or cancelled job from its last checkpoint."""
    return JobView.of(state.jobs.resume(owner=caller, job_id=job_id))


@router.get(
    "/research/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events."}},
)
def research_events(
    job_id: str,
    state: State,
    caller: Caller,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[
        int, Query(ge=0, le=MAX_ID, description="Replay events after this id (as Last-Event-ID).")
    ] = 0,
) -> StreamingResponse:
    """The job's events as SSE (``id`` = event number): stored ones first, then live ones until it ends.
    Reconnect with ``Last-Event-ID`` (or ``?after=``) to get only what was missed."""
    given = (last_event_id or "").strip()
    start = min(int(given), MAX_ID) if given.isdecimal() else after
    state.jobs.owned(owner=caller, job_id=job_id)

    async def frames() -> AsyncIterator[str]:
        async for event in state.jobs.stream(job_id=job_id, after=start):
            if event is None:
                yield ": keep-alive\n\n"
                continue
            payload = dict(event.data)
            if event.type == "done":
                payload["html"] = str(render_markdown(str(payload.get("answer", "")), citations=True))
            yield f"id: {event.seq}\nevent: {event.type}\ndata: {json.dumps(payload)}\n\n"

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)


@router.get("/sources/{source_id}")
def get_source(source_id: Annotated[int, Path(ge=1, le=MAX_ID)], state: State, caller: Caller) -> SourceView:
    """A stored document (corpus document or fetched page) that an answer cites."""
    with state.database.session_factory() as session:
        source = session.get(Source, source_id)
        if source is None:
            raise ApiError(404, f"no source {source_id}", kind="not_found_error")
        return SourceView(
            id=source.id, kind=source.kind, title=source.title, url=source.url, text=source.text
        )
