"""The OpenAI-compatible endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from deepscout.ui import openai_agent, openai_direct
from deepscout.ui.dependencies import Caller, State
from deepscout.ui.model_service import AGENT_MODEL
from deepscout.ui.openai_schemas import ChatCompletionRequest

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models")
def list_models(state: State, caller: Caller) -> dict[str, Any]:
    created = int(time.time())
    names = [AGENT_MODEL, *state.models.served]
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "deepscout"} for name in names
        ],
    }


@router.post(
    "/chat/completions",
    responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}},
    response_model=None,
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: State, caller: Caller
) -> JSONResponse | StreamingResponse:
    """A chat completion from the research agent (``deepscout-agent``) or a served chat model."""
    base_url = str(request.base_url)
    if body.model == AGENT_MODEL:
        if body.stream:
            return _sse(await openai_agent.stream(state, body, base_url))
        return JSONResponse(await openai_agent.complete(state, body, base_url))
    name = state.models.require(body.model)
    model = await run_in_threadpool(state.models.get, name)
    if body.stream:
        return _sse(openai_direct.stream(model, name, body))
    return JSONResponse(await openai_direct.complete(model, name, body))


def _sse(frames: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
