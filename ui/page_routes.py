"""The web chat page, its static files, and the health and metrics endpoints."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from deepscout.tools.registry import SearchMode
from deepscout.ui.dependencies import State

router = APIRouter()
SEARCH_MODES: tuple[SearchMode, ...] = ("local", "web", "both")
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@router.get("/", response_class=HTMLResponse, tags=["page"])
def chat_page(state: State) -> HTMLResponse:
    """The web chat page (it calls the API below with the token the user enters, when tokens are on)."""
    html = state.renderer.page(
        "chat.html",
        models=state.models.served,
        search_modes=SEARCH_MODES,
        auth_required=state.tokens.required,
    )
    return HTMLResponse(html, headers=PAGE_HEADERS)


@router.get("/healthz", tags=["server"])
def healthz(state: State) -> dict[str, object]:
    return {"status": "ok", "models": state.models.served, "loaded": state.models.loaded()}


@router.get("/metrics", response_class=PlainTextResponse, tags=["server"])
def metrics(state: State) -> PlainTextResponse:
    """Prometheus metrics."""
    state.metrics.active_jobs.set(state.jobs.active)
    state.metrics.loaded_models.set(len(state.models.loaded()))
    return PlainTextResponse(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
