"""The FastAPI application: wiring of the routes, guards, error handlers and the server's state.

``create_app(settings)`` builds it; the database opens (and interrupted jobs are marked resumable) when
the app starts, and running jobs are stopped, resumable, when it stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from deepscout.memory import repository
from deepscout.memory.db import open_database, write_session
from deepscout.model_runtime.chat import BackendRegistry
from deepscout.settings import Settings
from deepscout.ui import openai_routes, page_routes, research_routes
from deepscout.ui.http_errors import install_error_handlers
from deepscout.ui.model_service import ModelService
from deepscout.ui.rendering import Renderer
from deepscout.ui.request_guards import BodySizeLimit, RateLimiter, TokenCheck
from deepscout.ui.research_jobs import ResearchJobs
from deepscout.ui.server_metrics import MetricsMiddleware, ServerMetrics
from deepscout.ui.server_state import ServerState

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(settings: Settings, *, registry: BackendRegistry | None = None) -> FastAPI:
    """The app serving ``settings.server.models`` (default: ``settings.model``) from ``registry``'s
    backends (default: the built-in ones)."""
    server = settings.server
    models = ModelService(
        settings, served=server.models or [settings.model], registry=registry or BackendRegistry()
    )
    metrics = ServerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = open_database(settings)
        with write_session(database.session_factory) as session:
            repository.interrupt_unfinished_jobs(session)
        jobs = ResearchJobs(settings, database, models)
        app.state.deepscout = ServerState(
            settings=settings,
            database=database,
            models=models,
            jobs=jobs,
            tokens=TokenCheck([token.get_secret_value() for token in server.api_tokens]),
            limiter=RateLimiter(server.rate_limit_per_minute),
            renderer=Renderer(),
            metrics=metrics,
        )
        try:
            yield
        finally:
            jobs.close()
            models.close()
            database.dispose()

    app = FastAPI(
        title="deepscout",
        summary="Research API (threads, jobs, SSE events), OpenAI-compatible chat completions, chat page.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(page_routes.router)
    app.include_router(research_routes.router)
    app.include_router(openai_routes.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=server.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=server.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
