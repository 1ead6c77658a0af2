"""Typed options of a batch job, and of one record (its research options over the batch's).

Built by the entry point (CLI, Python API caller) and stored with the job, so ``batch resume`` runs on
exactly what ``batch run`` was given.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepscout.agent.options import ResearchOptions
from deepscout.retry_policy import RetryPolicy

Executor = Literal["local", "ray"]


class Prices(BaseModel):
    """What tokens cost, in currency units per million tokens (for the summary's cost column)."""

    model_config = ConfigDict(extra="forbid")

    computed_per_million: float = Field(default=0.0, ge=0, description="Prompt tokens run through the model.")
    reused_per_million: float = Field(default=0.0, ge=0, description="Prompt tokens taken from a cache.")
    output_per_million: float = Field(default=0.0, ge=0, description="Tokens generated.")

    def cost(self, usage: dict[str, Any]) -> float:
        return (
            usage.get("computed_tokens", 0) * self.computed_per_million
            + usage.get("reused_tokens", 0) * self.reused_per_million
            + usage.get("output_tokens", 0) * self.output_per_million
        ) / 1_000_000


class BatchOptions(BaseModel):
    """How a batch runs: its records' default research options, concurrency, executor and retries."""

    model_config = ConfigDict(extra="forbid")

    research: ResearchOptions = Field(default_factory=ResearchOptions)
    """Every record's research options (a record's ``settings`` override single fields); ``research.model``
    is the one chat model of the job (None: ``Settings.model``), loaded once and shared by its sessions."""
    concurrency: int = Field(default=4, ge=1, le=256, description="Records in flight at once.")
    executor: Executor = Field(default="local", description="local (threads) or ray (Ray tasks).")
    ray_address: str | None = Field(default=None, description="Ray cluster address (None: a local one).")
    ray_workers: int = Field(default=2, ge=1, le=1024, description="Ray worker actors, one model each.")
    attempts: int = Field(default=3, ge=1, le=20, description="Tries per record on transient errors.")
    retry_delay_s: float = Field(default=2.0, ge=0, description="First backoff delay; doubles per retry.")
    max_question_chars: int = Field(default=4000, ge=10, description="Longer questions are rejected.")
    prices: Prices = Field(default_factory=Prices)

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.attempts, first_delay_s=self.retry_delay_s, max_delay_s=120.0)


RECORD_FORBIDDEN = ("model",)
"""Research options a record may not set: the job loads one model for all its records."""


def record_options(base: ResearchOptions, overrides: dict[str, Any]) -> ResearchOptions:
    """``base`` with a record's ``settings`` applied (``budgets`` merged field by field); raises
    ValueError with a one-line reason when they do not validate."""
    forbidden = sorted(set(overrides) & set(RECORD_FORBIDDEN))
    if forbidden:
        raise ValueError(f"settings may not set {', '.join(forbidden)} (one model per batch job)")
    merged = base.model_dump(mode="json")
    for name, value in overrides.items():
        if name == "budgets" and isinstance(value, dict):
            merged["budgets"] = {**merged["budgets"], **value}
        else:
            merged[name] = value
    try:
        return ResearchOptions.model_validate(merged)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"settings.{where}: {first['msg']}") from None
