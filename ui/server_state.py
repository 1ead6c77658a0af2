"""What the app's routes share: settings, database, models, jobs, guards, renderer and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from deepscout.memory.db import Database
from deepscout.settings import Settings
from deepscout.ui.model_service import ModelService
from deepscout.ui.rendering import Renderer
from deepscout.ui.request_guards import RateLimiter, TokenCheck
from deepscout.ui.research_jobs import ResearchJobs
from deepscout.ui.server_metrics import ServerMetrics


@dataclass
class ServerState:
    settings: Settings
    database: Database
    models: ModelService
    jobs: ResearchJobs
    tokens: TokenCheck
    limiter: RateLimiter
    renderer: Renderer
    metrics: ServerMetrics
